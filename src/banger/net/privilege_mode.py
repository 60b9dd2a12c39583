"""Which privilege mode the daemon is in, and the ``PrivilegedOps`` that goes with it.

Owns: the choice of SPEC §9 — a daemon run as root does the privileged steps itself
(``root``); otherwise they go to ``banger-helper`` over its socket (``helper`` when it
answers ``hello``); with neither, ``rootless`` (user-mode networking, no privileged steps
at all: ``banger.net.user_net``) — or, when ``privilege_mode = "helper"`` forbids that,
``none``, and VM creation fails with the fix named. ``privilege_mode = "rootless"`` picks
rootless whatever is available. Also the socket path (``BANGER_HELPER_SOCKET`` overrides
the default, for tests and unusual installs) and the report ``doctor`` prints.

Must not: cache the mode at start-up: a helper started after the daemon is found at the
next call, without a restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from banger.config.settings import PrivilegeModeChoice
from banger.errors import BangerError, ConfigError
from banger.host.runner import Runner
from banger.net.helper_client import HelperHello, HelperPrivilegedOps
from banger.net.privileged import InProcessPrivilegedOps, PrivilegedOps

HELPER_SOCKET_ENV = "BANGER_HELPER_SOCKET"
DEFAULT_HELPER_SOCKET = Path("/run/banger/helper.sock")
HELLO_TIMEOUT_S = 5.0


class PrivilegeMode(StrEnum):
    ROOT = "root"
    HELPER = "helper"
    ROOTLESS = "rootless"
    NONE = "none"

    @property
    def bridged(self) -> bool:
        """VMs of this mode join the bridge through a TAP (rootless ones use slirp)."""
        return self is not PrivilegeMode.ROOTLESS


@dataclass(frozen=True)
class PrivilegeReport:
    mode: PrivilegeMode
    socket_path: Path
    #: The helper's greeting (helper mode only).
    hello: HelperHello | None = None
    #: Why no helper answered (modes none and rootless when chosen automatically).
    error: BangerError | None = None
    #: The ``privilege_mode`` setting the mode was chosen under.
    setting: PrivilegeModeChoice = PrivilegeModeChoice.AUTO


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


def probe(
    socket_path: Path | None = None,
    *,
    setting: PrivilegeModeChoice = PrivilegeModeChoice.AUTO,
) -> PrivilegeReport:
    """The mode in effect now (asks the helper ``hello`` when not root). Blocks briefly."""
    path = helper_socket_path() if socket_path is None else socket_path
    if setting is PrivilegeModeChoice.ROOTLESS:
        return PrivilegeReport(PrivilegeMode.ROOTLESS, path, setting=setting)
    if os.geteuid() == 0:
        return PrivilegeReport(PrivilegeMode.ROOT, path, setting=setting)
    try:
        hello = HelperPrivilegedOps(path, timeout_s=HELLO_TIMEOUT_S).hello()
    except BangerError as exc:
        fallback = PrivilegeMode.NONE
        if setting is PrivilegeModeChoice.AUTO:
            fallback = PrivilegeMode.ROOTLESS
        return PrivilegeReport(fallback, path, error=exc, setting=setting)
    return PrivilegeReport(PrivilegeMode.HELPER, path, hello=hello, setting=setting)


class ModeProbe:
    """The mode a new VM gets, asked at each create (a helper may come or go)."""

    def __init__(self, setting: PrivilegeModeChoice, socket_path: Path | None = None) -> None:
        self.setting = setting
        self.socket_path = socket_path

    def __call__(self) -> PrivilegeMode:
        return probe(self.socket_path, setting=self.setting).mode
