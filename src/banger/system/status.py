"""``banger system status``: both units, the mode the owner's daemon gets, the helper's build.

Owns: gathering the report — each unit's ``is-active``/``is-enabled``, whether the helper
answers ``hello`` *as the owner* (root is never one of its owners, so as root the hello
is asked from a child that dropped to the owner) and whether it is this build.

Must not: change anything; it runs for any user (what it cannot see it reports as such).
"""

from __future__ import annotations

import contextlib
import grp
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from banger.config.settings import PrivilegeModeChoice, load_config
from banger.errors import BangerError
from banger.host import buildinfo
from banger.host.paths import Layout
from banger.net import privilege_mode
from banger.net.helper_client import HelperPrivilegedOps
from banger.system import install_manifest
from banger.system.hostops import HostRoot
from banger.system.install import MANIFEST, resolve_owner
from banger.system.owner import as_owner
from banger.system.unit_files import HELPER_UNIT, daemon_unit_name

HELLO_TIMEOUT_S = 5.0


def gather(host: HostRoot) -> dict[str, Any]:
    manifest = install_manifest.load(host.at(MANIFEST))
    socket = privilege_mode.helper_socket_path()
    report: dict[str, Any] = {
        "installed": manifest is not None,
        "owner": manifest.owner if manifest else None,
        "root": str(host.root),
        "systemd": host.systemd_running(),
        "units": {},
        "helper_socket": str(socket),
    }
    if manifest is not None:
        for unit in (HELPER_UNIT, daemon_unit_name(manifest.owner)):
            report["units"][unit] = host.unit_state(unit)
    hello, error = _hello(socket, manifest)
    ours = buildinfo.current().as_dict()
    if hello is not None:
        report["mode"] = privilege_mode.PrivilegeMode.HELPER.value
        report["helper"] = {
            "answers": True,
            "build": hello["build"],
            "same_build": hello["build"] == ours,
            "bridge": f"{hello['bridge_name']} {hello['bridge_address']}",
            "error": None,
        }
    else:
        as_root = os.geteuid() == 0 and manifest is None
        mode = privilege_mode.PrivilegeMode.ROOT if as_root else _without_helper(host, manifest)
        report["mode"] = mode.value
        report["helper"] = {"answers": False, "build": None, "same_build": None, "error": error}
    report["build"] = ours
    return report


def _without_helper(
    host: HostRoot, manifest: install_manifest.Manifest | None
) -> privilege_mode.PrivilegeMode:
    """What a daemon that is not root uses when no helper answers: rootless, unless its
    config says ``privilege_mode = "helper"`` (then none: VM creation fails)."""
    setting = _daemon_setting(host, manifest)
    if setting is PrivilegeModeChoice.HELPER:
        return privilege_mode.PrivilegeMode.NONE
    return privilege_mode.PrivilegeMode.ROOTLESS


def _daemon_setting(
    host: HostRoot, manifest: install_manifest.Manifest | None
) -> PrivilegeModeChoice:
    """``privilege_mode`` from the config of whoever runs the daemon (the owner when
    installed, else this user); ``auto`` when it cannot be read."""

    def read(env: dict[str, str] | None = None, uid: int | None = None) -> str:
        layout = None if env is None else Layout.from_env(env, uid=uid)
        return load_config(env=env, layout=layout).privilege_mode.value

    try:
        if os.geteuid() != 0 or manifest is None:
            return PrivilegeModeChoice(read())
        owner = resolve_owner(manifest.owner)
        env = {"HOME": str(host.at(owner.home))}
        return PrivilegeModeChoice(as_owner(owner, lambda: read(env, owner.uid)))
    except BangerError:
        return PrivilegeModeChoice.AUTO


def _hello(
    socket: Path, manifest: install_manifest.Manifest | None
) -> tuple[dict[str, Any] | None, str | None]:
    def ask() -> dict[str, Any]:
        return asdict(HelperPrivilegedOps(socket, timeout_s=HELLO_TIMEOUT_S).hello())

    try:
        if os.geteuid() != 0:
            return ask(), None
        if manifest is None:
            return None, "not installed: a daemon run as root needs no helper"
        owner = resolve_owner(manifest.owner)
        extra: tuple[int, ...] = ()
        with contextlib.suppress(KeyError):  # the daemon's unit gives it the group
            extra = (grp.getgrnam(manifest.group).gr_gid,)
        result: dict[str, Any] = as_owner(owner, ask, extra_gids=extra)
        return result, None
    except BangerError as exc:
        return None, exc.brief + (f" (hint: {exc.hint})" if exc.hint else "")
