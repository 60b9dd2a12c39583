"""``banger system install|uninstall|restart``: the steps, in order, and their undoing.

Owns: resolving the owner, rendering the helper's config and both units, creating the
``banger`` group and the owner's directories, writing the files, enabling the units —
each recorded in the manifest before it is done, and nothing done twice (a second
install changes nothing and says so) — and uninstall, which removes exactly what the
manifest lists: never the owner's state (a directory install made is removed only while
still empty), never a group or file that was there before.

Must not: run anywhere but as root in the CLI process, or overwrite a file it did not
write (a hand-written ``/etc/banger/helper.toml`` is refused, not replaced).
"""

from __future__ import annotations

import os
import pwd
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from banger.errors import ConfigError, Conflict, PermissionDenied, UnsupportedHost
from banger.helper import helper_config
from banger.system import install_manifest
from banger.system import owner as owner_ops
from banger.system.hostops import (
    HostRoot,
    installed_script,
    read_if_regular,
    scripts_dir,
    write_root_file,
)
from banger.system.unit_files import (
    HELPER_UNIT,
    Owner,
    UnitInputs,
    code_in_home,
    daemon_unit_name,
    render_daemon,
    render_helper,
)

ETC_DIR = Path("/etc/banger")
HELPER_CONFIG = helper_config.DEFAULT_CONFIG
MANIFEST = ETC_DIR / "installed.json"
UNIT_DIR = Path("/etc/systemd/system")
GROUP = helper_config.DEFAULT_GROUP


@dataclass
class Outcome:
    changed: bool = False
    lines: list[str] = field(default_factory=list)


def require_root(action: str, owner_hint: str = "") -> None:
    if os.geteuid() != 0:
        raise PermissionDenied(
            f"banger system {action} must run as root (it writes /etc and runs systemctl)",
            hint=f"sudo {scripts_dir() / 'banger'} system {action}{owner_hint}",
        )


def resolve_owner(name: str | None) -> Owner:
    name = name or os.environ.get("SUDO_USER") or ""
    if not name:
        raise ConfigError(
            "whose daemon? no --owner and no SUDO_USER",
            hint="name the user who will run VMs: banger system install --owner USER",
        )
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"owner {name!r} is not a user on this host") from None
    if entry.pw_uid == 0:
        raise ConfigError(
            "root cannot be the owner: a daemon run as root needs no helper",
            hint="name the user who will run VMs: banger system install --owner USER",
        )
    daemon_unit_name(entry.pw_name)  # refuses a name that cannot be part of a unit name
    return Owner(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def no_systemd_error(owner: str, outcome: str = "nothing was installed") -> UnsupportedHost:
    helper = scripts_dir() / "banger-helper"
    return UnsupportedHost(
        f"this host does not run systemd (no /run/systemd/system): {outcome}",
        hint=f"run the helper in the foreground instead: sudo {helper} --owner {owner} "
        f"(the CLI then starts {owner}'s daemon as {owner}); or --root DIR writes the "
        "files under DIR for a package",
    )


class SystemInstaller:
    def __init__(self, host: HostRoot) -> None:
        self._host = host

    # -- install ------------------------------------------------------------------------

    def install(self, owner_name: str | None) -> Outcome:
        require_root("install")
        host = self._host
        owner = resolve_owner(owner_name)
        if host.is_host and not host.systemd_running():
            raise no_systemd_error(owner.name)
        manifest = install_manifest.load(host.at(MANIFEST))
        if manifest is not None and manifest.owner != owner.name:
            raise Conflict(
                f"banger system is installed for {manifest.owner}; one owner per host "
                "(both daemons would share one bridge and address range)",
                hint=f"sudo {scripts_dir() / 'banger'} system uninstall first",
            )
        manifest = manifest or install_manifest.Manifest(owner=owner.name, group=GROUP)
        out = Outcome()
        files = self._render(owner)
        for path, content in files.items():  # refused before anything is changed
            self._check_ours(path, content, manifest)
        self._make_root_dirs(ETC_DIR, manifest, out)  # the manifest's home comes first
        self._group(owner, manifest, out)
        for path in files:
            self._make_root_dirs(path.parent, manifest, out)
        for path, content in files.items():
            self._write(path, content, manifest, out)
        self._owner_dirs(owner, manifest, out)
        changed_files = out.changed
        if host.is_host:
            self._enable(owner, manifest, out, restart=changed_files)
        else:
            out.lines.append(
                f"under {host.root}: systemctl skipped; on the installed system run "
                f"systemctl daemon-reload && systemctl enable --now {HELPER_UNIT} "
                f"{daemon_unit_name(owner.name)}"
            )
        self._warn_if_code_is_not_roots(out)
        if not out.changed:
            out.lines.insert(0, f"nothing to change: banger system is installed for {owner.name}")
        return out

    def _render(self, owner: Owner) -> dict[Path, str]:
        host = self._host
        network = owner_ops.read_network(owner, host.at(owner.home))
        try:  # the helper's own checks: what it will load is what we write
            helper_config.build([owner.uid], group=GROUP, **network)
        except ConfigError as exc:
            exc.hint = f"fix {owner.name}'s config.toml (bridge_name, bridge_ip, cidr)"
            raise
        toml = (
            "# Written by `banger system install`; `banger system uninstall` removes it.\n"
            "# The daemon's config.toml must name the same bridge and network.\n"
            f'owners = ["{owner.name}"]\n'
            f'bridge_name = "{network["bridge_name"]}"\n'
            f'bridge_ip = "{network["bridge_ip"]}"\n'
            f'cidr = "{network["cidr"]}"\n'
            f'group = "{GROUP}"\n'
        )
        helper_bin = installed_script("banger-helper")
        inputs = UnitInputs(
            owner=owner,
            helper_bin=helper_bin,
            daemon_bin=installed_script("bangerd"),
            helper_config=HELPER_CONFIG,
            group=GROUP,
            kvm_group=host.groups_available() and host.group_members("kvm") is not None,
            code_in_home=code_in_home(
                helper_bin, Path(sys.prefix).resolve(), Path(sys.executable).resolve()
            ),
        )
        return {
            HELPER_CONFIG: toml,
            UNIT_DIR / HELPER_UNIT: render_helper(inputs),
            UNIT_DIR / daemon_unit_name(owner.name): render_daemon(inputs),
        }

    def _save(self, manifest: install_manifest.Manifest) -> None:
        install_manifest.save(self._host.at(MANIFEST), manifest)

    def _group(self, owner: Owner, manifest: install_manifest.Manifest, out: Outcome) -> None:
        host = self._host
        if not host.groups_available():
            out.lines.append(
                f"no {host.at(Path('/etc/group'))}: group {GROUP} not created (create it and "
                f"add {owner.name} when the package is installed)"
            )
            return
        members = host.group_members(GROUP)
        if members is None:
            manifest.group_created = True
            self._save(manifest)
            host.add_group(GROUP)
            out.changed = True
            out.lines.append(f"created group {GROUP}")
            members = []
        if owner.name not in members:
            if not manifest.group_created:
                manifest.note("members_added", owner.name)
                self._save(manifest)
            host.add_member(GROUP, owner.name)
            out.changed = True
            out.lines.append(f"added {owner.name} to group {GROUP} (takes effect at next login)")

    def _make_root_dirs(
        self, target: Path, manifest: install_manifest.Manifest, out: Outcome
    ) -> None:
        host = self._host
        missing = [p for p in (target, *target.parents) if not host.at(p).exists()]
        for path in reversed(missing):
            manifest.note("dirs", str(path))
            # Recorded before it is made, once the manifest has a directory to live in
            # (install makes /etc/banger first; its parents under --root go unrecorded
            # only if a crash falls between the two).
            if host.at(ETC_DIR).is_dir():
                self._save(manifest)
            host.at(path).mkdir(mode=0o755)
            os.chown(host.at(path), 0, 0)
            if path == ETC_DIR:
                self._save(manifest)
            out.changed = True
            out.lines.append(f"created {host.at(path)}")

    def _check_ours(self, path: Path, content: str, manifest: install_manifest.Manifest) -> None:
        target = self._host.at(path)
        current = read_if_regular(target)
        if current is not None and str(path) not in manifest.files and current != content:
            raise Conflict(
                f"{target} exists and was not written by banger system install",
                hint="move it away (or merge it by hand), then run install again",
            )

    def _write(
        self, path: Path, content: str, manifest: install_manifest.Manifest, out: Outcome
    ) -> None:
        target = self._host.at(path)
        current = read_if_regular(target)
        if current == content and _root_owned(target):
            return
        if manifest.note("files", str(path)):
            self._save(manifest)
        write_root_file(target, content)
        out.changed = True
        out.lines.append(f"{'updated' if current is not None else 'wrote'} {target}")

    def _owner_dirs(self, owner: Owner, manifest: install_manifest.Manifest, out: Outcome) -> None:
        host = self._host
        home = host.at(owner.home)
        if not home.is_dir():
            out.lines.append(
                f"{home} does not exist: {owner.name}'s state and cache directories are "
                "made when the daemon first needs them (its unit needs them to exist)"
            )
            return
        wanted = [host.at(owner.state_dir), host.at(owner.cache_dir)]
        created = owner_ops.make_dirs(owner, wanted)
        for path in created:
            manifest.note("owner_dirs", "/" + str(Path(path).relative_to(host.root)))
        if created:
            self._save(manifest)
            out.changed = True
            out.lines.append(f"created (as {owner.name}) {', '.join(created)}")

    def _enable(
        self, owner: Owner, manifest: install_manifest.Manifest, out: Outcome, *, restart: bool
    ) -> None:
        host = self._host
        units = [HELPER_UNIT, daemon_unit_name(owner.name)]
        if restart:
            host.systemctl("daemon-reload")
        for unit in units:
            state = host.unit_state(unit)
            if state["enabled"] == "enabled" and state["active"] == "active":
                if restart:
                    host.systemctl("try-restart", unit)
                    out.lines.append(f"restarted {unit} (its files changed)")
                continue
            if manifest.note("units", unit):
                self._save(manifest)
            host.systemctl("enable", "--now", unit)
            out.changed = True
            out.lines.append(f"enabled and started {unit}")

    def _warn_if_code_is_not_roots(self, out: Outcome) -> None:
        for path in (scripts_dir(), Path(sys.prefix).resolve()):
            st = path.stat()
            if st.st_uid != 0 or st.st_mode & 0o022:
                out.lines.append(
                    f"warning: {path} can be written by uid {st.st_uid} (or others): whoever "
                    "can write it can run code as root through banger-helper; install banger "
                    "root-owned for a lasting setup"
                )
                return

    # -- uninstall ----------------------------------------------------------------------

    def uninstall(self) -> Outcome:
        require_root("uninstall")
        host = self._host
        out = Outcome()
        manifest = install_manifest.load(host.at(MANIFEST))
        if manifest is None:
            out.lines.append(f"nothing to uninstall: no {host.at(MANIFEST)}")
            return out
        out.changed = True
        if manifest.units:
            if host.systemd_running():
                for unit in reversed(manifest.units):
                    host.systemctl("disable", "--now", unit, ok_codes=(0, 1, 5))
                    out.lines.append(f"stopped and disabled {unit}")
            else:
                out.lines.append("no systemd running: units not stopped")
        for name in list(reversed(manifest.files)):
            target = host.at(Path(name))
            if target.is_file() and not target.is_symlink():
                target.unlink()
                out.lines.append(f"removed {target}")
            # A write cut short by a crash leaves its temporary file (write_root_file).
            target.with_name(f".{target.name}.tmp").unlink(missing_ok=True)
            manifest.files.remove(name)
            self._save(manifest)
        if manifest.units and host.systemd_running():
            host.systemctl("daemon-reload")
        self._remove_owner_dirs(manifest, out)
        self._undo_group(manifest, out)
        install_manifest.remove(host.at(MANIFEST))
        for name in reversed(manifest.dirs):
            try:
                host.at(Path(name)).rmdir()
                out.lines.append(f"removed {host.at(Path(name))}")
            except FileNotFoundError:
                pass
            except OSError:
                out.lines.append(f"kept {host.at(Path(name))} (not empty)")
        return out

    def _remove_owner_dirs(self, manifest: install_manifest.Manifest, out: Outcome) -> None:
        if not manifest.owner_dirs:
            return
        try:
            owner = resolve_owner(manifest.owner)
        except ConfigError:
            out.lines.append(f"user {manifest.owner} is gone: left {manifest.owner_dirs}")
            return
        host = self._host
        removed, kept = owner_ops.remove_empty_dirs(
            owner, [host.at(Path(p)) for p in manifest.owner_dirs]
        )
        out.lines += [f"removed (as {owner.name}) {p}" for p in removed]
        out.lines += [f"kept {p}: {owner.name}'s state" for p in kept]
        manifest.owner_dirs = []
        self._save(manifest)

    def _undo_group(self, manifest: install_manifest.Manifest, out: Outcome) -> None:
        host = self._host
        members = host.group_members(manifest.group) if host.groups_available() else None
        if members is None:
            return
        if manifest.group_created:
            host.delete_group(manifest.group)
            out.lines.append(f"deleted group {manifest.group}")
        else:
            for user in manifest.members_added:
                if user in members:
                    host.remove_member(manifest.group, user)
                    out.lines.append(f"removed {user} from group {manifest.group}")
        manifest.group_created, manifest.members_added = False, []
        self._save(manifest)

    # -- restart ------------------------------------------------------------------------

    def restart(self) -> Outcome:
        require_root("restart")
        host = self._host
        manifest = install_manifest.load(host.at(MANIFEST))
        if manifest is None:
            raise UnsupportedHost(
                "banger system is not installed: nothing to restart",
                hint=f"sudo {scripts_dir() / 'banger'} system install",
            )
        if not host.systemd_running():
            raise no_systemd_error(manifest.owner, "no services to restart")
        units = [HELPER_UNIT, daemon_unit_name(manifest.owner)]
        host.systemctl("restart", *units)
        return Outcome(changed=True, lines=[f"restarted {' and '.join(units)}"])


def _root_owned(path: Path) -> bool:
    st = path.stat()
    return st.st_uid == 0 and st.st_gid == 0 and stat.S_IMODE(st.st_mode) == 0o644
