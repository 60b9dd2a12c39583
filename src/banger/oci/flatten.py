"""Flattening an image's layers into one directory tree (SPEC §5, ADVERSARIAL group A).

Owns: ``flatten_layers`` — layers replayed oldest first into a fresh directory, each
entry dispatched by type, and the changeset rules of the OCI layer spec: ``.wh.<name>``
removes ``<name>`` of *lower* layers only, so a file and its whiteout in one layer
leave the file (18) and whiteout-then-recreate works (17); ``.wh..wh..opq`` empties its
directory of lower-layer content whatever its position in the layer (16); invalid
whiteout names are refused (14); no ``.wh.`` entry is ever created (19: a *directory*
named ``.wh.*`` is refused, AUFS's ``.wh..wh.*`` metadata is skipped as Docker does).
"This layer's content" is the set of canonical paths the layer created or walked
through (``touched``). Also the entry and size caps (27) and turning every failure into
one banger error naming the layer and the entry; on any failure the tree is removed.
Must not: call ``tarfile.extract*`` or its filters (DESIGN.md: ``data`` rejects absolute
symlinks and strips setuid bits, and has been bypassed), follow a symlink on the host
(``banger.oci.pathres``), or need root: ``owners`` says whether chown/mknod are done
(inside fakeroot, see ``banger.oci.ext4build``) or skipped.
"""

from __future__ import annotations

import errno
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from banger.errors import BangerError, CommandFailed, InvalidArgument, NoSpace
from banger.host.publish import remove_tree
from banger.oci.entries import (
    IMPLIED_DIR,
    Counts,
    DirMetadata,
    OwnerMode,
    Writer,
    link_target,
    meta_of,
)
from banger.oci.oci_limits import (
    Budget,
    LayerLabel,
    Limits,
    entry_text,
    invalid_layer,
    over_limit,
)
from banger.oci.pathres import DIR_FLAGS, Dir, Parts, Refused, Tree, split_name
from banger.oci.tarwalk import STREAM_ERRORS, Layer, LayerStream, describe

__all__ = [
    "DEFAULT_LIMITS",
    "FlattenStats",
    "Layer",
    "Limits",
    "OwnerMode",
    "flatten_layers",
    "no_space",
]

WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"
AUFS_META = b".wh..wh."
DEFAULT_LIMITS = Limits()


@dataclass
class FlattenStats:
    layers: int = 0
    entries: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    uncompressed_bytes: int = 0
    #: files, dirs, symlinks, hardlinks, devices, fifos created; ``skipped``: AUFS
    #: metadata, and (``OwnerMode.SKIP``) device nodes and xattrs outside ``user.``.
    counts: Counts = field(default_factory=Counts)


def flatten_layers(
    layers: Sequence[Layer],
    root: Path,
    *,
    limits: Limits = DEFAULT_LIMITS,
    owners: OwnerMode = OwnerMode.APPLY,
) -> FlattenStats:
    """Replay ``layers`` (oldest first) into ``root``, which must not exist yet.

    Blocking; run it in a worker thread or process (``banger.oci.ext4build`` runs it in
    a fakeroot session). On any error ``root`` is removed and a ``BangerError`` raised.
    """
    try:
        root.mkdir(mode=0o700)
    except FileExistsError:
        raise InvalidArgument(
            f"{root} already exists; flattening needs a fresh directory"
        ) from None
    try:
        root_fd = os.open(root, DIR_FLAGS)
        try:
            flattener = _Flattener(root_fd, limits, owners, root)
            try:
                for index, layer in enumerate(layers, 1):
                    label = LayerLabel(index, str(layer.diff_id or layer.path.name))
                    flattener.apply_layer(label, layer)
            finally:
                flattener.tree.close()
            flattener.finish()
        finally:
            os.close(root_fd)
    except BaseException:
        remove_tree(root)
        raise
    return flattener.stats


def _key(path: Parts) -> bytes:
    return b"/".join(path)


class _Flattener:
    def __init__(self, root_fd: int, limits: Limits, owners: OwnerMode, root: Path) -> None:
        self.root = root
        self.limits = limits
        self.owners = owners
        self.stats = FlattenStats()
        self.dirs = DirMetadata()
        self.tree = Tree(root_fd, max_link_depth=limits.max_link_depth, on_mkdir=self._implied)
        self.writer = Writer(owners, self.stats.counts, on_removed=self.tree.invalidate)
        self.stream_bytes = Budget(limits.max_total_bytes, "uncompressed bytes")
        self.content_bytes = Budget(limits.max_total_bytes, "bytes of file content")
        self.entry_count = Budget(limits.max_entries, "entries")
        self.touched: set[bytes] = set()
        self.dirs.record((), os.fstat(root_fd).st_ino, IMPLIED_DIR)

    def apply_layer(self, label: LayerLabel, layer: Layer) -> None:
        self.touched = set()
        entry: str | None = None
        try:
            with LayerStream(layer, label, self.limits, self.stream_bytes) as stream:
                for member in stream.members():
                    entry = member.name
                    self._entry(stream, member, label)
                entry = None
                stream.finish()
                self.stats.uncompressed_bytes += stream.uncompressed_bytes
        except Refused as exc:
            raise invalid_layer(label, str(exc), entry=entry) from exc
        except STREAM_ERRORS as exc:  # before OSError: BadGzipFile is one
            raise invalid_layer(label, describe(exc), entry=entry) from exc
        except OSError as exc:
            raise self._host_error(exc, f"{label}", entry) from exc
        self.stats.layers += 1

    def finish(self) -> None:
        try:
            self.dirs.apply(self.tree, self.owners)
        except OSError as exc:
            raise self._host_error(exc, "directory metadata", None) from exc

    def _entry(self, stream: LayerStream, member: tarfile.TarInfo, label: LayerLabel) -> None:
        self.entry_count.take(1, label, entry=member.name)
        self.stats.entries += 1
        if member.size < 0:  # CVE-2025-8194: a negative size walks tarfile backwards
            raise Refused(f"negative size {member.size}")
        if member.isreg():
            if member.size > self.limits.max_member_bytes:
                raise over_limit(
                    label,
                    f"a file larger than {self.limits.max_member_bytes} bytes",
                    entry=member.name,
                )
            self.content_bytes.take(member.size, label, entry=member.name)
        parts = split_name(member.name, max_path_bytes=self.limits.max_path_bytes)
        if not parts:
            self._root_entry(member)
            return
        for comp in parts[:-1]:
            if comp.startswith(AUFS_META):
                self.stats.counts.skipped += 1
                return
            if comp.startswith(WHITEOUT):
                raise Refused("a directory name starting with '.wh.' is reserved for whiteouts")
        if parts[-1].startswith(WHITEOUT):
            self._whiteout(parts)
        else:
            self._create(stream, member, parts)

    def _root_entry(self, member: tarfile.TarInfo) -> None:
        if not member.isdir():
            raise Refused("only a directory can stand for the image root")
        meta = meta_of(member)
        self.writer.dir_xattrs(self.tree.root_fd, meta)
        self.dirs.record((), os.fstat(self.tree.root_fd).st_ino, meta)

    def _create(self, stream: LayerStream, member: tarfile.TarInfo, parts: Parts) -> None:
        meta = meta_of(member)
        parent = self.tree.parent(parts, create=True)
        assert parent is not None
        self._touch(parent.path)
        name = parts[-1]
        if member.isdir():
            st = self.writer.directory(parent, name, meta)
            self.dirs.record((*parent.path, name), st.st_ino, meta)
        elif member.isreg():
            self.writer.regular(parent, name, stream.open_data(member), member.size, meta)
        elif member.issym():
            self.writer.symlink(parent, name, link_target(member), meta)
        elif member.islnk():
            self._hardlink(member, parent, name)
        elif member.isdev():
            self.writer.node(parent, name, member, meta)
        else:
            raise Refused(f"unsupported entry type {member.type!r}")
        self.touched.add(_key((*parent.path, name)))

    def _hardlink(self, member: tarfile.TarInfo, parent: Dir, name: bytes) -> None:
        # A hardlink names an archive path (like an entry name), not a guest path.
        target = split_name(member.linkname, max_path_bytes=self.limits.max_path_bytes)
        if not target:
            raise Refused("a hardlink to the image root")
        with self.tree.lookup_parent(target) as source:
            if source is None:
                raise Refused("the hardlink target does not exist")
            self.writer.hardlink(source, target[-1], parent, name)

    def _whiteout(self, parts: Parts) -> None:
        leaf = parts[-1]
        if leaf == OPAQUE:
            self._opaque(parts[:-1])
            return
        if leaf.startswith(AUFS_META):
            self.stats.counts.skipped += 1
            return
        name = leaf[len(WHITEOUT) :]
        if name in (b"", b".", b".."):
            raise Refused("invalid whiteout name")
        self.stats.whiteouts += 1
        parent = self.tree.parent(parts, create=False)
        if parent is not None:  # a missing (or dead-symlink) parent: nothing to remove
            self._remove_lower(parent, name)

    def _remove_lower(self, parent: Dir, name: bytes) -> None:
        path = (*parent.path, name)
        if _key(path) not in self.touched:
            self.writer.clear(parent, name, keep_dir=False)
            return
        # This layer made it (18), or a directory it also filled: only what lower layers
        # left inside goes, so the result does not depend on entry order.
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent.fd)
        except OSError:
            return
        try:
            self._clear_lower(Dir(fd, path))
        finally:
            os.close(fd)

    def _opaque(self, dir_parts: Parts) -> None:
        self.stats.opaque_dirs += 1
        with self.tree.directory(dir_parts, create=True) as found:
            assert found is not None
            self._touch(found.path)
            self._clear_lower(found)

    def _clear_lower(self, top: Dir) -> None:
        """Remove everything under ``top`` this layer did not touch (no recursion limit)."""
        stack = [Dir(os.dup(top.fd), top.path)]
        try:
            while stack:
                here = stack.pop()
                try:
                    with os.scandir(here.fd) as it:
                        names = [os.fsencode(e.name) for e in it]
                    for name in names:
                        child = (*here.path, name)
                        if _key(child) not in self.touched:
                            self.writer.clear(here, name, keep_dir=False)
                            continue
                        try:
                            stack.append(Dir(os.open(name, DIR_FLAGS, dir_fd=here.fd), child))
                        except OSError:
                            continue  # a file of this layer: kept
                finally:
                    os.close(here.fd)
        finally:
            for left in stack:
                os.close(left.fd)

    def _touch(self, path: Parts) -> None:
        for depth in range(len(path) + 1):
            self.touched.add(_key(path[:depth]))

    def _implied(self, path: Parts, st: os.stat_result) -> None:
        self.dirs.record(path, st.st_ino, IMPLIED_DIR)

    def _host_error(self, exc: OSError, where: str, entry: str | None) -> BangerError:
        at = f" at entry {entry_text(entry)}" if entry is not None else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return no_space(self.root.parent, doing=f"flattening {where}{at}")
        if exc.errno in (errno.EPERM, errno.EACCES) and self.owners is OwnerMode.APPLY:
            return CommandFailed(
                f"flattening {where}{at} was not permitted: {exc.strerror}",
                hint="owners, device nodes and security xattrs need fakeroot or root; "
                "banger runs the flattener inside fakeroot (is it installed?)",
            )
        return CommandFailed(f"flattening {where}{at} failed: {exc.strerror or exc}")


def no_space(path: Path, *, doing: str, needed_bytes: int | None = None) -> BangerError:
    """The host filesystem holding ``path`` is full (ADVERSARIAL 106) or out of inodes (108)."""
    try:
        vfs = os.statvfs(path)
        free, inodes = vfs.f_bavail * vfs.f_frsize, vfs.f_favail
    except OSError:
        free, inodes = -1, -1
    need = f"; about {needed_bytes >> 20} MiB needed" if needed_bytes else ""
    if inodes == 0:
        brief = f"the filesystem of {path} has no free inodes left ({doing})"
    else:
        brief = f"no space left on the filesystem of {path} ({doing}){need}"
    return NoSpace(
        brief,
        details=f"{free >> 20} MiB and {inodes} inodes free there" if free >= 0 else None,
        hint=f"free space on the filesystem of {path} and try again",
    )
