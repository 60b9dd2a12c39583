"""Edit an ext4 image file without mounting it, through ``debugfs`` scripts.

Owns: ``Ext4Editor`` — reads (``stat``, ``exists``, ``read_file``) run at once; edits
(``write_file``, ``mkdir``, ``chmod``, ``chown``, ``remove``) are queued and ``apply``
checks them against the image and runs them in one ``debugfs -w`` session fed on stdin.
Also the rules for guest paths and their quoting in debugfs's own script syntax.
Must not: mount, need root, follow a guest symlink (a path whose parent is a symlink
inside the image is refused, even though debugfs would resolve it inside the image and
never on the host), or edit an image a running VM uses (callers edit a VM's fresh copy
before boot; ``apply`` is not atomic, so on failure the caller discards that copy).
"""

from __future__ import annotations

import re
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from banger.errors import CommandFailed, InvalidArgument
from banger.host.runner import Runner

#: debugfs reads its script with fgets() into a BUFSIZ (8 KiB) buffer: a longer line
#: would be cut and its tail run as a second command. Doubled quotes can double a path's
#: length, so paths stay far below that.
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255
DEFAULT_MAX_READ_BYTES = 1024 * 1024
DEBUGFS_TIMEOUT_S = 120.0

_S_IFMT = {
    "regular": 0o100000,
    "directory": 0o040000,
    "symlink": 0o120000,
    "FIFO": 0o010000,
    "socket": 0o140000,
    "character special": 0o020000,
    "block special": 0o060000,
}
# Only the first lines of a `stat` block are parsed: they come before anything the image
# controls (symlink targets, xattr values), so an image cannot forge them.
_INODE_LINE = re.compile(r"^Inode: \d+\s+Type: (?P<kind>.+?)\s+Mode:\s+(?P<mode>[0-7]+)\s")
_OWNER_LINE = re.compile(r"^User:\s+(?P<uid>\d+)\s+Group:\s+(?P<gid>\d+)\s.*Size: (?P<size>\d+)")
_BANNER = re.compile(r"^debugfs \d+\.\d+")


@dataclass(frozen=True)
class InodeInfo:
    """What ``stat`` says about one path inside the image."""

    kind: str  # debugfs's word: regular, directory, symlink, FIFO, socket, …
    mode: int  # permission bits only (0o7777)
    uid: int
    gid: int
    size: int


# -- guest paths --------------------------------------------------------------------------


def check_guest_path(path: str) -> str:
    """Return ``path`` if it is a plain absolute guest path, else ``InvalidArgument``.

    Refused: relative paths, empty, ``.`` and ``..`` components, trailing slashes,
    control characters (NUL, newline and CR end a debugfs script line early), names
    over 255 bytes, paths over ``MAX_PATH_BYTES``, and text that is not UTF-8.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgument(f"guest path must be absolute: {path!r}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise InvalidArgument(f"guest path contains a control character: {path!r}")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"guest path is not valid UTF-8: {path!r}") from exc
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidArgument(f"guest path is longer than {MAX_PATH_BYTES} bytes")
    if path == "/":
        return path
    for part in path[1:].split("/"):
        if part in {"", ".", ".."}:
            raise InvalidArgument(f"guest path must be normalised (no //, . or ..): {path!r}")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise InvalidArgument(f"a name in {path!r} is longer than {MAX_NAME_BYTES} bytes")
    return path


def quote(word: str) -> str:
    """Quote one argument for debugfs's parser (lib/ss/parse.c): ``"`` doubles inside."""
    return '"' + word.replace('"', '""') + '"'


def parent_of(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/", "/a", "/a/b"]``: every directory the path goes through."""
    if path == "/":
        return []
    parts = path[1:].split("/")[:-1]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _check_mode(mode: int) -> int:
    if not 0 <= mode <= 0o7777:
        raise InvalidArgument(f"mode must be between 0 and 0o7777, not {mode:#o}")
    return mode


def _check_id(value: int, what: str) -> int:
    if not 0 <= value < 2**32 - 1:  # (uid_t)-1 means "unchanged" to the kernel
        raise InvalidArgument(f"{what} must be between 0 and {2**32 - 2}, not {value}")
    return value


# -- queued edits -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Op:
    verb: str  # write | mkdir | chmod | chown | remove
    path: str
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    data: bytes | None = None
    source: Path | None = None  # copy_file: a host file debugfs reads itself


class Ext4Editor:
    """Reads and edits one ext4 image file; nothing is written before ``apply``."""

    def __init__(self, image: Path, runner: Runner, *, scratch_dir: Path | None = None) -> None:
        self.image = image
        self.runner = runner
        self.scratch_dir = scratch_dir
        self._ops: list[_Op] = []

    # reads ---------------------------------------------------------------------------

    def stat(self, path: str) -> InodeInfo | None:
        """The inode at ``path`` (not following a final symlink), or None if absent."""
        path = check_guest_path(path)
        infos = self._probe([*ancestors(path), path])
        _require_plain_ancestors(path, infos)
        return infos[path]

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def read_file(self, path: str, *, max_bytes: int = DEFAULT_MAX_READ_BYTES) -> bytes | None:
        """Content of the regular file at ``path``; None if nothing is there."""
        info = self.stat(path)
        if info is None:
            return None
        if info.kind != "regular":
            raise InvalidArgument(f"{path} in {self.image.name} is a {info.kind}, not a file")
        if info.size > max_bytes:
            raise InvalidArgument(f"{path} in {self.image.name} is larger than {max_bytes} bytes")
        with tempfile.TemporaryDirectory(dir=self.scratch_dir, prefix="banger-ext4-") as tmp:
            out = Path(tmp) / "dump"
            run_debugfs(
                self.image, self.runner, [f"dump {quote(path)} {quote(str(out))}"], write=False
            )
            data = out.read_bytes()
        if len(data) != info.size:
            raise CommandFailed(f"debugfs dumped {len(data)} of {info.size} bytes of {path}")
        return data

    # queued edits -------------------------------------------------------------------

    def write_file(self, path: str, data: bytes, *, mode: int, uid: int = 0, gid: int = 0) -> None:
        """Create or replace the file at ``path`` (a symlink there is replaced, not followed)."""
        path = check_guest_path(path)
        if path == "/":
            raise InvalidArgument("cannot write a file at /")
        self._ops.append(_Op("write", path, _check_mode(mode), *_ids(uid, gid), data=bytes(data)))

    def copy_file(self, path: str, source: Path, *, mode: int, uid: int = 0, gid: int = 0) -> None:
        """Like ``write_file`` with the content of the host file ``source`` (read by
        debugfs, not held in memory). ``source`` must be a trusted regular file: banger's
        own store, never a path an image or guest chose."""
        path = check_guest_path(path)
        if path == "/":
            raise InvalidArgument("cannot write a file at /")
        ids = _ids(uid, gid)
        self._ops.append(_Op("write", path, _check_mode(mode), *ids, source=Path(source)))

    def mkdir(self, path: str, *, mode: int, uid: int = 0, gid: int = 0) -> None:
        """Ensure a directory with this mode and owner; missing parents get 0755 root."""
        self._ops.append(_Op("mkdir", check_guest_path(path), _check_mode(mode), *_ids(uid, gid)))

    def chmod(self, path: str, mode: int) -> None:
        self._ops.append(_Op("chmod", check_guest_path(path), mode=_check_mode(mode)))

    def chown(self, path: str, uid: int, gid: int) -> None:
        self._ops.append(_Op("chown", check_guest_path(path), None, *_ids(uid, gid)))

    def remove(self, path: str) -> None:
        """Remove a non-directory at ``path`` if there is one (a symlink itself, not its target)."""
        self._ops.append(_Op("remove", check_guest_path(path)))

    def apply(self) -> None:
        """Check every queued edit against the image, then run them all in one session."""
        ops, self._ops = self._ops, []
        if not ops:
            return
        paths = [p for op in ops for p in (*ancestors(op.path), op.path)]
        known = {p: (i.kind if i else None) for p, i in self._probe(paths).items()}
        with tempfile.TemporaryDirectory(dir=self.scratch_dir, prefix="banger-ext4-") as tmp:
            plan = _Planner(known, Path(tmp), self.image.name)
            for op in ops:
                plan.add(op)
            run_debugfs(self.image, self.runner, plan.lines, write=True)

    # debugfs sessions ----------------------------------------------------------------

    def _probe(self, paths: Iterable[str]) -> dict[str, InodeInfo | None]:
        """``stat`` many paths in one read-only session; also refuse a dirty journal.

        A path debugfs cannot resolve (absent, below a file, a symlink loop) has no
        ``stat`` block and reads as absent; callers check ancestors first, so a path
        below a symlink or a file is refused, never taken as absent.
        """
        unique = list(dict.fromkeys(paths))
        nonce = secrets.token_hex(16)  # unknown to the image: its data cannot fake a marker
        lines = [f"# {nonce} features", "features"]
        for index, path in enumerate(unique):
            lines += [f"# {nonce} {index}", f"stat {quote(path)}"]
        stdout, complaints = _run_debugfs(self.image, self.runner, lines, write=False)
        blocks = _split_blocks(stdout, nonce)
        features = blocks.get("features", "")
        if "Filesystem features:" not in features:
            raise _failed(f"debugfs could not open {self.image.name}", complaints)
        if "needs_recovery" in features.split():
            raise InvalidArgument(
                f"{self.image} has a journal that needs recovery",
                hint=f"run `e2fsck -fy {self.image}` first; edits would be lost at mount",
            )
        return {path: _parse_stat(blocks.get(str(i), "")) for i, path in enumerate(unique)}


def run_debugfs(image: Path, runner: Runner, lines: list[str], *, write: bool) -> str:
    """Run a debugfs script; any complaint on stderr is a failure (its exit code is 0)."""
    stdout, complaints = _run_debugfs(image, runner, lines, write=write)
    if complaints:
        raise _failed(f"debugfs could not {'edit' if write else 'read'} {image}", complaints)
    return stdout


def _run_debugfs(
    image: Path, runner: Runner, lines: list[str], *, write: bool
) -> tuple[str, list[str]]:
    if any(ch in line for line in lines for ch in "\n\r\0"):
        # One line is one command: a host path (TMPDIR) must not smuggle in a second.
        raise InvalidArgument("a debugfs command line contains a line break or NUL")
    argv: list[str | Path] = ["debugfs", *(["-w"] if write else []), "-f", "-", image]
    script = "".join(f"{line}\n" for line in lines).encode("utf-8")
    result = runner.run(argv, input_bytes=script, timeout_s=DEBUGFS_TIMEOUT_S)
    stderr = result.stderr.decode(errors="replace").splitlines()
    complaints = [line for line in stderr if line.strip() and not _BANNER.match(line)]
    return result.stdout.decode(errors="replace"), complaints


def _failed(brief: str, complaints: list[str]) -> CommandFailed:
    return CommandFailed(
        brief,
        details="\n".join(complaints[:20]) or None,
        hint="the image may be damaged or not ext4; `e2fsck -fn` on it says more",
    )


def _ids(uid: int, gid: int) -> tuple[int, int]:
    return _check_id(uid, "uid"), _check_id(gid, "gid")


def _split_blocks(stdout: str, nonce: str) -> dict[str, str]:
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    prefix = f"# {nonce} "
    for line in stdout.splitlines():
        if line.startswith(prefix):
            current = blocks.setdefault(line[len(prefix) :], [])
        elif current is not None:
            current.append(line)
    return {key: "\n".join(lines) for key, lines in blocks.items()}


def _parse_stat(block: str) -> InodeInfo | None:
    """Parse a ``stat`` block (echo line first); None when debugfs found nothing."""
    head = block.splitlines()[1:4]
    kind = next((m for m in map(_INODE_LINE.match, head[:1]) if m), None)
    owner = next((m for m in map(_OWNER_LINE.match, head[1:]) if m), None)
    if kind is None or owner is None:
        return None
    return InodeInfo(
        kind=kind["kind"],
        mode=int(kind["mode"], 8) & 0o7777,
        uid=int(owner["uid"]),
        gid=int(owner["gid"]),
        size=int(owner["size"]),
    )


def _require_plain_ancestors(path: str, infos: dict[str, InodeInfo | None]) -> None:
    for parent in ancestors(path):
        info = infos.get(parent)
        if info is None:
            return  # the path does not exist; nothing below was resolved
        _check_parent_kind(parent, info.kind, path)


def _check_parent_kind(parent: str, kind: str, path: str) -> None:
    if kind == "symlink":
        raise _symlink_refused(path, parent)
    if kind != "directory":
        raise InvalidArgument(f"refusing {path}: {parent} is a {kind}, not a directory")


def _symlink_refused(path: str, link: str) -> InvalidArgument:
    return InvalidArgument(
        f"refusing {path}: {link} is a symlink inside the image",
        hint="banger never resolves guest symlinks on the host; fix the image",
    )


class _Planner:
    """Turns queued edits into debugfs lines, tracking what each path will be."""

    def __init__(self, known: dict[str, str | None], scratch: Path, image_name: str) -> None:
        self.known = known
        self.scratch = scratch
        self.image_name = image_name
        self.lines: list[str] = []

    def add(self, op: _Op) -> None:
        self._parents(op)
        kind = self.known.get(op.path)
        if op.verb == "write":
            self._write(op, kind)
        elif op.verb == "mkdir":
            self._mkdir(op, kind)
        elif op.verb == "remove":
            self._remove(op.path, kind)
        else:
            self._set_fields(op, kind)

    def _parents(self, op: _Op) -> None:
        for parent in ancestors(op.path):
            kind = self.known.get(parent)
            if kind is None and op.verb == "mkdir":
                self._make_dir(parent, 0o755, 0, 0)
            elif kind is None:
                raise InvalidArgument(
                    f"cannot {op.verb} {op.path} in {self.image_name}: {parent} does not exist"
                )
            else:
                _check_parent_kind(parent, kind, op.path)

    def _write(self, op: _Op, kind: str | None) -> None:
        if kind == "directory":
            raise InvalidArgument(f"cannot write {op.path}: it is a directory in the image")
        if kind is not None:
            self.lines.append(f"rm {quote(op.path)}")
        if op.source is not None:
            source = op.source
        else:
            source = self.scratch / f"f{len(self.lines)}"
            source.write_bytes(op.data or b"")
        name = op.path.rsplit("/", 1)[1]
        # `write` links its second argument verbatim into the current directory, so a
        # name with a slash would become one corrupt entry: cd to the parent first.
        self.lines += [
            f"cd {quote(parent_of(op.path))}",
            f"write {quote(str(source))} {quote(name)}",
        ]
        self._became(op.path, "regular")
        self._fields(op.path, "regular", op.mode, op.uid, op.gid)

    def _mkdir(self, op: _Op, kind: str | None) -> None:
        if kind is None:
            self._make_dir(op.path, op.mode, op.uid, op.gid)
        elif kind == "directory":
            self._fields(op.path, kind, op.mode, op.uid, op.gid)
        elif kind == "symlink":
            raise _symlink_refused(op.path, op.path)
        else:
            raise InvalidArgument(f"cannot mkdir {op.path}: a {kind} is there in the image")

    def _make_dir(self, path: str, mode: int | None, uid: int | None, gid: int | None) -> None:
        self.lines += [
            f"cd {quote(parent_of(path))}",
            f"mkdir {quote(path.rsplit('/', 1)[1])}",
        ]
        self._became(path, "directory")
        self._fields(path, "directory", mode, uid, gid)

    def _remove(self, path: str, kind: str | None) -> None:
        if kind == "directory":
            raise InvalidArgument(f"cannot remove {path}: directories are not removed")
        if kind is not None:
            self.lines.append(f"rm {quote(path)}")
            self._became(path, None)

    def _became(self, path: str, kind: str | None) -> None:
        """Record a new kind at ``path``; what was probed below it no longer applies.

        (A probe below a symlink saw debugfs resolve through it; after the link is
        replaced, those answers describe the old target, not the new path.)
        """
        below = path.rstrip("/") + "/"
        for known in self.known:
            if known.startswith(below):
                self.known[known] = None
        self.known[path] = kind

    def _set_fields(self, op: _Op, kind: str | None) -> None:
        if kind is None:
            raise InvalidArgument(f"cannot {op.verb} {op.path}: it does not exist in the image")
        if kind == "symlink":
            raise _symlink_refused(op.path, op.path)
        self._fields(op.path, kind, op.mode, op.uid, op.gid)

    def _fields(
        self, path: str, kind: str, mode: int | None, uid: int | None, gid: int | None
    ) -> None:
        target = quote(path)
        if mode is not None:
            type_bits = _S_IFMT.get(kind)
            if type_bits is None:
                raise InvalidArgument(f"cannot chmod {path}: debugfs calls it a {kind!r}")
            # set_inode_field writes the whole i_mode: the file type bits go with it.
            self.lines.append(f"set_inode_field {target} mode 0{type_bits | mode:o}")
        if uid is not None:
            self.lines.append(f"set_inode_field {target} uid {uid}")
        if gid is not None:
            self.lines.append(f"set_inode_field {target} gid {gid}")
