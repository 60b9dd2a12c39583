"""Making a pulled container image bootable (SPEC §5): banger's first-boot init in the tree.

Owns: placing ``banger-init`` (``INIT_PATH``, the VM's ``init=``), the guest agent and its
unit when banger ships them (``AGENT_PATH``), and the list of extra first-boot packages
(``PACKAGES_PATH``) into an image's root tree during the image build, every path resolved
*inside* the tree the way the guest will see it; reading the image's ``/etc/os-release``
for the log; refusing an image without ``/bin/sh``. The real decisions (what to install,
with which package manager, through which mirror) happen in the guest, in
``guest/banger-init``.

Must not: follow a symlink on the host. An image is hostile: ``/sbin`` may point to
``/../../tmp`` or ``/etc/os-release`` to a host file. Every component is walked with
``dir_fd`` + ``O_NOFOLLOW`` and a symlink is resolved against the tree root (absolute
targets restart there, ``..`` stops there), like a chroot would. Must not need root: the
image build runs this inside its fakeroot session, where plain writes end up root-owned.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
from collections import deque
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

from banger.errors import InvalidArgument

log = logging.getLogger("banger.images.bootable")

#: Where banger-init lives in the image; the image row stores it as ``init_path``.
INIT_PATH = "/sbin/banger-init"
#: Where the guest agent and its systemd unit go (banger-init enables the unit).
AGENT_PATH = "/usr/local/lib/banger/banger-agent"
AGENT_UNIT_PATH = "/usr/local/lib/systemd/system/banger-agent.service"
#: Extra packages for the first boot, one name a line (read by banger-init).
PACKAGES_PATH = "/etc/banger/first-boot-packages"
#: Written by banger-init in the guest once first-boot provisioning is done.
STAMP_PATH = "/var/lib/banger/provisioned"
#: A package name in every family's archive (Debian, Alpine, Fedora, Arch, openSUSE).
PACKAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._-]{0,127}", re.ASCII)

_MAX_SYMLINKS = 40  # as the kernel's path walk (ELOOP)
_MAX_OS_RELEASE_BYTES = 64 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Mirrors family_of() in banger-init (which is what decides, in the guest).
_FAMILY_IDS = {
    "debian": ("debian", "ubuntu", "raspbian", "linuxmint", "pop", "kali", "devuan", "elementary"),
    "alpine": ("alpine", "postmarketos", "wolfi"),
    "fedora": ("fedora", "rhel", "centos", "rocky", "almalinux", "ol", "amzn", "nobara"),
    "arch": ("arch", "archarm", "manjaro", "endeavouros", "artix"),
    "suse": ("opensuse", "sles", "sled", "suse"),
}


def init_script() -> bytes:
    """The banger-init shell script shipped with banger."""
    return resources.files("banger.images").joinpath("guest/banger-init").read_bytes()


def agent_files() -> list[tuple[str, bytes, int]]:
    """(guest path, content, mode) of the guest agent and its unit, when banger ships them
    (``banger/guest/banger_agent.py``, ``banger-agent.service``); else nothing, no stub."""
    guest = resources.files("banger").joinpath("guest")
    agent, unit = guest.joinpath("banger_agent.py"), guest.joinpath("banger-agent.service")
    if not agent.is_file():
        return []
    found = [(AGENT_PATH, agent.read_bytes(), 0o755)]
    if unit.is_file():
        found.append((AGENT_UNIT_PATH, unit.read_bytes(), 0o644))
    return found


def make_bootable(tree: Path, *, packages: Sequence[str] = ()) -> None:
    """Put banger-init (0755) and, if shipped, the guest agent into the image ``tree``.

    ``packages``: more for the first boot to install (with what the image lacks), e.g. a
    catalog image's ``first_boot_packages``; written to ``PACKAGES_PATH``.
    """
    wanted = check_packages(packages)
    with _open_tree(tree) as root:
        osrel = parse_os_release(_read_in_tree(root, "/etc/os-release", _MAX_OS_RELEASE_BYTES))
        family = family_of(osrel.get("ID", ""), osrel.get("ID_LIKE", ""))
        log.info(
            "making image bootable: ID=%s ID_LIKE=%s family=%s",
            osrel.get("ID", "?"),
            osrel.get("ID_LIKE", ""),
            family or "unknown (banger-init will look for a package manager)",
        )
        if not _is_regular_in_tree(root, "/bin/sh"):
            raise InvalidArgument(
                "the image has no /bin/sh, so banger-init cannot run in it",
                hint="use an image with a shell (distroless and scratch images cannot boot)",
            )
        _write_in_tree(root, INIT_PATH, init_script(), mode=0o755)
        files = agent_files()
        if wanted:
            files.append((PACKAGES_PATH, "".join(f"{p}\n" for p in wanted).encode(), 0o644))
        for path, data, mode in files:
            _write_in_tree(root, path, data, mode=mode)
        log.info("installed %s", ", ".join([INIT_PATH, *(path for path, _, _ in files)]))


def check_packages(packages: Sequence[str]) -> list[str]:
    """Package names, each once; anything that cannot be one is refused."""
    if isinstance(packages, str):
        raise InvalidArgument("packages must be a list of names, not one string")
    bad = [p for p in packages if not isinstance(p, str) or not PACKAGE_NAME.fullmatch(p)]
    if bad:
        raise InvalidArgument(f"not package names: {', '.join(map(repr, bad[:5]))}")
    return list(dict.fromkeys(packages))


# -- os-release -------------------------------------------------------------------------


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines (os-release(5)), one level of quotes removed; junk lines skipped."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if not key.isidentifier():
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def family_of(os_id: str, id_like: str = "") -> str | None:
    """The package-manager family of an image: ``ID`` first, then each ``ID_LIKE`` word."""
    for word in [os_id, *id_like.split()]:
        for family, ids in _FAMILY_IDS.items():
            if word in ids or (family == "suse" and word.startswith("opensuse")):
                return family
    return None


# -- the tree: every path resolved inside it, no symlink followed on the host ------------


@contextlib.contextmanager
def _open_tree(tree: Path) -> Iterator[int]:
    try:
        fd = os.open(tree, _DIR_FLAGS)
    except OSError as exc:
        raise InvalidArgument(f"image tree {tree} cannot be opened: {exc.strerror}") from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _lookup(root: int, path: str, *, create_dirs: bool, follow_last: bool) -> tuple[int, str]:
    """(fd of the directory holding ``path``'s last entry, that entry's name) in the tree.

    Intermediate symlinks are always resolved inside the tree, the last one only with
    ``follow_last``. Missing directories are made (0755) with ``create_dirs``, else
    FileNotFoundError. The caller closes the returned fd.
    """
    todo = deque(_components(path))
    _check_names_a_file(todo, path)
    stack = [os.dup(root)]  # directory fds from the tree root down
    links = 0
    try:
        while True:
            name = todo.popleft()
            if name == "..":  # at the tree root, ".." is the root (as in a chroot)
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            st = _lstat_or_none(stack[-1], name)
            last = not todo
            if st is not None and stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, f"too many symlinks resolving {path}")
                target = os.readlink(name, dir_fd=stack[-1])
                if target.startswith("/"):  # the tree's root, never the host's
                    for fd in stack[1:]:
                        os.close(fd)
                    del stack[1:]
                todo.extendleft(reversed(_components(target)))
                _check_names_a_file(todo, path)
                continue
            if last:
                return stack.pop(), name
            stack.append(_enter_dir(stack[-1], name, st, create=create_dirs, path=path))
    finally:
        for fd in stack:
            os.close(fd)


def _check_names_a_file(todo: deque[str], path: str) -> None:
    if not todo or todo[-1] == "..":  # "/", "..", or a link to one of them
        raise InvalidArgument(f"{path!r} does not name a file in the image")


def _enter_dir(
    dir_fd: int, name: str, st: os.stat_result | None, *, create: bool, path: str
) -> int:
    if st is None:
        if not create:
            raise FileNotFoundError(errno.ENOENT, f"{path}: {name} is missing")
        os.mkdir(name, 0o755, dir_fd=dir_fd)
        _own_by_root(name, dir_fd)
    elif not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"{path!r}: {name!r} in the image is not a directory")
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _lstat_or_none(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _own_by_root(name: str, dir_fd: int) -> None:
    # As root or under fakeroot (euid 0) make ownership explicit; unprivileged, it is ours.
    if os.geteuid() == 0:
        os.chown(name, 0, 0, dir_fd=dir_fd, follow_symlinks=False)


def _write_in_tree(root: int, path: str, data: bytes, *, mode: int) -> None:
    """Replace whatever ``path`` is (a symlink is removed, never followed) with a file."""
    try:
        _replace_file(root, path, data, mode)
    except OSError as exc:  # a symlink loop, a read-only tree, a full disk...
        raise InvalidArgument(
            f"cannot put {path} into the image", details=f"{exc.strerror or exc}"
        ) from exc


def _replace_file(root: int, path: str, data: bytes, mode: int) -> None:
    dir_fd, name = _lookup(root, path, create_dirs=True, follow_last=False)
    try:
        st = _lstat_or_none(dir_fd, name)
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise InvalidArgument(f"{path!r} is a directory in the image")
            os.unlink(name, dir_fd=dir_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, mode, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), mode)  # not subject to the umask
            if os.geteuid() == 0:
                os.fchown(fh.fileno(), 0, 0)
    finally:
        os.close(dir_fd)


def _read_in_tree(root: int, path: str, limit: int) -> str:
    """A regular file's text (at most ``limit`` bytes), "" when it is missing or not a file."""
    try:
        dir_fd, name = _lookup(root, path, create_dirs=False, follow_last=True)
    except (FileNotFoundError, InvalidArgument, OSError):
        return ""
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return ""
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return ""
        return fh.read(limit).decode("utf-8", errors="replace")


def _is_regular_in_tree(root: int, path: str) -> bool:
    try:
        dir_fd, name = _lookup(root, path, create_dirs=False, follow_last=True)
    except (InvalidArgument, OSError):
        return False
    try:
        st = _lstat_or_none(dir_fd, name)
    finally:
        os.close(dir_fd)
    return st is not None and stat.S_ISREG(st.st_mode)
