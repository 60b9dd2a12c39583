"""Unpacking a catalog tarball (zstd tar: a kernel, or an image bundle) into a fresh
directory (SPEC §5, §6).

Owns: decompression under caps (ADVERSARIAL 40: a frame that asks for a window over
128 MiB is refused by ``zstd --memory``; the output is capped by ``RLIMIT_FSIZE``, so a
bomb costs at most the cap in disk) and a strict member filter (41, with the containment
rules of items 1-12 made simpler by what a kernel needs): only regular files and
directories are ever created, each one below the destination through directory fds
opened with ``O_NOFOLLOW``; absolute names, ``..`` components, links, devices, FIFOs and
duplicate members reject the whole archive; of the rest only the expected members are
taken (``vmlinux``, ``vmlinuz``, ``config``, ``initrd.img``, ``banger-kernel.json`` at the
top, anything under ``modules/``; for an image bundle ``rootfs.ext4`` and
``work-seed.ext4``), others are counted and skipped. Member count and extracted bytes
are capped too; runs of zero bytes are not written (a disk image stays sparse).
Must not: use ``tarfile.extract*`` (DESIGN.md: its filters have been bypassed), follow
a symlink, or write outside the destination. Blocking: call from a worker thread.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from banger.errors import CommandFailed, InvalidArgument
from banger.host.runner import Runner

MIB = 1 << 20
#: zstd's own default decoder limit; frames needing more are refused (ADVERSARIAL 40).
MAX_WINDOW_BYTES = 128 * MIB


@dataclass(frozen=True)
class Members:
    """What an archive may hold: files at its top, whole trees, and what it must hold
    (one of ``required`` at least)."""

    top_files: frozenset[str]
    trees: frozenset[str]
    required: tuple[str, ...]
    what: str


KERNEL_MEMBERS = Members(
    frozenset({"vmlinux", "vmlinuz", "config", "initrd.img", "banger-kernel.json"}),
    frozenset({"modules"}),
    ("vmlinux", "vmlinuz"),
    "kernel tarball",
)
#: A prebuilt image bundle of the image catalog.
IMAGE_MEMBERS = Members(
    frozenset({"rootfs.ext4", "work-seed.ext4"}), frozenset(), ("rootfs.ext4",), "image bundle"
)
_DECOMPRESS_TIMEOUT_S = 600.0
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Limits:
    """Caps of one unpacking: decompressed tar size, files and bytes taken, members read."""

    max_output_bytes: int = 1 << 30
    max_window_bytes: int = MAX_WINDOW_BYTES
    max_members: int = 50_000


@dataclass
class Extracted:
    files: int = 0
    size_bytes: int = 0
    ignored: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{self.files} files, {self.size_bytes >> 20} MiB"
        if self.ignored:
            shown = ", ".join(self.ignored[:5]) + (" …" if len(self.ignored) > 5 else "")
            text += f"; skipped {len(self.ignored)} unexpected member(s): {shown}"
        return text


def unpack(
    archive: Path,
    dest: Path,
    runner: Runner,
    limits: Limits | None = None,
    members: Members = KERNEL_MEMBERS,
) -> Extracted:
    """Decompress ``archive`` (zstd tar) next to itself, then extract it into new ``dest``."""
    limits = limits or Limits()
    tar = archive.with_name(archive.name + ".tar")
    try:
        decompress_zstd(archive, tar, runner, limits)
        return extract_tar(tar, dest, limits, members)
    finally:
        tar.unlink(missing_ok=True)


def decompress_zstd(src: Path, dst: Path, runner: Runner, limits: Limits) -> None:
    """``zstd -d`` under a window limit and an output cap; ``InvalidArgument`` if refused."""
    cap = limits.max_output_bytes
    argv: list[str | Path] = [
        "prlimit", f"--fsize={cap}", "--",
        "zstd", "-d", "-q", "-f", f"--memory={limits.max_window_bytes}", "-o", dst, src,
    ]  # fmt: skip
    try:
        runner.run(argv, timeout_s=_DECOMPRESS_TIMEOUT_S)
    except CommandFailed as exc:
        dst.unlink(missing_ok=True)
        raise InvalidArgument(
            f"{src.name} does not decompress within the limits (zstd window at most "
            f"{limits.max_window_bytes >> 20} MiB, output at most {cap >> 20} MiB), "
            "or it is not zstd, or it is damaged",
            details=exc.details or exc.brief,
        ) from exc


def extract_tar(
    tar: Path, dest: Path, limits: Limits | None = None, members: Members = KERNEL_MEMBERS
) -> Extracted:
    """Extract the expected members of ``tar`` into ``dest`` (created, must not exist)."""
    limits = limits or Limits()
    dest.mkdir(mode=0o755)
    root_fd = os.open(dest, _DIR_FLAGS)
    try:
        with tar.open("rb") as raw, _open_stream(raw, tar) as archive:
            return _Extractor(root_fd, limits, members, tar.name).run(archive)
    finally:
        os.close(root_fd)


def _open_stream(raw: IO[bytes], tar: Path) -> tarfile.TarFile:
    # Stream mode ("r|") never seeks backwards, so a negative-offset header cannot
    # make it loop (CVE-2025-8194); it also reads each member once, in order.
    try:
        return tarfile.open(fileobj=raw, mode="r|")
    except tarfile.TarError as exc:
        raise InvalidArgument(f"{tar.name} is not a tar archive: {exc}") from exc


@dataclass
class _Extractor:
    root_fd: int
    limits: Limits
    members: Members
    label: str
    done: Extracted = field(default_factory=Extracted)
    seen: set[str] = field(default_factory=set)

    def run(self, archive: tarfile.TarFile) -> Extracted:
        members = 0
        try:
            for member in archive:
                members += 1
                if members > self.limits.max_members:
                    raise self._bad(f"more than {self.limits.max_members} members")
                self._member(archive, member)
        except tarfile.TarError as exc:
            raise self._bad(f"damaged or truncated: {exc}") from exc
        if not self.seen.intersection(self.members.required):
            raise self._bad(f"no {' or '.join(self.members.required)} at its top")
        return self.done

    def _bad(self, why: str) -> InvalidArgument:
        return InvalidArgument(f"{self.members.what} {self.label} refused: {why}")

    def _member(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = member_parts(member.name, self.members.what)
        if not parts:
            return  # "." or "./": the root itself
        _check_type(member, self.members.what)
        name = "/".join(parts)
        if name in self.seen:
            raise self._bad(f"member {member.name!r} appears twice")
        if not expected(parts, self.members, is_dir=member.isdir()):
            self.done.ignored.append(name)
            return
        self.seen.add(name)
        parent_fd = self._parent(parts[:-1])
        try:
            if member.isdir():
                _mkdir(parts[-1], parent_fd)
            else:
                self._file(archive, member, parts[-1], parent_fd)
        finally:
            if parent_fd != self.root_fd:
                os.close(parent_fd)

    def _parent(self, dirs: list[str]) -> int:
        """An fd of the directory ``dirs`` below the root, made as needed, never via a link."""
        fd = self.root_fd
        for part in dirs:
            _mkdir(part, fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise self._bad(f"{'/'.join(dirs)} is not a directory") from exc
            finally:
                if fd != self.root_fd:
                    os.close(fd)
            fd = child
        return fd

    def _file(
        self, archive: tarfile.TarFile, member: tarfile.TarInfo, leaf: str, parent_fd: int
    ) -> None:
        if self.done.size_bytes + member.size > self.limits.max_output_bytes:
            raise self._bad(f"more than {self.limits.max_output_bytes} bytes of files")
        source = archive.extractfile(member)
        if source is None:
            raise self._bad(f"member {member.name!r} has no data")
        try:
            fd = os.open(leaf, _FILE_FLAGS, 0o644, dir_fd=parent_fd)
        except FileExistsError as exc:
            raise self._bad(f"member {member.name!r} clashes with a directory") from exc
        with os.fdopen(fd, "wb") as out:
            written = _copy_sparse(source, out)
            os.fchmod(fd, 0o644)
        if written != member.size:
            raise self._bad(f"member {member.name!r} is truncated")
        self.done.files += 1
        self.done.size_bytes += written


def member_parts(name: str, what: str = "kernel tarball") -> list[str]:
    """The components of a member name; ``InvalidArgument`` for absolute names and ``..``.

    Leading ``./`` and empty components (``a//b``) are dropped: tar writes them and they
    name the same place. Anything that could reach above the root is refused outright.
    """
    if "\0" in name or len(name) > 4096:
        raise InvalidArgument(f"{what} member {name[:80]!r} has an invalid name")
    if name.startswith("/"):
        raise InvalidArgument(f"{what} member {name!r} is absolute; refused")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"{what} member {name!r} leads out of the archive; refused")
    return parts


def expected(parts: list[str], members: Members = KERNEL_MEMBERS, *, is_dir: bool) -> bool:
    """Whether a member is one the archive may hold (and banger takes)."""
    if parts[0] in members.trees:
        return True
    return len(parts) == 1 and not is_dir and parts[0] in members.top_files


def _check_type(member: tarfile.TarInfo, what: str) -> None:
    if member.isreg() or member.isdir():
        return
    kind = "a link" if member.issym() or member.islnk() else "a device, FIFO or other special file"
    raise InvalidArgument(
        f"{what} member {member.name!r} is {kind}; only files and directories are taken"
    )


def _mkdir(name: str, parent_fd: int) -> None:
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(
                f"kernel tarball: {name!r} is both a file and a directory"
            ) from None


def _copy_sparse(source: IO[bytes], out: IO[bytes]) -> int:
    """Copy, seeking over all-zero blocks: a disk image stays sparse on disk."""
    written = 0
    while chunk := source.read(_CHUNK):
        if chunk.count(0) == len(chunk):
            out.seek(len(chunk), os.SEEK_CUR)
        else:
            out.write(chunk)
        written += len(chunk)
    out.truncate(written)
    return written
