"""``vm workspace export``: the guest's changes as one binary git patch (SPEC §7).

The patch is ``diff(base commit, the guest's working tree as git sees it)``: commits made
in the guest and uncommitted edits both land in it (the guest's commit messages do not),
new files that the guest's ``.gitignore`` does not ignore are included, and it is made
with ``--binary`` so ``git apply`` on the host takes it as is.

Two ways to make it, chosen per export:

- **in the guest** when it has git: a throwaway copy of its index (``GIT_INDEX_FILE``; the
  copy keeps the index's mtime, which git needs to see a same-size edit made in the second
  the index was written: "racy git"), ``git add -A`` and ``git diff --cached --binary
  BASE`` — the guest's own index is left alone;
- **on the host** otherwise (banger's images ship no git): the guest's tree, minus
  ``.git``, comes back as a tar over SSH and is unpacked into a temp repository whose
  objects are borrowed from the host repository (``objects/info/alternates``), where the
  same three git steps run with no user or system config. The tar is hostile input: names
  are checked, nothing is written through a symlink, any ``.git`` inside is dropped (its
  config could name programs), and the total size is bounded.

Owns: both scripts, the unpacking of the guest's tar and the choice between the two.
Must not: use anything the guest says as a host path.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO

from banger.errors import CommandFailed, InvalidArgument, InvalidState
from banger.host.runner import Runner
from banger.workspace import EXIT_NO_GIT, Shell, guest_failure
from banger.workspace.archive import RootDir, Unsafe, display
from banger.workspace.gitrepo import Repo, is_object_id, open_repo, tmp_git

EXIT_NO_WORKSPACE = 3
MAX_PULL_BYTES = 8 * 1024**3
MAX_PULL_ENTRIES = 1_000_000
MAX_PATCH_BYTES = 2 * 1024**3
PROBE_TIMEOUT_S = 60.0
_GIT = "git --no-optional-locks -c core.fsmonitor=false -c core.hooksPath=/dev/null"
_DIFF = "diff --cached --binary --full-index --no-ext-diff --no-textconv --no-color"


class Via(StrEnum):
    AUTO = "auto"
    GUEST = "guest"
    HOST = "host"


@dataclass(frozen=True)
class Export:
    patch: bytes
    base: str
    via: Via
    warnings: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        return self.patch.count(b"\ndiff --git ") + self.patch.startswith(b"diff --git ")


def probe_script(guest_path: str) -> str:
    dest = shlex.quote(guest_path)
    return (
        f"dest={dest}\n"
        'if ! [ -d "$dest/.git" ]; then echo "no workspace at $dest" >&2; '
        f"exit {EXIT_NO_WORKSPACE}; fi\n"
        "if command -v git >/dev/null 2>&1; then echo git=1; else echo git=0; fi\n"
        'printf base=; head -c 80 "$dest/.git/banger-base" 2>/dev/null || true\n'
    )


def guest_diff_script(guest_path: str, base: str) -> str:
    """git in the guest, on a copy of its index so the guest's own staging is untouched."""
    return "\n".join(
        [
            "set -eu",
            f"command -v git >/dev/null 2>&1 || exit {EXIT_NO_GIT}",
            f"cd -- {shlex.quote(guest_path)}",
            'idx=$(mktemp); trap \'rm -f -- "$idx"\' EXIT; rm -f -- "$idx"',
            'if [ -f .git/index ]; then cp -p .git/index "$idx"; fi',
            'GIT_INDEX_FILE="$idx"; export GIT_INDEX_FILE',
            f"{_GIT} add -A",
            f"{_GIT} {_DIFF} {shlex.quote(base)} --",
            "",
        ]
    )


def pull_script(guest_path: str) -> str:
    """A tar of the guest's work tree without ``.git`` (busybox tar has no --exclude)."""
    return "\n".join(
        [
            "set -eu",
            f"cd -- {shlex.quote(guest_path)}",
            "set --",
            "for f in .[!.]* ..?* *; do",
            '  if [ -e "$f" ] || [ -L "$f" ]; then [ "$f" = .git ] || set -- "$@" "./$f"; fi',
            "done",
            '[ "$#" -gt 0 ] || exit 0',
            'exec tar -c -f - "$@"',
            "",
        ]
    )


def _probe(shell: Shell, guest_path: str) -> tuple[bool, str]:
    out, result = shell.receive(
        probe_script(guest_path), lambda s: s.read(4096), timeout_s=PROBE_TIMEOUT_S
    )
    if result.returncode == EXIT_NO_WORKSPACE:
        raise InvalidState(
            f"the guest has no workspace at {guest_path}",
            hint="`banger vm workspace prepare VM PATH` copies one in",
        )
    if result.returncode != 0:
        raise guest_failure("reading the workspace state", result)
    fields = dict(
        line.partition("=")[::2] for line in out.decode(errors="replace").splitlines() if line
    )
    return fields.get("git") == "1", fields.get("base", "").strip()


def export_patch(
    shell: Shell,
    *,
    guest_path: str,
    base_commit: str | None,
    host_repo: Path,
    via: Via = Via.AUTO,
    runner: Runner | None = None,
) -> Export:
    """The guest's changes relative to ``base_commit`` (default: the commit prepare
    recorded in the guest)."""
    has_git, recorded = _probe(shell, guest_path)
    base = base_commit or recorded
    if not base_commit and not is_object_id(recorded):
        raise InvalidState(
            f"the guest's workspace at {guest_path} records no base commit",
            hint="pass --base-commit COMMIT (the commit the workspace was prepared from)",
        )
    if via is Via.GUEST or (via is Via.AUTO and has_git):
        if not has_git:
            raise InvalidState("git is not installed in the guest", hint="use --via host")
        return Export(_guest_diff(shell, guest_path, base), base, Via.GUEST)

    def not_a_repo(start: Path) -> InvalidArgument:
        # Not open_repo's `git init`: a new repository would not hold the base commit.
        return InvalidArgument(
            f"{start} is not a git repository: export diffs on the host here (--via host, "
            "or no git in the guest), in the repository the workspace was copied from "
            f"(it holds base commit {base[:12]})",
            hint="run it in that repository, or name it with --repo DIR",
        )

    repo = open_repo(host_repo, runner or Runner(), not_a_repo=not_a_repo)
    base = _host_base(repo, base, given=base_commit is not None)
    patch, warnings = _host_diff(shell, repo, guest_path, base)
    return Export(patch, base, Via.HOST, warnings)


def _guest_diff(shell: Shell, guest_path: str, base: str) -> bytes:
    if base.startswith("-") or not base.isprintable() or len(base) > 200:
        raise InvalidArgument(f"{base!r} is not a valid git revision")

    def read(stream: IO[bytes]) -> bytes:
        data = stream.read(MAX_PATCH_BYTES + 1)
        if len(data) > MAX_PATCH_BYTES:
            raise CommandFailed(f"the patch is larger than {MAX_PATCH_BYTES // 2**30} GiB")
        return data

    patch, result = shell.receive(guest_diff_script(guest_path, base), read)
    if result.returncode != 0:
        raise guest_failure("git diff", result)
    return patch


def _host_base(repo: Repo, base: str, *, given: bool) -> str:
    if given:
        return repo.resolve_commit(base)
    found = repo.git("cat-file", "-e", f"{base}^{{commit}}", ok_codes=(0, 1, 128))
    if found.returncode != 0:
        raise InvalidState(
            f"the base commit {base[:12]} is not in the repository at {repo.toplevel}",
            hint="run the export from the repository the workspace was prepared from, "
            "or pass --base-commit",
        )
    return base


def _host_diff(shell: Shell, repo: Repo, guest_path: str, base: str) -> tuple[bytes, list[str]]:
    with tempfile.TemporaryDirectory(prefix="banger-export-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        tmp_git(repo, work, "init", "-q", "--template=", f"--object-format={repo.object_format}")
        alternates = work / ".git" / "objects" / "info" / "alternates"
        alternates.parent.mkdir(parents=True, exist_ok=True)
        alternates.write_text(str(repo.common_dir / "objects") + "\n")
        with RootDir(work) as root:
            warnings, result = shell.receive(
                pull_script(guest_path), lambda stream: unpack_untrusted(stream, root)
            )
        # GNU tar exits 1 when a file changed while it was read; the stream is still whole.
        if result.returncode not in (0, 1):
            raise guest_failure("reading the guest's files", result)
        tmp_git(repo, work, "read-tree", base)
        tmp_git(repo, work, "add", "-A")
        patch = tmp_git(repo, work, *_DIFF.split(), base, "--").stdout
        return patch, warnings


def _safe_name(raw: str) -> bytes | None:
    """A member name as a plain relative path; None for the root entry itself."""
    name = os.fsencode(raw)
    while name.startswith(b"./"):
        name = name[2:]
    name = name.rstrip(b"/")
    if name in (b"", b"."):
        return None
    parts = name.split(b"/")
    if name.startswith(b"/") or any(p in (b"", b".", b"..") for p in parts):
        raise CommandFailed(f"the guest sent an unsafe path in its archive: {display(name)}")
    return name


class _Prefixed(io.RawIOBase):
    """``head`` then the rest of ``stream`` (we peeked to tell "no files" from a tar)."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            take = len(self._head) if size < 0 else size
            out, self._head = self._head[:take], self._head[take:]
            return out
        return self._stream.read(size)


def unpack_untrusted(
    stream: IO[bytes],
    root: RootDir,
    *,
    max_bytes: int = MAX_PULL_BYTES,
    max_entries: int = MAX_PULL_ENTRIES,
) -> list[str]:
    """Unpack a tar from the guest below ``root``: directories, regular files, symlinks
    (created, never followed) and hard links (copied); anything else is skipped."""
    head = stream.read(512)
    if not head:
        return []
    warnings: list[str] = []
    total = 0
    try:
        with tarfile.open(
            fileobj=_Prefixed(head, stream), mode="r|", encoding="utf-8", errors="surrogateescape"
        ) as tar:
            for count, member in enumerate(tar, 1):
                if count > max_entries:
                    raise CommandFailed(f"the guest's archive has more than {max_entries} entries")
                total += max(member.size, 0)
                if total > max_bytes:
                    raise CommandFailed(
                        f"the guest's files exceed {max_bytes // 2**30} GiB; export refused"
                    )
                _unpack_member(tar, member, root, warnings)
    except tarfile.TarError as exc:
        raise CommandFailed("the guest's archive is damaged", details=str(exc)) from exc
    return warnings


def _unpack_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, root: RootDir, warnings: list[str]
) -> None:
    name = _safe_name(member.name)
    if name is None:
        return
    if any(p.lower() == b".git" for p in name.split(b"/")):
        if name.lower().endswith(b".git") and member.isdir():
            warnings.append(f"{display(name)}: a nested repository's .git, left out")
        return
    try:
        parent, leaf = root.parent(name, create=True)
        if member.isdir():
            _remove(parent, leaf, keep_dir=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(leaf, 0o755, dir_fd=parent)
        elif member.issym():
            _remove(parent, leaf)
            os.symlink(os.fsencode(member.linkname), leaf, dir_fd=parent)
        elif member.isreg():
            source = tar.extractfile(member)
            assert source is not None
            _write(parent, leaf, source, (member.mode & 0o777) | 0o600)
        elif member.islnk():
            _hardlink_copy(root, name, member)
        else:
            warnings.append(f"{display(name)}: skipped, not a file, directory or symlink")
    except Unsafe as exc:
        raise CommandFailed(
            f"the guest's archive writes through a symlink: {display(name)}", details=str(exc)
        ) from exc
    except OSError as exc:
        raise CommandFailed(
            f"could not write {display(name)} from the guest's archive: {exc.strerror}"
        ) from exc


def _remove(parent: int, leaf: bytes, *, keep_dir: bool = False) -> None:
    """Clear the way for a new entry: an old file or symlink goes, a directory stays
    (an entry replacing a directory with a file is refused)."""
    try:
        st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(leaf, dir_fd=parent)
    elif not keep_dir:
        raise CommandFailed(
            f"the guest's archive replaces a directory with a file: {display(leaf)}"
        )


def _write(parent: int, leaf: bytes, source: IO[bytes], mode: int) -> None:
    _remove(parent, leaf)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(leaf, flags, 0o600, dir_fd=parent)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(1 << 20):
            out.write(chunk)
        os.fchmod(out.fileno(), mode)


def _hardlink_copy(root: RootDir, name: bytes, member: tarfile.TarInfo) -> None:
    target = _safe_name(member.linkname)
    if target is None or target == name:
        return
    with os.fdopen(root.open_regular(target), "rb") as source:
        # open_regular moved RootDir's fd stack to the target's directory: ask again.
        parent, leaf = root.parent(name, create=True)
        _write(parent, leaf, source, 0o644)
