"""``banger vm cp``: copy files and directories between the host and a guest, like
``docker cp`` (docs/explanation/guest-files.md).

Owns: reading ``NAME:/path`` specs, resolving where a copy lands (``docker cp``'s rules:
into an existing directory under the source's name, else at the destination itself),
writing what comes from a guest on the host — a file through a temporary file renamed
into place, a directory through ``banger.guest.file_archive``, which never follows a link
and refuses hostile names — progress on stderr when it is a terminal, and the summary.
Must not: decide anything about the guest side (the daemon and the agent do), or use a
name the guest sent as anything but a member under the destination the user chose.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from banger.cli.output import emit_json
from banger.cli.session import Session
from banger.cli.vm_options import ANY_SIZE
from banger.errors import GuestPathNotFound, InvalidArgument, IsADirectory
from banger.model.guest_paths import READ_MAX_BYTES_DEFAULT, check_guest_path
from banger.model.units import format_size

if TYPE_CHECKING:
    from banger.client.facade import Vms
    from banger.model.api_types import GuestFile


@dataclass(frozen=True)
class Spec:
    """One side of a copy: a host path (``vm`` None) or ``vm:path`` in a guest."""

    vm: str | None
    path: str
    #: The user wrote a trailing '/': the path must be (or become) a directory.
    as_dir: bool = False


def parse_spec(text: str) -> Spec:
    """``NAME:/abs/path`` is a guest path; anything else (``./a:b`` too) is a host path."""
    head, colon, rest = text.partition(":")
    if not colon or not head or "/" in head or head.startswith("."):
        return Spec(None, text, as_dir=text.endswith("/"))
    if not rest:
        raise click.UsageError(f"{text!r}: give a path after '{head}:', e.g. {head}:/root/")
    as_dir = rest.endswith("/") and rest != "/"
    path = rest.rstrip("/") or "/"
    check_guest_path(path)
    return Spec(head, path, as_dir=as_dir)


def parse_pair(source: str, dest: str) -> tuple[Spec, Spec]:
    src, dst = parse_spec(source), parse_spec(dest)
    if src.vm is None and dst.vm is None:
        raise click.UsageError("one side must be in a VM: NAME:/path (use ./a:b for a host path)")
    if src.vm is not None and dst.vm is not None:
        raise click.UsageError("copying between two guests is not supported; go through the host")
    return src, dst


class Meter:
    """Bytes so far, shown on stderr at most 5 times a second when it is a terminal."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.total = 0
        self._shown = 0.0

    def __call__(self, size: int) -> None:
        self.total += size
        now = time.monotonic()
        if self.enabled and now - self._shown >= 0.2:
            self._shown = now
            sys.stderr.write(f"\r{format_size(self.total)} bytes copied ")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


class _Counting:
    """A file object that reports what is read from it."""

    def __init__(self, inner: BinaryIO, meter: Meter) -> None:
        self._inner = inner
        self._meter = meter

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._meter(len(data))
        return data

    def tell(self) -> int:
        return self._inner.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._inner.seek(offset, whence)


@click.command()
@click.argument("source")
@click.argument("destination")
@click.option(
    "--max-size",
    "max_size",
    default=None,
    type=ANY_SIZE,
    metavar="SIZE",
    help="Largest copy taken from a guest (default 1G).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.pass_obj
def cp(
    session: Session, source: str, destination: str, max_size: int | None, as_json: bool
) -> None:
    """Copy between the host and a VM: `vm cp ./file NAME:/root/`, `vm cp NAME:/etc ./etc`.

    Directories are copied whole; links inside them are copied as links, never followed.
    A destination that is an existing directory receives the source under its own name.
    """
    src, dst = parse_pair(source, destination)
    limit = READ_MAX_BYTES_DEFAULT if max_size is None else max_size
    vms = session.client().vms
    meter = Meter(enabled=sys.stderr.isatty() and not as_json)
    try:
        if dst.vm is not None:
            summary = _to_guest(vms, Path(src.path), dst, meter)
        else:
            assert src.vm is not None
            summary = _from_guest(vms, src, Path(dst.path), meter, limit)
    finally:
        meter.done()
    summary = {"source": source, "destination": destination, **summary}
    if as_json:
        emit_json(summary)
    elif sys.stderr.isatty():
        what = f"{summary['files']} files" if summary["kind"] == "dir" else "1 file"
        size = format_size(summary["bytes"])
        click.echo(f"copied {what} ({size} bytes) to {summary['target']}", err=True)


# -- host -> guest ---------------------------------------------------------------------


def _guest_stat(vms: Vms, vm: str, path: str) -> GuestFile | None:
    try:
        return vms.stat_file(vm, path)
    except GuestPathNotFound:
        return None


def _guest_target(vms: Vms, dst: Spec, name: str, *, is_dir: bool) -> str:
    assert dst.vm is not None
    existing = _guest_stat(vms, dst.vm, dst.path)
    if existing is not None and existing.kind == "dir":
        return dst.path.rstrip("/") + "/" + name
    if dst.as_dir:
        raise GuestPathNotFound(f"{dst.vm}:{dst.path}/ is not a directory in the guest")
    if existing is not None and is_dir:
        raise InvalidArgument(f"cannot copy a directory onto the file {dst.vm}:{dst.path}")
    return dst.path


def _to_guest(vms: Vms, src: Path, dst: Spec, meter: Meter) -> dict[str, Any]:
    assert dst.vm is not None
    from banger.guest.file_archive import pack_directory

    try:
        st = src.stat()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {src}: {exc.strerror}") from exc
    name = src.resolve().name or "root"
    if stat.S_ISDIR(st.st_mode):
        target = _guest_target(vms, dst, name, is_dir=True)
        with tempfile.TemporaryFile(prefix="banger-cp-") as spool:
            summary = pack_directory(src, spool)
            spool.seek(0)
            vms.write_archive(dst.vm, target, _Counting(spool, meter))  # type: ignore[arg-type]
        return _summary("to-guest", "dir", f"{dst.vm}:{target}", summary.files, meter.total)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{src} is not a regular file or a directory")
    target = _guest_target(vms, dst, name, is_dir=False)
    with src.open("rb") as data:
        counted = _Counting(data, meter)
        vms.write_file(dst.vm, target, counted, mode=stat.S_IMODE(st.st_mode))  # type: ignore[arg-type]
    return _summary("to-guest", "file", f"{dst.vm}:{target}", 1, st.st_size)


# -- guest -> host ---------------------------------------------------------------------


def _host_target(dest: Path, name: str, *, is_dir: bool, as_dir: bool) -> Path:
    if dest.is_dir():
        return dest / name
    if as_dir:
        raise InvalidArgument(f"{dest}/ is not a directory on the host")
    if is_dir and dest.exists():
        raise InvalidArgument(f"cannot copy a directory onto the file {dest}")
    if not dest.parent.is_dir():
        raise InvalidArgument(f"{dest.parent} is not a directory on the host")
    return dest


def _from_guest(vms: Vms, src: Spec, dest: Path, meter: Meter, limit: int) -> dict[str, Any]:
    assert src.vm is not None
    info = vms.stat_file(src.vm, src.path)
    name = info.name if info.name not in ("", "/") else "root"
    if info.kind != "dir":
        target = _host_target(dest, name, is_dir=False, as_dir=_as_dir(dest))
        try:
            size = _receive_file(vms, src, (target, info.mode), meter, limit)
            return _summary("from-guest", "file", str(target), 1, size)
        except IsADirectory:  # a symlink to a directory: copied as the directory
            pass
    target = _host_target(dest, name, is_dir=True, as_dir=_as_dir(dest))
    target.mkdir(exist_ok=True)
    from banger.guest.file_archive import extract_archive

    with vms.read_archive(src.vm, src.path, max_bytes=limit) as archive:
        summary = extract_archive(archive, target, max_bytes=limit, progress=meter)
    return _summary("from-guest", "dir", str(target), summary.files, summary.data_bytes)


def _as_dir(dest: Path) -> bool:
    return str(dest).endswith("/")


def _receive_file(vms: Vms, src: Spec, where: tuple[Path, int], meter: Meter, limit: int) -> int:
    """Into a temporary file beside the target, renamed over it when complete (a link
    there is replaced, never written through); the guest's mode without setuid bits."""
    assert src.vm is not None
    target, mode = where
    fd, temp = tempfile.mkstemp(prefix=f".{target.name[:100]}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            sink = _Metered(out, meter)
            size = vms.read_file_to(src.vm, src.path, sink, max_bytes=limit)  # type: ignore[arg-type]
            os.fchmod(out.fileno(), mode & 0o777)
        Path(temp).replace(target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return size


class _Metered:
    def __init__(self, inner: BinaryIO, meter: Meter) -> None:
        self._inner = inner
        self._meter = meter

    def write(self, data: bytes) -> int:
        self._meter(len(data))
        return self._inner.write(data)


def _summary(direction: str, kind: str, target: str, files: int, size: int) -> dict[str, Any]:
    return {"direction": direction, "kind": kind, "target": target, "files": files, "bytes": size}
