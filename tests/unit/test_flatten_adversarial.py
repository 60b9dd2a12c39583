"""Hostile layers (ADVERSARIAL group A): each case in one layer and split across two.

Every test flattens next to a *victim* directory (moby ``testBreakout`` style) and then
checks containment: the victim's names, content, modes, mtimes, link counts and inodes
are unchanged, nothing new appeared beside the root, no inode of the root is one of the
victim's, and no ``.wh.*`` name reached the output. ``@VICTIM@`` in an entry name or link
target stands for the victim's absolute host path. A refused archive must leave no root.

Absolute paths in these layers point at the victim, never at host system files: the
tests run as root, and a broken flattener must only be able to damage the sentinel.
"""

from __future__ import annotations

import copy
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.errors import BangerError, InvalidArgument, PayloadTooLarge
from banger.host.publish import remove_tree
from banger.oci.ext4build import tree_usage
from banger.oci.flatten import FlattenStats, Layer, Limits, OwnerMode, flatten_layers
from tests.layers import (
    Entry,
    base256,
    chardev,
    compress,
    directory,
    fifo,
    file,
    hardlink,
    name_from_bytes,
    patch_header,
    symlink,
    tar_bytes,
    whiteout,
    write_layer,
)

OWNERS = OwnerMode.APPLY if os.geteuid() == 0 else OwnerMode.SKIP
VICTIM = "@VICTIM@"
Group = list[Entry] | bytes


def _walk(top: Path) -> Iterator[tuple[str, os.stat_result]]:
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            yield str(path.relative_to(top)), path.lstat()


def _snapshot(victim: Path) -> dict[str, tuple[object, ...]]:
    found: dict[str, tuple[object, ...]] = {}
    top = victim.lstat()
    found["."] = (top.st_mode, top.st_ino, top.st_mtime_ns, top.st_nlink)
    for rel, st in _walk(victim):
        digest = (
            hashlib.sha256((victim / rel).read_bytes()).hexdigest()
            if stat.S_ISREG(st.st_mode)
            else ""
        )
        found[rel] = (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_nlink, digest)
    return found


@dataclass
class Arena:
    base: Path

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def victim(self) -> Path:
        return self.base / "victim"

    def setup(self) -> None:
        self.victim.mkdir()
        (self.victim / "hello").write_bytes(b"hello from the victim\n")
        (self.victim / "secret").write_bytes(b"secret\n")
        (self.victim / "secret").chmod(0o400)
        (self.victim / "sub").mkdir()
        (self.victim / "sub" / "deep").write_bytes(b"deep\n")
        (self.base / "layers").mkdir()
        self.before = _snapshot(self.victim)

    def bind(self, entry: Entry) -> Entry:
        info = copy.copy(entry.info)
        info.pax_headers = dict(entry.info.pax_headers)
        info.name = info.name.replace(VICTIM, str(self.victim))
        info.linkname = info.linkname.replace(VICTIM, str(self.victim))
        return Entry(info, entry.data)

    def flatten(self, groups: list[Group], *, limits: Limits | None = None) -> FlattenStats:
        layers = []
        for index, group in enumerate(groups, 1):
            raw = group if isinstance(group, bytes) else tar_bytes([self.bind(e) for e in group])
            layers.append(write_layer(self.base / "layers" / f"l{index}.tar", raw))
        return flatten_layers(layers, self.root, limits=limits or Limits(), owners=OWNERS)

    def inside(self, rel: str) -> Path:
        """Where the victim's absolute path ``+ rel`` lands in the root (as the guest sees it)."""
        return self.root / str(self.victim).lstrip("/") / rel

    def lower(self, layout: str) -> list[Layer]:
        """The harmless layer below the one under test in the two-layer variant."""
        if layout == "one_layer":
            return []
        return [write_layer(self.base / "layers" / "lower.tar", [file("ok", b"fine")])]

    def assert_contained(self) -> None:
        assert _snapshot(self.victim) == self.before, "the victim changed"
        assert {p.name for p in self.base.iterdir()} <= {"root", "victim", "layers"}
        if not self.root.exists():
            return
        victim_inodes = {st.st_ino for _, st in _walk(self.victim)} | {self.victim.lstat().st_ino}
        for rel, st in _walk(self.root):
            assert st.st_ino not in victim_inodes, f"{rel} shares an inode with the victim"
            assert not Path(rel).name.startswith(".wh."), f"{rel} is a whiteout file"


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[Arena]:
    found = Arena(tmp_path)
    found.setup()
    yield found
    found.assert_contained()


@pytest.fixture(params=["one_layer", "two_layers"])
def layout(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def groups_of(entries: list[Entry] | bytes, layout: str, split: int | None = None) -> list[Group]:
    """One layer, or two: the entries cut at ``split`` (a harmless layer first if empty)."""
    if layout == "one_layer":
        return [entries]
    if isinstance(entries, bytes):
        return [[file("filler", b"ok")], entries]
    cut = len(entries) // 2 if split is None else split
    first, second = entries[:cut], entries[cut:]
    return [first or [file("filler", b"ok")], second or [file("filler2", b"ok")]]


def refused(
    arena: Arena,
    entries: list[Entry] | bytes,
    layout: str,
    *,
    split: int | None = None,
    match: str = "",
    kind: type[BangerError] = InvalidArgument,
    limits: Limits | None = None,
) -> BangerError:
    with pytest.raises(kind, match=match) as caught:
        arena.flatten(groups_of(entries, layout, split), limits=limits)
    assert not arena.root.exists(), "a refused layer must leave no tree behind"
    return caught.value


# -- 1, 2: names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../victim/x", "/../victim/x", "..", "../../pwned", "a/../../victim/x", "./../victim/x"],
)
def test_a1_names_climbing_above_root_are_rejected_naming_the_entry(
    arena: Arena, layout: str, name: str
) -> None:
    entry = directory(name) if name == ".." else file(name, b"pwned")
    err = refused(
        arena, [file("ok", b"fine"), entry], layout, split=1, match="above the image root"
    )
    assert repr(name) in err.brief


@pytest.mark.parametrize("name", [f"{VICTIM}/a2-file", f"/{VICTIM}//a2-file"])
def test_a2_absolute_names_land_inside_the_root(arena: Arena, layout: str, name: str) -> None:
    arena.flatten(groups_of([file("ok"), file(name, b"inside")], layout))
    assert (arena.inside("a2-file")).read_bytes() == b"inside"


# -- 3, 4, 6: symlinked parents ---------------------------------------------------------


def test_a3_absolute_symlink_parent_resolves_inside_root(arena: Arena, layout: str) -> None:
    entries = [symlink("localetc", VICTIM), file("/localetc/unbroken", b"x")]
    arena.flatten(groups_of(entries, layout))
    assert arena.inside("unbroken").read_bytes() == b"x"
    assert os.readlink(arena.root / "localetc") == str(arena.victim)  # verbatim, for the guest


def test_a3_absolute_symlink_to_the_victim_path_stays_inside(arena: Arena, layout: str) -> None:
    arena.flatten(groups_of([symlink("lv", f"{VICTIM}/sub"), file("lv/pwned", b"x")], layout))
    assert arena.inside("sub/pwned").read_bytes() == b"x"


def test_a3_dotdot_in_names_is_applied_lexically(arena: Arena, layout: str) -> None:
    arena.flatten(
        groups_of([directory("dummy/"), file(f"/dummy/..{VICTIM}/a3-dummy", b"x")], layout)
    )
    assert arena.inside("a3-dummy").exists()


def test_a3_chained_absolute_and_relative_symlinks(arena: Arena, layout: str) -> None:
    entries = [
        symlink("a", "/b"),
        symlink("b", "c"),
        symlink("c", VICTIM),
        directory("d1/"),
        directory("d2/"),
        symlink("d1/l1", "../d2"),
        symlink("d2/l2", "../etc"),
        file("a/a3-chain", b"1"),
        file("d1/l1/l2/a3-rel", b"2"),
    ]
    arena.flatten(groups_of(entries, layout, split=7))
    assert arena.inside("a3-chain").read_bytes() == b"1"
    assert (arena.root / "etc/a3-rel").read_bytes() == b"2"


@pytest.mark.parametrize(
    "entries",
    [
        [symlink("loophole", "../victim"), file("loophole/file", b"x")],
        [
            directory("dir/"),
            symlink("dir/loophole", "../../victim"),
            file("dir/loophole/newdir/newfile"),
        ],
        [symlink("up", "../../.."), file("up/victim/x")],
    ],
    ids=["loophole", "nested-loophole", "up-and-out"],
)
def test_a4_relative_symlink_out_of_root_is_refused(
    arena: Arena, layout: str, entries: list[Entry]
) -> None:
    refused(arena, entries, layout, split=len(entries) - 1, match="leaves the image root")


def test_a6_relative_escape_before_absolute_symlink_is_refused(arena: Arena, layout: str) -> None:
    entries = [
        symlink("escape", ".."),
        symlink("absolute", VICTIM),
        file("escape/absolute/file", b"x"),
    ]
    err = refused(arena, entries, layout, split=2, match="leaves the image root")
    assert "escape/absolute/file" in err.brief


# -- 8-10, 21: hardlinks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "target", "match"),
    [
        ([], "../victim/hello", "above the image root"),
        ([], "/../victim/hello", "above the image root"),
        ([], "../../../../../victim/hello", "above the image root"),
        (
            [directory("breakouts/"), symlink("breakouts/d1", "../../etc")],
            "/breakouts/d1/passwd",
            "leaves the image root",
        ),
        ([], f"{VICTIM}/hello", "does not exist"),
    ],
    ids=["relative", "absolute-dotdot", "relative-long", "via-symlinked-dir", "host-absolute"],
)
def test_a8_hardlink_out_of_root_is_refused(
    arena: Arena, layout: str, setup: list[Entry], target: str, match: str
) -> None:
    refused(arena, [*setup, hardlink("h", target)], layout, split=len(setup), match=match)


def test_a8_hardlink_through_absolute_symlinked_dir_links_inside(arena: Arena, layout: str) -> None:
    entries = [
        file(f"{VICTIM}/hello", b"the root's own"),
        directory("breakouts/"),
        symlink("breakouts/d2", VICTIM),
        hardlink("h", "/breakouts/d2/hello"),
        symlink("lnk", VICTIM),
        hardlink("lnk/h2", "breakouts/d2/hello"),
    ]
    arena.flatten(groups_of(entries, layout, split=3))
    hello = arena.inside("hello").stat()
    assert (arena.root / "h").stat().st_ino == hello.st_ino
    assert arena.inside("h2").stat().st_ino == hello.st_ino


def test_a9_hardlink_then_overwrite_unlinks_first(arena: Arena, layout: str) -> None:
    entries = [file("x", b"orig"), hardlink("flaglink", "x"), file("flaglink", b"new")]
    arena.flatten(groups_of(entries, layout, split=2))
    assert (arena.root / "x").read_bytes() == b"orig"
    assert (arena.root / "flaglink").read_bytes() == b"new"
    assert (arena.root / "x").stat().st_ino != (arena.root / "flaglink").stat().st_ino


def test_a9_hardlink_to_victim_then_file_is_refused(arena: Arena, layout: str) -> None:
    entries = [hardlink("loophole-victim", "../victim"), file("loophole-victim", b"x")]
    refused(arena, entries, layout, split=1, match="above the image root")


def test_a9_hardlink_to_a_directory_is_refused(arena: Arena, layout: str) -> None:
    refused(
        arena,
        [directory("d/"), hardlink("h", "d"), file("h", b"x")],
        layout,
        split=1,
        match="is a directory",
    )


def test_a10_hardlink_to_symlink_links_the_symlink_itself(arena: Arena, layout: str) -> None:
    entries = [
        symlink("localpasswd", f"{VICTIM}/secret"),
        hardlink("localhardlink", "localpasswd", mode=0o777),
        symlink("lp", f"{VICTIM}/a10"),  # link made before its target exists
        hardlink("hl", "lp"),
        file(f"{VICTIM}/a10", b"later"),
    ]
    arena.flatten(groups_of(entries, layout, split=1))
    for link, sym in (("localhardlink", "localpasswd"), ("hl", "lp")):
        st = (arena.root / link).lstat()
        assert stat.S_ISLNK(st.st_mode)
        assert st.st_ino == (arena.root / sym).lstat().st_ino
    assert arena.inside("a10").stat().st_nlink == 1
    assert stat.S_IMODE((arena.victim / "secret").stat().st_mode) == 0o400


# -- 13: type changes -------------------------------------------------------------------


def test_a13_symlink_over_directory_replaces_it(arena: Arena, layout: str) -> None:
    entries = [directory("d/"), file("d/f", b"old"), symlink("d", VICTIM), file("d/new", b"x")]
    arena.flatten(groups_of(entries, layout, split=2))
    assert (arena.root / "d").is_symlink()
    assert (arena.root / str(arena.victim).lstrip("/") / "new").exists()


def test_a13_relative_symlink_over_directory_then_write_is_refused(
    arena: Arena, layout: str
) -> None:
    entries = [directory("d/"), file("d/f"), symlink("d", "../victim"), file("d/new", b"x")]
    refused(arena, entries, layout, split=2, match="leaves the image root")


def test_a13_directory_over_symlink_replaces_the_link(arena: Arena, layout: str) -> None:
    entries = [
        symlink("x", VICTIM),
        directory("x/"),
        file("x/f", b"inside"),
        symlink("y", "../victim"),
        directory("y/"),
        file("y/hello", b"mine"),
        hardlink("z", "y/hello"),
    ]
    arena.flatten(groups_of(entries, layout, split=1))
    for name in ("x", "y"):
        assert not (arena.root / name).is_symlink() and (arena.root / name).is_dir()
    assert (arena.root / "x/f").read_bytes() == b"inside"
    assert (arena.root / "z").stat().st_ino == (arena.root / "y/hello").stat().st_ino


# -- 14, 15, 19: whiteouts --------------------------------------------------------------


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "etc/.wh.."])
def test_a14_invalid_whiteout_names_are_refused(arena: Arena, layout: str, name: str) -> None:
    refused(arena, [directory("etc/"), file(name)], layout, split=1, match="invalid whiteout")


def test_a15_whiteout_through_absolute_symlink_stays_inside(arena: Arena, layout: str) -> None:
    entries = [file(f"{VICTIM}/hello", b"x"), symlink("localv", VICTIM), whiteout("localv/hello")]
    arena.flatten(groups_of(entries, layout, split=2))
    # One layer: a whiteout only hides lower layers (18), so the file stays.
    assert arena.inside("hello").exists() == (layout == "one_layer")


def test_a15_whiteout_of_a_symlink_removes_the_link_only(arena: Arena, layout: str) -> None:
    arena.flatten(groups_of([symlink("lnk", f"{VICTIM}/hello"), whiteout("lnk")], layout, split=1))
    assert (arena.root / "lnk").is_symlink() == (layout == "one_layer")


@pytest.mark.parametrize(
    "entries",
    [
        [symlink("dead", f"{VICTIM}/nonexistent"), whiteout("dead/x")],
        [symlink("vd", VICTIM), whiteout("vd/hello")],
    ],
    ids=["dead-parent", "host-absolute-parent"],
)
def test_a15_whiteout_under_missing_parent_is_a_no_op(
    arena: Arena, layout: str, entries: list[Entry]
) -> None:
    arena.flatten(groups_of(entries, layout, split=1))
    assert not arena.inside("nonexistent").exists()


def test_a15_whiteout_through_relative_escape_is_refused(arena: Arena, layout: str) -> None:
    refused(
        arena,
        [symlink("up", ".."), whiteout("up/victim")],
        layout,
        split=1,
        match="leaves the image root",
    )


def test_a19_directory_named_like_a_whiteout_is_refused(arena: Arena, layout: str) -> None:
    # containerd keeps it literally; banger refuses: such a name cannot come from overlayfs
    # and would put a .wh. entry into the image (19).
    refused(
        arena,
        [file("ok"), file(".wh.etc/somefile", b"x")],
        layout,
        split=1,
        match="reserved for whiteouts",
    )


def test_a19_no_whiteout_file_reaches_the_tree(arena: Arena, layout: str) -> None:
    entries = [
        file("foo", b"1"),
        whiteout("foo"),
        whiteout("never-existed"),
        file(".wh..wh.plnk/123.456", b"aufs"),
    ]
    stats = arena.flatten(groups_of(entries, layout, split=1))
    assert stats.counts.skipped == 1  # the AUFS hardlink-dir entry
    names = {rel for rel, _ in _walk(arena.root)}
    assert all(".wh." not in rel for rel in names)
    assert (arena.root / "foo").exists() == (layout == "one_layer")


# -- 21, 22: implied parents ------------------------------------------------------------


def test_a21_absolute_hardlink_and_implied_parents(arena: Arena, layout: str) -> None:
    entries = [
        file("usr/bin/perlbug", b"#!perl"),
        hardlink("usr/bin/perlthanks", "/usr/bin/perlbug"),
        hardlink("x/y/z/link", "usr/bin/perlbug"),
    ]
    arena.flatten(groups_of(entries, layout, split=1))
    ino = (arena.root / "usr/bin/perlbug").stat().st_ino
    assert (arena.root / "usr/bin/perlthanks").stat().st_ino == ino
    assert (arena.root / "x/y/z/link").stat().st_ino == ino
    assert (arena.root / "usr/bin/perlbug").stat().st_nlink == 3


@pytest.mark.parametrize("target", ["usr/lib", f"{VICTIM}/usr/lib"], ids=["relative", "absolute"])
def test_a22_implied_parents_through_lower_symlink(arena: Arena, layout: str, target: str) -> None:
    entries = [symlink("lib", target), file("lib/x", b"x"), hardlink("libx-link", "lib/x")]
    arena.flatten(groups_of(entries, layout, split=1))
    assert (arena.root / "lib").is_symlink()
    x = arena.root / "usr/lib/x" if target == "usr/lib" else arena.inside("usr/lib/x")
    assert x.read_bytes() == b"x"
    assert (arena.root / "libx-link").stat().st_ino == x.stat().st_ino


# -- 24: devices and FIFOs --------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "value"),
    [
        (329, base256(-1)),
        (329, base256(2**32)),
        (337, base256(2**40)),
        (329, b"0010000\0"),
        (337, b"4000000\0"),
    ],
    ids=["negative-major", "major-over-uint32", "minor-over-uint32", "major-4096", "minor-2^20"],
)
def test_a24_bad_device_numbers_are_refused(
    arena: Arena, layout: str, offset: int, value: bytes
) -> None:
    raw = patch_header(tar_bytes([chardev("dev/bad", 1, 3)]), 0, offset, value)
    refused(arena, raw, layout, match="out of range")


@pytest.mark.timeout(30)
def test_a24_fifo_and_devices_are_created_never_opened(arena: Arena, layout: str) -> None:
    entries = [fifo("run/p"), fifo("run/q"), chardev("dev/null", 1, 3), file("run/q", b"replaced")]
    stats = arena.flatten(groups_of(entries, layout, split=3))
    assert stat.S_ISFIFO((arena.root / "run/p").lstat().st_mode)
    assert (arena.root / "run/q").read_bytes() == b"replaced"
    dev = arena.root / "dev/null"
    if OWNERS is OwnerMode.APPLY:
        st = dev.lstat()
        assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    else:
        assert not dev.exists() and stats.counts.skipped == 1


# -- 26: odd headers and names ----------------------------------------------------------


def test_a26_pax_global_header_creates_nothing(arena: Arena, layout: str) -> None:
    glob = tarfile.TarInfo("foo/bar")
    glob.type = tarfile.XGLTYPE
    payload = b"17 comment=hello\n"
    glob.size = len(payload)
    entries = [Entry(glob, payload), file("real", b"x")]
    arena.flatten(groups_of(entries, layout, split=0))
    assert not (arena.root / "foo").exists()
    assert (arena.root / "real").exists()


def test_a26_gnu_long_names_and_odd_bytes(arena: Arena, layout: str) -> None:
    long_dir, long_file = "d" * 200, "f" * 200
    odd = [name_from_bytes(b"caf\xe9"), "new\nline", "tab\tand space"]
    entries = [
        file(f"{long_dir}/{long_file}", b"long"),
        symlink("longlink", "/" + "t" * 300),
        *(file(name, name.encode("utf-8", "surrogateescape")) for name in odd),
    ]
    raw = tar_bytes(entries, fmt=tarfile.GNU_FORMAT)
    layers = groups_of(raw, layout)
    arena.flatten(layers)
    assert (arena.root / long_dir / long_file).read_bytes() == b"long"
    assert os.readlink(arena.root / "longlink") == "/" + "t" * 300
    listing = set(os.listdir(os.fsencode(arena.root)))
    assert {b"caf\xe9", b"new\nline", b"tab\tand space"} <= listing


# -- 27, 28, 29: bombs, damage, digests -------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (tar_bytes([file("zeros", bytes(8 << 20))]), "bytes of file content"),
        (tar_bytes([file("small", b"x")]) + bytes(8 << 20), "uncompressed bytes"),
    ],
    ids=["big-file", "zero-padding"],
)
@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a27_decompression_bomb_stops_at_the_byte_caps(
    arena: Arena, layout: str, compression: str, raw: bytes, match: str
) -> None:
    assert len(compress(raw, compression)) < 64 << 10
    path = arena.base / "layers" / "bomb"
    bomb = write_layer(path, raw, compression=compression, with_diff_id=False)
    with pytest.raises(PayloadTooLarge, match=match):
        flatten_layers(
            [*arena.lower(layout), bomb],
            arena.root,
            limits=Limits(max_total_bytes=1 << 20),
            owners=OWNERS,
        )
    assert not arena.root.exists()


def test_a27_many_empty_files_stop_at_the_entry_cap(arena: Arena, layout: str) -> None:
    entries = [file(f"f{i}") for i in range(3000)]
    refused(
        arena,
        entries,
        layout,
        kind=PayloadTooLarge,
        match="more than 1000 entries",
        limits=Limits(max_entries=1000),
    )


@pytest.mark.parametrize(
    ("entries", "limits", "match"),
    [
        ([file("big", bytes(2 << 20))], Limits(max_member_bytes=1 << 20), "larger than"),
        (
            [file("p", b"x", xattrs={"user.pad": "x" * (2 << 20)})],
            Limits(max_header_bytes=64 << 10),
            "headers",
        ),
    ],
    ids=["member-size", "pax-header"],
)
def test_a27_per_entry_caps(
    arena: Arena, layout: str, entries: list[Entry], limits: Limits, match: str
) -> None:
    refused(arena, entries, layout, split=0, kind=PayloadTooLarge, match=match, limits=limits)


def test_a27_negative_size_does_not_loop(arena: Arena, layout: str) -> None:
    raw = patch_header(
        tar_bytes([file("a", b"x" * 1024), file("b", b"y")]), 0, 124, base256(-1024, 12)
    )
    refused(arena, raw, layout, match="negative size")


@pytest.mark.parametrize(
    "entries",
    [
        [symlink("a", "b"), symlink("b", "a"), file("a/x")],
        [file("d/" * 2100 + "x")],
    ],
    ids=["symlink-loop", "path-too-long"],
)
def test_a27_link_depth_and_path_length(arena: Arena, layout: str, entries: list[Entry]) -> None:
    refused(arena, entries, layout, split=len(entries) - 1, match="symlinks on the way|longer than")


def _damaged(kind: str) -> tuple[bytes, str]:
    good = tar_bytes([file("a", b"a" * 3000), file("b", b"b" * 3000)])
    gz = compress(good, "gzip")
    if kind == "cut-mid-data":
        return good[:2048], "none"
    if kind == "cut-at-header":
        return good[: 512 + 3072], "none"  # header and data of "a", no end-of-archive block
    if kind == "bad-checksum-mid-archive":
        return good[:3584] + b"\xff" * 512 + good[4096:], "none"
    if kind == "garbage-after-end":
        return good + b"GARBAGE!" * 64, "none"
    if kind == "corrupt-gzip":
        return gz[:40] + bytes(b ^ 0x55 for b in gz[40:80]) + gz[80:], "gzip"
    if kind == "cut-gzip":
        return gz[: len(gz) // 2], "gzip"
    if kind == "garbage-after-gzip":
        return gz + b"not gzip", "gzip"
    zs = compress(good, "zstd")
    return zs[: len(zs) - 8], "zstd"


@pytest.mark.parametrize(
    "kind",
    [
        "cut-mid-data",
        "cut-at-header",
        "bad-checksum-mid-archive",
        "garbage-after-end",
        "corrupt-gzip",
        "cut-gzip",
        "garbage-after-gzip",
        "cut-zstd",
    ],
)
def test_a28_damaged_layers_are_refused(arena: Arena, layout: str, kind: str) -> None:
    raw, compression = _damaged(kind)
    bad = write_layer(
        arena.base / "layers" / "bad", raw, media_type=_media(compression), with_diff_id=False
    )
    with pytest.raises(InvalidArgument, match="not a valid image layer"):
        flatten_layers([*arena.lower(layout), bad], arena.root, owners=OWNERS)
    assert not arena.root.exists()


def _media(compression: str) -> str:
    suffix = {"none": "", "gzip": "+gzip", "zstd": "+zstd"}[compression]
    return f"application/vnd.oci.image.layer.v1.tar{suffix}"


def test_a29_diff_id_mismatch_is_refused(arena: Arena, layout: str) -> None:
    good = write_layer(arena.base / "layers" / "l.tar", [file("a", b"1")], compression="gzip")
    other = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    lying = Layer(good.path, good.media_type, other)
    with pytest.raises(InvalidArgument, match=r"hashes to sha256:.*rootfs.diff_ids"):
        flatten_layers([*arena.lower(layout), lying], arena.root, owners=OWNERS)
    assert not arena.root.exists()


# -- 30: walks after extraction ---------------------------------------------------------


def test_a30_metadata_sizing_and_removal_never_follow_symlinks(arena: Arena, layout: str) -> None:
    (arena.victim / "big").write_bytes(os.urandom(1 << 20))
    arena.before = _snapshot(arena.victim)
    entries = [
        directory("d/", mode=0o777),  # its mode is applied last: must not reach the victim
        directory("e/", mode=0o700),
        symlink("d", VICTIM),
        symlink("e", "../victim"),
        symlink("abs", VICTIM),
    ]
    arena.flatten(groups_of(entries, layout, split=2))
    assert (arena.root / "d").is_symlink()
    usage = tree_usage(arena.root)
    assert usage.bytes < 1 << 20  # the victim's 1 MiB file is not counted
    assert usage.inodes == 4
    remove_tree(arena.root)
    assert not arena.root.exists()
