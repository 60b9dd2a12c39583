"""``ssh <name>.vm`` from any terminal (SPEC §4): banger's ssh_config and its Include.

Owns: the text of ``~/.config/banger/ssh_config`` (a ``Host *.vm`` block), the one
marker-fenced ``Include`` block in ``~/.ssh/config`` (added and removed by pure
functions, written atomically), and the known-hosts helper ssh runs
(``python -m banger.sshconfig known-hosts DIR HOST``).
Must not: touch ``~/.ssh/config`` unless asked (``--install``/``--uninstall``), edit
anything outside its own fenced block, or import more than the standard library:
ssh starts the helper on every connection to a ``.vm`` host.

Decisions (docs/dns-routing.md has the user-facing account):
- Names resolve through the host's resolver, i.e. banger's DNS server: no HostName
  rewriting, no ProxyCommand. ``ssh_config`` cannot map ``%h`` to an address by itself.
- Host keys: each VM's key is in ``vms/<name>/known_hosts`` keyed by its IP. ssh looks
  keys up by the name typed (``foo.vm``) and ``HostKeyAlias`` takes no ``%`` tokens, so
  ``KnownHostsCommand`` (OpenSSH >= 8.5) runs the helper below, which prints the VM's key
  under the name asked for. Checking stays strict; nothing is ever written to a
  known_hosts file by ssh.
- ``Include`` sits at the very top of ``~/.ssh/config``: after a ``Host`` line it would
  apply only to that host.
- A symlinked ``~/.ssh/config`` (dotfile managers) is followed: its target is edited in
  place and the link kept. A dangling link or a non-regular target is refused.
- An ``Include`` of our file the user wrote themselves counts as installed: ``--install``
  adds nothing and ``--uninstall`` leaves it alone.
- ``--uninstall`` removes exactly the bytes ``--install`` added, so the file is restored
  byte for byte; a file ``--install`` created is left empty rather than deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from banger.errors import InvalidArgument, InvalidState, PermissionDenied

BEGIN_MARKER = "# >>> banger ssh-config >>>"
END_MARKER = "# <<< banger ssh-config <<<"
BLOCK_NOTE = "# Added by `banger ssh-config --install`; `--uninstall` removes this block."
SNIPPET_NAME = "ssh_config"
#: The VM name rule of banger.model.naming, repeated to keep this module stdlib-only.
_VM_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HOST_PORT = re.compile(r"\[(?P<host>[^\]]+)\]:[0-9]+")


# -- the snippet ------------------------------------------------------------------------


def render_snippet(*, key: Path, vms_dir: Path, python: str) -> str:
    """The ``Host *.vm`` block of ``~/.config/banger/ssh_config``."""
    helper = " ".join(
        [_quote(python), "-I", "-m", "banger.sshconfig", "known-hosts", _quote(str(vms_dir)), "%H"]
    )
    return "\n".join(
        [
            "# Written by `banger ssh-config`, which rewrites it; edits here are lost.",
            "# Makes `ssh <vm-name>.vm` work: the name resolves through banger's DNS",
            "# server (docs/dns-routing.md) and the guest's host key comes from banger.",
            "# `banger ssh-config --install` includes this file from ~/.ssh/config.",
            "Host *.vm",
            "    User root",
            f"    IdentityFile {_quote(str(key))}",
            "    IdentitiesOnly yes",
            "    StrictHostKeyChecking yes",
            "    CheckHostIP no",
            "    UpdateHostKeys no",
            "    UserKnownHostsFile /dev/null",
            "    GlobalKnownHostsFile /dev/null",
            f"    KnownHostsCommand {helper}",
            "    # a session to a VM that died ends within ~20 s instead of hanging",
            "    ServerAliveInterval 5",
            "    ServerAliveCountMax 3",
            "",
        ]
    )


def _quote(value: str) -> str:
    # ssh splits arguments at blanks honouring double quotes and backslashes, and
    # expands %tokens and ${VARS}; a path it cannot express is refused, not mangled.
    if any(c in value for c in '"\\\n\r%') or "${" in value:
        raise InvalidArgument(f"cannot write the path {value!r} into an ssh config")
    return f'"{value}"' if re.search(r"[\s'\\#]", value) else value


def include_target(snippet: Path, *, home: Path, passwd_home: Path | None) -> str:
    """How the Include line names ``snippet``: ``~/...`` when ssh's ``~`` is ``home``."""
    # ssh expands ~ from the password database, not $HOME; use ~ only when they agree.
    if passwd_home is not None and home == passwd_home and snippet.is_relative_to(home):
        return _quote("~/" + snippet.relative_to(home).as_posix())
    return _quote(str(snippet))


# -- the Include block (pure) -----------------------------------------------------------------


def _lines(text: str) -> list[str]:
    """Lines with their endings; only ``\\n`` ends a line, as for ssh."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    return [*lines, parts[-1]] if parts[-1] else lines


def _newline_of(text: str) -> str:
    first = text.split("\n", 1)[0]
    return "\r\n" if "\n" in text and first.endswith("\r") else "\n"


def block_for(include: str, newline: str = "\n") -> str:
    lines = [BEGIN_MARKER, BLOCK_NOTE, f"Include {include}", END_MARKER]
    return "".join(line + newline for line in lines)


def find_blocks(text: str) -> list[tuple[int, int]]:
    """Character spans of every fenced block, end markers' line endings included."""
    spans: list[tuple[int, int]] = []
    start: int | None = None
    pos = 0
    for line in _lines(text):
        marker = line.strip()
        if marker == BEGIN_MARKER:
            if start is not None:
                raise _unbalanced("a second start marker before the end marker")
            start = pos
        elif marker == END_MARKER:
            if start is None:
                raise _unbalanced("an end marker without a start marker")
            spans.append((start, pos + len(line)))
            start = None
        pos += len(line)
    if start is not None:
        raise _unbalanced("a start marker without an end marker")
    return spans


def _unbalanced(what: str) -> InvalidState:
    return InvalidState(
        f"~/.ssh/config has {what} of banger's block",
        hint=f"remove the lines between {BEGIN_MARKER!r} and {END_MARKER!r} by hand",
    )


def own_include_line(text: str, names: Sequence[str]) -> int | None:
    """1-based number of a line outside banger's block that already includes ``names``."""
    inside = find_blocks(text)
    pos = 0
    for number, line in enumerate(_lines(text), start=1):
        covered = any(a <= pos < b for a, b in inside)
        pos += len(line)
        words = _split_words(line)
        if covered or len(words) < 2 or words[0].lower() != "include":
            continue
        if any(word in names for word in words[1:]):
            return number
    return None


def _split_words(line: str) -> list[str]:
    try:
        return shlex.split(line.replace("=", " ", 1), comments=True)
    except ValueError:
        return []


def add_block(text: str, include: str) -> str:
    """``text`` with banger's block at the top (or its block brought up to date in place)."""
    newline = _newline_of(text)
    block = block_for(include, newline)
    spans = find_blocks(text)
    if not spans:
        return block + text
    start, end = spans[0]
    return text[:start] + block + remove_blocks(text[end:])


def remove_blocks(text: str) -> str:
    """``text`` without banger's blocks: the exact bytes ``add_block`` added go."""
    return _cut(text, find_blocks(text))


def _cut(text: str, spans: Sequence[tuple[int, int]]) -> str:
    out, pos = [], 0
    for start, end in spans:
        out.append(text[pos:start])
        pos = end
    out.append(text[pos:])
    return "".join(out)


# -- files -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncludeStatus:
    """Where ``~/.ssh/config`` stands with respect to banger's Include."""

    path: Path
    #: The file actually edited: ``path`` itself or its symlink's target.
    target: Path
    exists: bool
    managed_block: bool
    own_include_line: int | None

    @property
    def installed(self) -> bool:
        return self.managed_block or self.own_include_line is not None

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "target": str(self.target),
            "exists": self.exists,
            "installed": self.installed,
            "managed_block": self.managed_block,
            "own_include_line": self.own_include_line,
        }


def resolve_target(path: Path) -> Path:
    """The regular file to edit for ``path``, which may be a symlink (not created here)."""
    if not path.is_symlink():
        if path.exists() and not path.is_file():
            raise PermissionDenied(f"{path} is not a regular file; not editing it")
        return path
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise PermissionDenied(
            f"{path} is a symlink that does not lead to a file ({exc.__class__.__name__})",
            hint=f"fix the link or add `Include` by hand; `ls -l {path}` shows it",
        ) from exc
    if not target.is_file():
        raise PermissionDenied(f"{path} links to {target}, which is not a regular file")
    return target


def read_text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    # surrogateescape round-trips any bytes, so untouched parts stay byte for byte.
    return data.decode("utf-8", errors="surrogateescape")


def include_status(path: Path, names: Sequence[str]) -> IncludeStatus:
    target = resolve_target(path)
    text = read_text(target)
    return IncludeStatus(
        path=path,
        target=target,
        exists=text is not None,
        managed_block=bool(text and find_blocks(text)),
        own_include_line=own_include_line(text, names) if text else None,
    )


def install(path: Path, include: str, names: Sequence[str]) -> bool:
    """Add banger's block to ``path`` (``~/.ssh/config``); True if the file changed."""
    target = resolve_target(path)
    text = read_text(target)
    if text is None:
        _ensure_private_dir(target.parent)
        write_atomic(target, block_for(include), mode=0o600)
        return True
    if own_include_line(text, names) is not None:
        return False
    updated = add_block(text, include)
    if updated == text:
        return False
    write_atomic(target, updated)
    return True


def uninstall(path: Path) -> bool:
    """Remove banger's block(s) from ``path``; True if the file changed."""
    target = resolve_target(path)
    text = read_text(target)
    if text is None:
        return False
    updated = remove_blocks(text)
    if updated == text:
        return False
    write_atomic(target, updated)
    return True


def write_atomic(path: Path, text: str, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` atomically; an existing file keeps its mode."""
    from banger.host.publish import write_file_atomic  # not on the known-hosts helper's path

    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    if st is not None and st.st_uid != os.geteuid():
        # Rewriting it would hand someone else's file to us (e.g. under sudo).
        raise PermissionDenied(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})",
            hint="run banger as the user whose ssh config it is",
        )
    mode = stat.S_IMODE(st.st_mode) if st is not None else mode
    write_file_atomic(path, text.encode("utf-8", errors="surrogateescape"), mode=mode)


def _ensure_private_dir(path: Path) -> None:
    # ~/.ssh: ssh itself insists that nobody else can write to it.
    if not path.exists():
        path.mkdir(mode=0o700, parents=True)
        path.chmod(0o700)


# -- the known-hosts helper ssh runs -----------------------------------------------------------


def known_hosts_lines(vms_dir: Path, host: str) -> list[str]:
    """Lines of known_hosts for ``host`` (``name.vm`` or ``[name.vm]:port``) or none."""
    match = _HOST_PORT.fullmatch(host)
    bare = (match.group("host") if match else host).lower().rstrip(".")
    name, dot, zone = bare.rpartition(".")
    if not dot or zone != "vm" or not _VM_NAME.fullmatch(name):
        return []
    try:
        text = (vms_dir / name / "known_hosts").read_text(encoding="ascii", errors="replace")
    except OSError:
        return []
    lines = []
    for line in text.splitlines():
        fields = line.split()
        # The file is keyed by IP; ssh asks by the name typed, so re-key each line.
        if len(fields) >= 3 and not fields[0].startswith(("#", "@")):
            lines.append(f"{host} {fields[1]} {fields[2]}")
    return lines


def main(argv: Sequence[str]) -> int:
    """``python -m banger.sshconfig known-hosts VMS_DIR HOST``; always exits 0.

    ssh ends the connection when this fails, and printing no key makes strict host
    key checking refuse the host: both fail closed.
    """
    if len(argv) != 3 or argv[0] != "known-hosts":
        sys.stderr.write("usage: python -m banger.sshconfig known-hosts VMS_DIR HOST\n")
        return 2
    with contextlib.suppress(Exception):
        for line in known_hosts_lines(Path(argv[1]), argv[2]):
            sys.stdout.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
