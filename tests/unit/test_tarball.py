"""Kernel tarballs: the member filter and the zstd caps (ADVERSARIAL 1-12, 40, 41).

"Contained" means what ADVERSARIAL.md says: a victim directory next to the extraction
root keeps its one file unchanged and nothing new appears outside the root.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.errors import InvalidArgument
from banger.host.runner import Runner
from banger.kernels.tarball import Limits, extract_tar, member_parts, unpack


@dataclass(frozen=True)
class M:
    """One member: a name, a type and, for files, content; ``link`` for links."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    link: str = ""


def make_tar(path: Path, members: Iterable[M]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.type
            info.linkname = m.link
            info.mode = 0o755 if m.type == tarfile.DIRTYPE else 0o644
            info.size = len(m.data) if m.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(m.data) if info.size else None)
    return path


def zstd(path: Path, *extra: str) -> Path:
    out = path.with_name(path.name + ".zst")
    subprocess.run(["zstd", "-q", "-f", *extra, str(path), "-o", str(out)], check=True)
    return out


KERNEL = [
    M("./", type=tarfile.DIRTYPE),
    M("./vmlinux", b"\x7fELF kernel"),
    M("./config", b"CONFIG_VIRTIO=y\n"),
    M("./modules/", type=tarfile.DIRTYPE),
    M("./modules/kernel/drivers/virtio/virtio.ko", b"module"),
    M("./modules/modules.dep", b""),
]


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """tmp_path with a victim dir beside the future root ``out``."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "hello").write_text("untouched")
    return tmp_path


def contained(area: Path) -> None:
    assert sorted(
        p.name for p in area.iterdir() if p.name not in {"out", "k.tar", "k.tar.zst"}
    ) == ["victim"]
    assert [p.name for p in (area / "victim").iterdir()] == ["hello"]
    assert (area / "victim" / "hello").read_text() == "untouched"


def test_the_expected_members_are_extracted(area: Path) -> None:
    tar = make_tar(area / "k.tar", KERNEL)
    done = extract_tar(tar, area / "out")
    out = area / "out"
    assert (out / "vmlinux").read_bytes() == b"\x7fELF kernel"
    assert (out / "config").is_file()
    assert (
        out / "modules" / "kernel" / "drivers" / "virtio" / "virtio.ko"
    ).read_bytes() == b"module"
    assert done.files == 4 and not done.ignored
    assert ((out / "vmlinux").stat().st_mode & 0o777) == 0o644
    contained(area)


def test_unexpected_members_are_skipped_and_reported(area: Path) -> None:
    members = [*KERNEL, M("README", b"x"), M("boot/other", b"y"), M("etc/", type=tarfile.DIRTYPE)]
    done = extract_tar(make_tar(area / "k.tar", members), area / "out")
    assert sorted(done.ignored) == ["README", "boot/other", "etc"]
    assert sorted(p.name for p in (area / "out").iterdir()) == ["config", "modules", "vmlinux"]
    assert "skipped 3 unexpected" in done.describe()


@pytest.mark.parametrize(
    "name", ["../victim/x", "/../victim/x", "..", "../../pwned", "modules/../../victim/hello"]
)
def test_traversal_names_reject_the_archive(area: Path, name: str) -> None:
    tar = make_tar(area / "k.tar", [M("vmlinux", b"k"), M(name, b"pwned")])
    with pytest.raises(InvalidArgument) as err:
        extract_tar(tar, area / "out")
    assert repr(name) in err.value.brief
    contained(area)


def test_absolute_names_are_refused(area: Path) -> None:
    tar = make_tar(area / "k.tar", [M("/etc/passwd", b"root::0:0"), M("vmlinux", b"k")])
    with pytest.raises(InvalidArgument, match="absolute"):
        extract_tar(tar, area / "out")
    contained(area)


@pytest.mark.parametrize(
    "members",
    [
        [M("modules", type=tarfile.SYMTYPE, link="../victim"), M("modules/file", b"x")],
        [M("modules", type=tarfile.SYMTYPE, link="/etc"), M("modules/unbroken", b"x")],
        [M("initrd.img", type=tarfile.LNKTYPE, link="../victim/hello")],
        [M("config", type=tarfile.LNKTYPE, link="vmlinux")],
        [M("modules/build", type=tarfile.SYMTYPE, link="/usr/src/linux")],
    ],
    ids=["symlink-rel", "symlink-abs", "hardlink-out", "hardlink-in", "modules-build-link"],
)
def test_links_of_any_kind_reject_the_archive(area: Path, members: list[M]) -> None:
    with pytest.raises(InvalidArgument, match="is a link"):
        extract_tar(make_tar(area / "k.tar", [M("vmlinux", b"k"), *members]), area / "out")
    contained(area)


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_devices_and_fifos_reject_the_archive(area: Path, kind: bytes) -> None:
    tar = make_tar(area / "k.tar", [M("vmlinux", b"k"), M("modules/dev", type=kind)])
    with pytest.raises(InvalidArgument, match="special file"):
        extract_tar(tar, area / "out")


def test_a_member_twice_rejects_the_archive(area: Path) -> None:
    tar = make_tar(area / "k.tar", [M("vmlinux", b"a"), M("./vmlinux", b"b")])
    with pytest.raises(InvalidArgument, match="twice"):
        extract_tar(tar, area / "out")
    clash = make_tar(
        area / "c.tar", [M("vmlinux", b"a"), M("modules/x", b"1"), M("modules/x/y", b"2")]
    )
    with pytest.raises(InvalidArgument, match="both a file and a directory"):
        extract_tar(clash, area / "out2")


def test_an_archive_without_a_kernel_is_refused(area: Path) -> None:
    tar = make_tar(area / "k.tar", [M("config", b"x"), M("README", b"y")])
    with pytest.raises(InvalidArgument, match="no vmlinux"):
        extract_tar(tar, area / "out")


def test_member_and_byte_caps_stop_a_bomb(area: Path) -> None:
    many = [M("vmlinux", b"k"), *(M(f"modules/f{i}", b"") for i in range(50))]
    with pytest.raises(InvalidArgument, match="more than 20 members"):
        extract_tar(make_tar(area / "k.tar", many), area / "out", Limits(max_members=20))
    big = [M("vmlinux", b"k" * 5000)]
    with pytest.raises(InvalidArgument, match="bytes of files"):
        extract_tar(make_tar(area / "b.tar", big), area / "out2", Limits(max_output_bytes=4096))


def test_a_truncated_tar_is_refused(area: Path) -> None:
    tar = make_tar(area / "k.tar", [M("vmlinux", b"k" * 100_000)])
    data = tar.read_bytes()
    tar.write_bytes(data[: 512 + 50_000])
    with pytest.raises(InvalidArgument, match=r"truncated|damaged"):
        extract_tar(tar, area / "out")


def test_member_names_are_normalised_or_refused() -> None:
    assert member_parts("./modules//kernel/./x.ko") == ["modules", "kernel", "x.ko"]
    assert member_parts("./") == []
    for bad in ("/abs", "a/../../b", "..", "x\0y"):
        with pytest.raises(InvalidArgument):
            member_parts(bad)


# -- zstd (ADVERSARIAL 40) ---------------------------------------------------------------------


def test_a_zstd_tarball_unpacks_and_leaves_no_tar_behind(area: Path) -> None:
    archive = zstd(make_tar(area / "k.tar", KERNEL))
    (area / "k.tar").unlink()
    done = unpack(archive, area / "out", Runner())
    assert done.files == 4 and (area / "out" / "vmlinux").is_file()
    assert sorted(p.name for p in area.iterdir()) == ["k.tar.zst", "out", "victim"]


def test_a_frame_asking_for_a_huge_window_is_refused(area: Path) -> None:
    tar = make_tar(area / "k.tar", KERNEL)
    # From a pipe zstd cannot shrink the window to the input: the frame declares 1 GiB.
    framed = subprocess.run(
        ["zstd", "-q", "--long=30", "-c"], input=tar.read_bytes(), capture_output=True, check=True
    ).stdout
    archive = area / "k.tar.zst"
    archive.write_bytes(framed)
    tar.unlink()
    with pytest.raises(InvalidArgument, match="window") as err:
        unpack(archive, area / "out", Runner())
    assert "Window size larger than maximum" in (err.value.details or "")
    assert not (area / "out").exists() and not (area / "k.tar.zst.tar").exists()


def test_output_past_the_cap_is_refused(area: Path) -> None:
    tar = make_tar(area / "k.tar", [M("vmlinux", bytes(4 << 20))])
    archive = zstd(tar)
    tar.unlink()
    assert archive.stat().st_size < 4096  # a small file that inflates a thousandfold
    with pytest.raises(InvalidArgument, match="does not decompress within the limits"):
        unpack(archive, area / "out", Runner(), Limits(max_output_bytes=1 << 20))
    assert not (area / "out").exists() and not (area / "k.tar.zst.tar").exists()


def test_not_zstd_at_all_is_refused(area: Path) -> None:
    archive = area / "k.tar.zst"
    archive.write_bytes(b"<html>not found</html>")
    with pytest.raises(InvalidArgument, match="not zstd"):
        unpack(archive, area / "out", Runner())
