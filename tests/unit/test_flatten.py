"""Layer flattening, the positive semantics (SPEC §5; ADVERSARIAL 13, 16-18, 25, 27, 29).

Layers are built in memory (``tests.layers``) and flattened into ``tmp_path/root``. As
root the flattener runs with ``OwnerMode.APPLY`` (real chown/mknod, what fakeroot
records in production); as an ordinary user with ``SKIP``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zstandard

from banger.errors import CommandFailed, InvalidArgument, PayloadTooLarge
from banger.oci.flatten import FlattenStats, Layer, Limits, OwnerMode, flatten_layers
from tests.layers import (
    MEDIA,
    MTIME,
    Entry,
    chardev,
    compress,
    diff_id,
    directory,
    fifo,
    file,
    hardlink,
    layers_of,
    opaque,
    symlink,
    tar_bytes,
    whiteout,
    write_layer,
)

IS_ROOT = os.geteuid() == 0
OWNERS = OwnerMode.APPLY if IS_ROOT else OwnerMode.SKIP
needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="real chown/mknod need root (fakeroot: component tests)"
)
CAP_NET_RAW = "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12  # vfs_cap_data v2, permitted=NET_RAW


def flatten(
    tmp: Path, *groups: list[Entry], compression: str = "none", **kw: object
) -> FlattenStats:
    layers = layers_of(tmp / "layers", list(groups), compression=compression)
    return flatten_layers(layers, tmp / "root", owners=kw.pop("owners", OWNERS), **kw)  # type: ignore[arg-type]


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` → a short description (kind and content or target)."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = path.read_bytes().decode()
    return found


# -- whiteouts and opaque directories ----------------------------------------------------


def test_whiteouts_remove_lower_files_and_directories(tmp_path: Path) -> None:
    flatten(
        tmp_path,
        [file("a/foo", b"1"), file("a/keep", b"2"), file("d/x/y", b"3"), file("top", b"4")],
        [whiteout("a/foo"), whiteout("d"), whiteout("top"), whiteout("not/there")],
    )
    assert tree(tmp_path / "root") == {"a": "dir", "a/keep": "2"}


@pytest.mark.parametrize("marker_first", [True, False], ids=["marker-first", "marker-last"])
def test_a16_opaque_directory_in_both_orders(tmp_path: Path, marker_first: bool) -> None:
    upper = [file("a/b/c/foo", b"new")]
    upper = [opaque("a"), *upper] if marker_first else [*upper, opaque("a")]
    stats = flatten(
        tmp_path, [file("a/b/foo", b"old"), file("a/bar", b"old"), file("z", b"z")], upper
    )
    assert tree(tmp_path / "root") == {
        "a": "dir",
        "a/b": "dir",
        "a/b/c": "dir",
        "a/b/c/foo": "new",
        "z": "z",
    }
    assert stats.opaque_dirs == 1


def test_a17_whiteout_then_recreate(tmp_path: Path) -> None:
    flatten(
        tmp_path, [file("a/foo", b"f"), file("b/bar", b"b")], [whiteout("a")], [file("a/baz", b"z")]
    )
    assert tree(tmp_path / "root") == {"a": "dir", "a/baz": "z", "b": "dir", "b/bar": "b"}


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_a18_file_and_its_whiteout_in_one_layer_keep_the_file(
    tmp_path: Path, whiteout_first: bool
) -> None:
    pair = [whiteout("f"), file("f", b"mine")]
    flatten(
        tmp_path, [file("f", b"lower"), file("g", b"g")], pair if whiteout_first else pair[::-1]
    )
    assert tree(tmp_path / "root") == {"f": "mine", "g": "g"}


def test_a18_whiteout_in_a_later_layer_removes_the_file(tmp_path: Path) -> None:
    flatten(tmp_path, [file("f", b"mine")], [whiteout("f")])
    assert tree(tmp_path / "root") == {}


def test_whiteout_of_a_directory_this_layer_filled_keeps_only_this_layer(tmp_path: Path) -> None:
    flatten(tmp_path, [file("a/old", b"o")], [file("a/new", b"n"), whiteout("a")])
    assert tree(tmp_path / "root") == {"a": "dir", "a/new": "n"}


# -- replacing entries ----------------------------------------------------------------------


def test_a13_symlink_usr_bin_env_replaced_by_a_file(tmp_path: Path) -> None:
    # A relative target: were the file written through the link, it would hit the
    # tree's busybox (checked below), not the host's.
    flatten(
        tmp_path,
        [file("bin/busybox", b"bb", mode=0o755), symlink("usr/bin/env", "../../bin/busybox")],
        [file("usr/bin/env", b"#!real env", mode=0o755)],
    )
    env = tmp_path / "root/usr/bin/env"
    assert not env.is_symlink() and env.read_bytes() == b"#!real env"
    assert (tmp_path / "root/bin/busybox").read_bytes() == b"bb"


def test_type_changes_in_both_directions(tmp_path: Path) -> None:
    flatten(
        tmp_path,
        [file("d/inner", b"x"), file("f", b"file")],
        [file("d", b"now a file"), directory("f/"), file("f/child", b"c")],
    )
    assert tree(tmp_path / "root") == {"d": "now a file", "f": "dir", "f/child": "c"}


def test_parent_replaced_mid_layer_is_resolved_again(tmp_path: Path) -> None:
    # The flattener keeps the last parent directory open. Here "d/d/" resolves its parent
    # "d" through the symlink d -> . (the root) and then replaces that very symlink with a
    # directory, so the next "d/x" must land in the new directory, not in the root.
    flatten(tmp_path, [symlink("d", "."), file("d/a", b"a"), directory("d/d/"), file("d/x", b"x")])
    assert tree(tmp_path / "root") == {"a": "a", "d": "dir", "d/x": "x"}


def test_directory_entry_over_directory_merges_and_takes_new_mode(tmp_path: Path) -> None:
    flatten(
        tmp_path, [directory("d/", mode=0o755), file("d/a", b"a")], [directory("d/", mode=0o750)]
    )
    assert tree(tmp_path / "root") == {"d": "dir", "d/a": "a"}
    assert stat.S_IMODE((tmp_path / "root/d").stat().st_mode) == 0o750


def test_hardlinks_across_layers_share_the_inode(tmp_path: Path) -> None:
    flatten(
        tmp_path,
        [file("usr/bin/a", b"A")],
        [hardlink("usr/bin/b", "usr/bin/a")],
        [file("usr/bin/a", b"new A")],  # replacing one name leaves the other's inode alone
    )
    root = tmp_path / "root"
    assert (root / "usr/bin/b").read_bytes() == b"A"
    assert (root / "usr/bin/b").stat().st_nlink == 1


def test_hardlink_count_two_across_layers(tmp_path: Path) -> None:
    flatten(tmp_path, [file("x", b"1")], [hardlink("y", "/x")])
    assert (tmp_path / "root/x").stat().st_nlink == 2
    assert (tmp_path / "root/x").stat().st_ino == (tmp_path / "root/y").stat().st_ino


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([hardlink("h", "missing")], "does not exist"),
        ([hardlink("h", "/")], "image root"),
        ([file("x"), symlink("x/y", "z")], "not a directory"),
        ([file(".", b"x")], "only a directory"),
    ],
)
def test_refused_entries(tmp_path: Path, entries: list[Entry], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        flatten(tmp_path, entries)
    assert not (tmp_path / "root").exists()


def test_unknown_entry_type_is_refused(tmp_path: Path) -> None:
    odd = file("volume-label")
    odd.info.type = b"V"  # a GNU volume header
    with pytest.raises(InvalidArgument, match="unsupported entry type"):
        flatten(tmp_path, [odd])


# -- compression, digests, media types ---------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd", "docker"])
def test_every_compression_gives_the_same_tree(tmp_path: Path, compression: str) -> None:
    flatten(
        tmp_path,
        [file("a", b"1" * 5000), symlink("l", "a")],
        [file("b", b"2")],
        compression=compression,
    )
    assert tree(tmp_path / "root") == {"a": "1" * 5000, "l": "-> a", "b": "2"}


def test_media_type_that_lies_is_overruled_by_magic_bytes(tmp_path: Path) -> None:
    raw = tar_bytes([file("a", b"1")])
    lying_gzip = write_layer(tmp_path / "l1", raw, compression="gzip", media_type=MEDIA["none"])
    lying_plain = write_layer(
        tmp_path / "l2", tar_bytes([file("b", b"2")]), media_type=MEDIA["zstd"]
    )
    flatten_layers([lying_gzip, lying_plain], tmp_path / "root", owners=OWNERS)
    assert tree(tmp_path / "root") == {"a": "1", "b": "2"}


def test_unsupported_media_type(tmp_path: Path) -> None:
    layer = write_layer(
        tmp_path / "l", [file("a")], media_type="application/vnd.oci.image.layer.v1.tar+bzip2"
    )
    with pytest.raises(InvalidArgument, match="unsupported layer media type"):
        flatten_layers([layer], tmp_path / "root", owners=OWNERS)


def test_zstd_layer_of_several_frames(tmp_path: Path) -> None:
    raw = tar_bytes([file("a", os.urandom(3000)), file("b", b"b")])
    cctx = zstandard.ZstdCompressor()
    path = tmp_path / "l"
    path.write_bytes(cctx.compress(raw[:2048]) + cctx.compress(raw[2048:]))
    flatten_layers([Layer(path, MEDIA["zstd"], diff_id(raw))], tmp_path / "root", owners=OWNERS)
    assert (tmp_path / "root/b").read_bytes() == b"b"


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_a29_diff_id_is_the_uncompressed_digest(tmp_path: Path, compression: str) -> None:
    good = write_layer(tmp_path / "l", [file("a", b"1")], compression=compression)
    assert good.diff_id == diff_id(tar_bytes([file("a", b"1")]))
    flatten_layers([good], tmp_path / "root", owners=OWNERS)
    wrong = Layer(good.path, good.media_type, diff_id(compress(b"x", "none")))
    with pytest.raises(InvalidArgument, match=r"rootfs\.diff_ids"):
        flatten_layers([wrong], tmp_path / "root2", owners=OWNERS)


def test_malformed_diff_id_is_refused(tmp_path: Path) -> None:
    layer = write_layer(tmp_path / "l", [file("a")])
    with pytest.raises(InvalidArgument, match="invalid diff_id"):
        flatten_layers(
            [Layer(layer.path, layer.media_type, "sha256:ABC")], tmp_path / "root", owners=OWNERS
        )


@pytest.mark.parametrize(
    "data", [b"", compress(b"", "gzip")], ids=["empty-file", "gzip-of-nothing"]
)
def test_empty_layer_is_empty(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "l"
    path.write_bytes(data)
    flatten_layers([Layer(path, MEDIA["gzip"], diff_id(b""))], tmp_path / "root", owners=OWNERS)
    assert tree(tmp_path / "root") == {}


def test_missing_layer_file_is_a_host_error(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match="No such file"):
        flatten_layers([Layer(tmp_path / "gone", MEDIA["none"])], tmp_path / "root", owners=OWNERS)


def test_root_must_not_exist(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    with pytest.raises(InvalidArgument, match="already exists"):
        flatten(tmp_path, [file("a")])
    assert (tmp_path / "root").is_dir()  # not ours: left alone


# -- metadata (25) --------------------------------------------------------------------------


def test_a25_modes_and_mtimes(tmp_path: Path) -> None:
    flatten(
        tmp_path,
        [
            file("usr/bin/su", b"su", mode=0o4755),
            file("usr/bin/wall", b"w", mode=0o2755),
            directory("tmp/", mode=0o1777),
            file("etc/shadow", b"s", mode=0o000),
            directory("ro/", mode=0o555, mtime=1_000_000_000),
            file("ro/inside", b"i", mtime=1_200_000_000.5),
            symlink("link", "usr/bin/su"),
        ],
    )
    root = tmp_path / "root"

    def mode(p: str) -> int:
        return stat.S_IMODE((root / p).lstat().st_mode)

    assert (mode("usr/bin/su"), mode("usr/bin/wall"), mode("tmp"), mode("etc/shadow")) == (
        0o4755,
        0o2755,
        0o1777,
        0o000,
    )
    assert mode("ro") == (0o555 if IS_ROOT else 0o755)  # SKIP keeps u+rwx to stay removable
    assert (root / "ro").stat().st_mtime == 1_000_000_000  # set after its child was written
    assert (root / "ro/inside").stat().st_mtime_ns == 1_200_000_000_500_000_000
    assert (root / "link").lstat().st_mtime == MTIME
    assert mode("usr") == 0o755  # implied parents


@needs_root
def test_a25_owners_devices_and_security_xattrs(tmp_path: Path) -> None:
    stats = flatten(
        tmp_path,
        [
            directory("./", mode=0o755),
            directory("home/u/", mode=0o700, uid=1000, gid=1000),
            file("home/u/f", b"x", uid=1000, gid=1001),
            symlink("home/u/l", "f", uid=1000, gid=1000),
            file(
                "usr/bin/ping",
                b"p",
                mode=0o4755,
                xattrs={"security.capability": CAP_NET_RAW, "user.note": "hi"},
            ),
            chardev("dev/console", 5, 1, mode=0o600),
            fifo("run/initctl", mode=0o600),
            hardlink("dev/console2", "dev/console"),
        ],
    )
    root = tmp_path / "root"
    assert (root / "home/u").stat()[4:6] == (1000, 1000)
    assert (root / "home/u/f").stat()[4:6] == (1000, 1001)
    assert (root / "home/u/l").lstat()[4:6] == (1000, 1000)
    ping = root / "usr/bin/ping"
    assert stat.S_IMODE(ping.stat().st_mode) == 0o4755
    assert os.getxattr(ping, "security.capability") == CAP_NET_RAW.encode("latin-1")
    assert os.getxattr(ping, "user.note") == b"hi"
    console = (root / "dev/console").lstat()
    assert (
        stat.S_ISCHR(console.st_mode) and os.major(console.st_rdev) == 5 and console.st_nlink == 2
    )
    assert stat.S_ISFIFO((root / "run/initctl").lstat().st_mode)
    assert stats.counts.devices == 1 and stats.counts.fifos == 1 and stats.counts.hardlinks == 1


def test_skip_mode_counts_what_it_cannot_do(tmp_path: Path) -> None:
    stats = flatten(
        tmp_path,
        [
            file("f", b"x", uid=1000, xattrs={"user.ok": "1", "trusted.no": "2"}),
            chardev("dev/null", 1, 3),
        ],
        owners=OwnerMode.SKIP,
    )
    assert not (tmp_path / "root/dev/null").exists()
    assert os.getxattr(tmp_path / "root/f", "user.ok") == b"1"
    assert stats.counts.skipped == 2  # the device node and the trusted.* xattr


def test_root_entry_sets_the_root_directory(tmp_path: Path) -> None:
    flatten(tmp_path, [directory("./", mode=0o750, mtime=1_100_000_000), file("a")])
    st = (tmp_path / "root").stat()
    assert stat.S_IMODE(st.st_mode) == (0o750 if IS_ROOT else 0o750 | 0o700)
    assert st.st_mtime == 1_100_000_000


def test_zero_runs_become_holes(tmp_path: Path) -> None:
    flatten(tmp_path, [file("sparse", bytes(4 << 20) + b"tail")])
    st = (tmp_path / "root/sparse").stat()
    assert st.st_size == (4 << 20) + 4
    assert st.st_blocks * 512 < 1 << 20


def test_stats(tmp_path: Path) -> None:
    stats = flatten(
        tmp_path,
        [directory("d/"), file("d/f", b"12345"), symlink("s", "d"), hardlink("h", "d/f")],
        [whiteout("s"), opaque("d")],
    )
    counts = stats.counts
    assert (stats.layers, stats.entries, stats.whiteouts, stats.opaque_dirs) == (2, 6, 1, 1)
    assert (counts.files, counts.dirs, counts.symlinks, counts.hardlinks) == (1, 1, 1, 1)
    assert stats.uncompressed_bytes == 2 * 10240


# -- caps (27) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        (Limits(max_entries=3), "more than 3 entries"),
        (Limits(max_member_bytes=100), "larger than 100 bytes"),
        (Limits(max_total_bytes=10000), "more than 10000"),
        (Limits(max_path_bytes=10), "longer than 10 bytes"),
        (Limits(max_link_depth=1), "more than 1 symlinks"),
    ],
)
def test_caps_stop_with_a_clear_error(tmp_path: Path, limits: Limits, match: str) -> None:
    entries = [
        symlink("l1", "l2"),
        symlink("l2", "d"),
        file("d/x", b"."),
        file("l1/long-name", b"x" * 200),
    ]
    with pytest.raises((PayloadTooLarge, InvalidArgument), match=match):
        flatten(tmp_path, entries, [file("more")], limits=limits)
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("bad", [0, -1, True])
def test_limits_must_be_positive_integers(bad: int) -> None:
    with pytest.raises(InvalidArgument, match="positive integer"):
        Limits(max_entries=bad)
