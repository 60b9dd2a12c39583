"""Which privilege mode the daemon is in, and the ``PrivilegedOps`` that goes with it.

Owns: the choice of SPEC §9 — a daemon run as root does the privileged steps itself
(``root``); otherwise they go to ``banger-helper`` over its socket (``helper`` when it
answers ``hello``, ``none`` when it does not, and then VM creation fails with the fix
named). Also the socket path (``BANGER_HELPER_SOCKET`` overrides the default, for tests and
unusual installs) and the report ``doctor`` prints. Rootless mode (user-mode networking)
is a later step and not chosen here.

Must not: cache the mode at start-up: a helper started after the daemon is found at the
next call, without a restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from banger.errors import BangerError, ConfigError
from banger.host.runner import Runner
from banger.net.helper_client import HelperHello, HelperPrivilegedOps
from banger.net.privileged import InProcessPrivilegedOps, PrivilegedOps

HELPER_SOCKET_ENV = "BANGER_HELPER_SOCKET"
DEFAULT_HELPER_SOCKET = Path("/run/banger/helper.sock")


class PrivilegeMode(StrEnum):
    ROOT = "root"
    HELPER = "helper"
    NONE = "none"


@dataclass(frozen=True)
class PrivilegeReport:
    mode: PrivilegeMode
    socket_path: Path
    #: The helper's greeting (helper mode only).
    hello: HelperHello | None = None
    #: Why no helper answered (mode none).
    error: BangerError | None = None


def helper_socket_path(env: dict[str, str] | None = None) -> Path:
    value = (os.environ if env is None else env).get(HELPER_SOCKET_ENV) or ""
    if not value:
        return DEFAULT_HELPER_SOCKET
    path = Path(value)
    if not path.is_absolute():
        raise ConfigError(
            f"{HELPER_SOCKET_ENV}={value!r} is not an absolute path",
            hint=f"unset it to use {DEFAULT_HELPER_SOCKET}",
        )
    return path


def privileged_ops(runner: Runner, *, bridge_name: str) -> PrivilegedOps:
    """In-process when root (today's behaviour), else the helper's client."""
    if os.geteuid() == 0:
        return InProcessPrivilegedOps(runner, bridge_name=bridge_name)
    return HelperPrivilegedOps(helper_socket_path())


def probe(socket_path: Path | None = None) -> PrivilegeReport:
    """The mode in effect now (asks the helper ``hello`` when not root). Blocks briefly."""
    path = helper_socket_path() if socket_path is None else socket_path
    if os.geteuid() == 0:
        return PrivilegeReport(PrivilegeMode.ROOT, path)
    try:
        hello = HelperPrivilegedOps(path, timeout_s=5.0).hello()
    except BangerError as exc:
        return PrivilegeReport(PrivilegeMode.NONE, path, error=exc)
    return PrivilegeReport(PrivilegeMode.HELPER, path, hello=hello)
