"""``[[file_sync]]``: host files and directories copied into the guest's ``/root`` when a
VM starts (SPEC §7).

Owns: reading the configured host paths safely and the guest script that puts them in
place. The path the user named is followed if it is a symlink (they chose it); below it
nothing is: nested symlinks are skipped with a warning and never read (ADVERSARIAL 59),
every component is opened with ``O_NOFOLLOW`` from its parent's fd (60), FIFOs, sockets
and devices are skipped (61), a file is copied at the size ``fstat`` saw (62). The
destination is resolved by the guest's own ``tar`` inside the guest — no guest path is
ever looked at on the host (63, 64) — after the guest script removed any symlink standing
where a synced file or directory goes, so the copy lands at the named place and not
through a link the guest made.

Files get 0600 unless the entry has ``mode``; directories get 0700, or with ``mode`` that
mode plus search permission wherever it grants read. Synced directories are merged into
what the guest has (files the guest added stay).

Must not: fail the VM's start. Problems are warnings; the caller shows them.
"""

from __future__ import annotations

import asyncio
import io
import os
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from banger.config.settings import FileSyncEntry, expand_user_path
from banger.errors import BangerError
from banger.host.runner import Runner
from banger.workspace import GuestShell
from banger.workspace.archive import Item, Kind, RootDir, TarWriter, display, walk

DEFAULT_FILE_MODE = 0o600
DEFAULT_DIR_MODE = 0o700
#: file_sync is for credentials and dotfiles; a tree this big is a mistake, not a sync.
MAX_SYNC_BYTES = 256 * 1024 * 1024
#: One argument of the guest's ``sh -c`` is at most 128 KiB (MAX_ARG_STRLEN).
MAX_SCRIPT_CHARS = 100_000
GUEST_HOME = "/root"
SYNC_TIMEOUT_S = 300.0


@dataclass
class SyncArchive:
    """The tar to send, the guest paths it fills (relative to the guest home), and the
    directories in it (where a guest-made symlink must not stand)."""

    data: bytes
    dests: list[bytes] = field(default_factory=list)
    dirs: list[bytes] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SyncReport:
    copied: list[str]
    warnings: list[str]


def guest_relative(guest: str) -> bytes:
    """``~/.aws`` or ``/root/.aws`` -> ``b".aws"`` (config validation refused the rest)."""
    rest = guest[2:] if guest.startswith("~/") else guest.removeprefix(f"{GUEST_HOME}/")
    return os.fsencode("/".join(p for p in rest.split("/") if p))


def dir_mode(file_mode: int | None) -> int:
    if file_mode is None:
        return DEFAULT_DIR_MODE
    searchable = ((file_mode & 0o444) >> 2) | (file_mode & 0o111)
    return (file_mode | searchable) & 0o7777


def build_archive(
    entries: Sequence[FileSyncEntry], *, home: Path, max_bytes: int = MAX_SYNC_BYTES
) -> SyncArchive:
    """Read every entry from the host into one tar (in memory; bounded by ``max_bytes``)."""
    buffer = io.BytesIO()
    writer = TarWriter(buffer)
    result = SyncArchive(b"")
    for entry in entries:
        _add_entry(writer, result, entry, home=home, max_bytes=max_bytes)
    writer.close()
    result.warnings.extend(writer.warnings)
    result.data = buffer.getvalue() if result.dests else b""
    return result


def _add_entry(
    writer: TarWriter, out: SyncArchive, entry: FileSyncEntry, *, home: Path, max_bytes: int
) -> None:
    host = expand_user_path(entry.host, home=home)
    dest = guest_relative(entry.guest)
    try:
        st = host.stat()
    except FileNotFoundError:
        out.warnings.append(f"file_sync: {host} does not exist; skipped")
        return
    except OSError as exc:
        out.warnings.append(f"file_sync: {host}: {exc.strerror}; skipped")
        return
    file_mode = entry.mode_bits if entry.mode_bits is not None else DEFAULT_FILE_MODE
    if stat.S_ISDIR(st.st_mode):
        _add_tree(
            writer,
            out,
            host=host,
            dest=dest,
            file_mode=file_mode,
            mode_of_dirs=dir_mode(entry.mode_bits),
            max_bytes=max_bytes,
        )
    elif stat.S_ISREG(st.st_mode):
        # The named path may be a symlink (the user chose it): resolve it once, then
        # open the final component without following anything further.
        real = host.resolve()
        with RootDir(real.parent) as root:
            item = Item(os.fsencode(real.name), Kind.FILE, 0, st.st_size, st.st_mtime)
            if _fits(writer, out, item, host, max_bytes) and writer.add_file(
                root, item, dest, file_mode
            ):
                out.dests.append(dest)
    else:
        out.warnings.append(f"file_sync: {host} is not a regular file or directory; skipped")


def _add_tree(
    writer: TarWriter,
    out: SyncArchive,
    *,
    host: Path,
    dest: bytes,
    file_mode: int,
    mode_of_dirs: int,
    max_bytes: int,
) -> None:
    try:
        root = RootDir(host)
    except OSError as exc:
        out.warnings.append(f"file_sync: {host}: {exc.strerror}; skipped")
        return
    with root:
        writer.add_dir(dest, mode_of_dirs)
        out.dests.append(dest)
        out.dirs.append(dest)
        for found in walk(root):
            if isinstance(found, str):
                out.warnings.append(f"file_sync: {host}/{found}")
                continue
            name = dest + b"/" + found.rel
            if found.kind is Kind.SYMLINK:
                out.warnings.append(
                    f"file_sync: {host}/{display(found.rel)}: skipped, a symlink "
                    "(never followed: it could point outside the synced directory)"
                )
            elif found.kind is Kind.DIR:
                writer.add_dir(name, mode_of_dirs)
                out.dirs.append(name)
            elif _fits(writer, out, found, host, max_bytes):
                writer.add_file(root, found, name, file_mode)


def _fits(writer: TarWriter, out: SyncArchive, item: Item, host: Path, max_bytes: int) -> bool:
    if writer.bytes_written + item.size <= max_bytes:
        return True
    out.warnings.append(
        f"file_sync: {host}: {display(item.rel)} skipped, the sync would exceed "
        f"{max_bytes // 2**20} MiB"
    )
    return False


def sync_script(archive: SyncArchive, *, guest_home: str = GUEST_HOME) -> str:
    """The guest side: clear symlinks where synced things go, make parents, untar."""
    clear = [*archive.dests, *archive.dirs]
    quoted = " ".join(shlex.quote("./" + os.fsdecode(p)) for p in clear)
    if len(quoted) > MAX_SCRIPT_CHARS:
        quoted = " ".join(shlex.quote("./" + os.fsdecode(p)) for p in archive.dests)
    parents = " ".join(
        shlex.quote("./" + os.fsdecode(p.rpartition(b"/")[0])) for p in archive.dests if b"/" in p
    )
    return "\n".join(
        [
            "set -eu",
            "umask 077",
            f"cd -- {shlex.quote(guest_home)}",
            f'for p in {quoted}; do if [ -L "$p" ]; then rm -f -- "$p"; fi; done',
            f'for p in {parents or "."}; do mkdir -p -- "$p"; done',
            "tar -x -o -f -",
            "",
        ]
    )


def _report(archive: SyncArchive, code: int, stderr: bytes) -> SyncReport:
    copied = [f"~/{os.fsdecode(d)}" for d in archive.dests]
    warnings = list(archive.warnings)
    if code != 0:
        tail = stderr.decode(errors="replace").strip()[-500:]
        warnings.append(
            f"file_sync: copying into the guest failed (exit status {code}); "
            f"some entries may be missing or partial: {tail or 'no message'}"
        )
    return SyncReport(copied if code == 0 else [], warnings)


async def sync_files(
    entries: Sequence[FileSyncEntry],
    *,
    runner: Runner,
    ssh_prefix: Sequence[str],
    home: Path,
    guest_home: str = GUEST_HOME,
) -> SyncReport:
    """The daemon's step after the guest answers SSH: copy every entry, report warnings.

    ``ssh_prefix`` is the ssh argv up to and including the guest address.
    """
    try:
        archive = await asyncio.to_thread(build_archive, entries, home=home)
    except OSError as exc:  # a host-side surprise must not fail the VM's start
        return SyncReport([], [f"file_sync: reading the host files failed: {exc}"])
    if not archive.dests:
        return SyncReport([], archive.warnings)
    shell = GuestShell(tuple(ssh_prefix), runner=runner)
    argv = shell.argv(sync_script(archive, guest_home=guest_home))
    try:
        result = await runner.run_async(
            argv, input_bytes=archive.data, ok_codes=range(256), timeout_s=SYNC_TIMEOUT_S
        )
    except BangerError as exc:
        return SyncReport([], [*archive.warnings, f"file_sync: {exc.brief}"])
    return _report(archive, result.returncode, result.stderr)


def sync_files_blocking(
    entries: Sequence[FileSyncEntry],
    shell: GuestShell,
    *,
    home: Path,
    guest_home: str = GUEST_HOME,
) -> SyncReport:
    """``sync_files`` for a caller without an event loop (the CLI, tests)."""
    archive = build_archive(entries, home=home)
    if not archive.dests:
        return SyncReport([], archive.warnings)
    try:
        result = shell.run(
            sync_script(archive, guest_home=guest_home),
            input_bytes=archive.data,
            ok_codes=tuple(range(256)),
            timeout_s=SYNC_TIMEOUT_S,
        )
    except BangerError as exc:
        return SyncReport([], [*archive.warnings, f"file_sync: {exc.brief}"])
    return _report(archive, result.returncode, result.stderr)
