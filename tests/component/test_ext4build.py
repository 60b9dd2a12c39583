"""The rootfs build on fakeroot (or real root) + mkfs.ext4, read back with debugfs (SPEC §5).

TESTING.md "Ownership without root": the build runs as root *and* as ``nobody`` (a work
dir it owns, a separate process), and the image must carry what the layers say either
way: uid 0 and uid 1000 owners, a setuid binary, a char device with its numbers, a FIFO,
a hardlink made across layers (link count 2), an absolute symlink target kept verbatim,
``security.capability``, no ``.wh.*`` anywhere (ADVERSARIAL 19, 25). Disk-full cases
(106, 108, 109) use small tmpfs mounts and need root.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.errors import CommandFailed, InvalidArgument
from banger.host.runner import Runner
from banger.oci.ext4build import BuildResult, build_rootfs_image
from banger.oci.flatten import Layer
from tests.layers import (
    chardev,
    directory,
    fifo,
    file,
    hardlink,
    opaque,
    symlink,
    whiteout,
    write_layer,
)

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0
NOBODY = pwd.getpwnam("nobody")
MIB = 1 << 20
CAP_NET_RAW = "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12
needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="needs root (tmpfs mounts, switching to nobody)"
)


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A directory ``nobody`` can use too (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="bgr-ext4-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def runner() -> Runner:
    # The worker imports the inject hooks from tests.layers.
    return Runner(extra_env={"PYTHONPATH": str(REPO)})


def build_as(user: str, layers: list[Layer], out: Path, work: Path, **kw: object) -> BuildResult:
    """build_rootfs_image in this process, or in a child process running as ``nobody``."""
    work.mkdir()
    if user in ("self", "self-fakeroot"):
        # As root, "self" is the real-root build and "self-fakeroot" the faked one.
        fake = True if user == "self-fakeroot" else None
        return build_rootfs_image(layers, out, runner=runner(), work_dir=work, fakeroot=fake, **kw)  # type: ignore[arg-type]
    for path in (work, out.parent, *(layer.path for layer in layers)):
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    script = textwrap.dedent(
        """
        import json, sys
        from dataclasses import asdict
        from pathlib import Path
        from banger.oci.ext4build import build_rootfs_image
        from banger.oci.flatten import Layer
        from banger.host.runner import Runner
        args = json.loads(sys.argv[1])
        layers = [Layer(Path(p), m, d) for p, m, d in args["layers"]]
        result = build_rootfs_image(
            layers, Path(args["out"]), size_bytes=args["size_bytes"], inject=args["inject"],
            runner=Runner(extra_env={"PYTHONPATH": args["repo"]}), work_dir=Path(args["work"]),
        )
        print(json.dumps(asdict(result)))
        """
    )
    args = {
        "layers": [[str(x.path), x.media_type, str(x.diff_id)] for x in layers],
        "out": str(out),
        "work": str(work),
        "repo": str(REPO),
        "size_bytes": kw.get("size_bytes"),
        "inject": kw.get("inject"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(args)],
        user=NOBODY.pw_uid,
        group=NOBODY.pw_gid,
        extra_groups=[],
        env={"PATH": os.environ["PATH"], "HOME": str(work), "PYTHONPATH": str(REPO)},
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return BuildResult(**json.loads(proc.stdout.strip().splitlines()[-1]))


def debugfs(image: Path, request: str) -> str:
    proc = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    )
    return proc.stdout


def inode(image: Path, path: str) -> dict[str, str]:
    text = debugfs(image, f'stat "{path}"')
    assert "Inode:" in text, f"{path} is not in the image"
    found = dict(re.findall(r"(Type|Mode|User|Group|Links|Size): +(\S+)", text))
    device = re.search(r"Device major/minor number: (\d+):(\d+)", text)
    if device:
        found["device"] = f"{int(device.group(1), 16)}:{int(device.group(2), 16)}"
    link = re.search(r'Fast link dest: "(.*)"', text)
    if link:
        found["target"] = link.group(1)
    return found


def all_names(image: Path, top: str = "/") -> list[str]:
    """Every path in the image, from ``ls -p`` (inode/mode/uid/gid/name/size)."""
    names = []
    for line in debugfs(image, f'ls -p "{top}"').splitlines():
        parts = line.split("/")
        if len(parts) < 6 or parts[5] in (".", ".."):
            continue
        path = top.rstrip("/") + "/" + parts[5]
        names.append(path)
        if parts[2].startswith("040"):
            names.extend(all_names(image, path))
    return names


def fsck_clean(image: Path) -> None:
    proc = subprocess.run(
        ["e2fsck", "-fn", str(image)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def sample_layers(where: Path) -> list[Layer]:
    lower = [
        directory("etc/"),
        file("etc/passwd", b"root:x:0:0::/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n"),
        symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
        directory("home/u/", mode=0o700, uid=1000, gid=1000),
        file("home/u/notes", b"mine", uid=1000, gid=1000, mode=0o600),
        file("usr/bin/su", b"\x7fELF su", mode=0o4755),
        file("usr/bin/perlbug", b"#!/usr/bin/perl"),
        file(
            "usr/bin/ping", b"\x7fELF ping", mode=0o755, xattrs={"security.capability": CAP_NET_RAW}
        ),
        chardev("dev/console", 5, 1, mode=0o600),
        fifo("run/initctl", mode=0o600),
        file("var/junk", b"junk"),
        file("opt/old/thing", b"old"),
    ]
    upper = [
        hardlink("usr/bin/perlthanks", "/usr/bin/perlbug"),
        whiteout("var/junk"),
        opaque("opt"),
        file("opt/new", b"new"),
    ]
    where.mkdir(exist_ok=True)
    return [
        write_layer(where / "l1.tar.gz", lower, compression="gzip"),
        write_layer(where / "l2.tar.zst", upper, compression="zstd"),
    ]


@pytest.mark.parametrize("user", ["self", "self-fakeroot", "nobody"])
def test_image_keeps_owners_modes_devices_links_and_xattrs(workspace: Path, user: str) -> None:
    if user == "nobody" and not IS_ROOT:
        pytest.skip("switching to nobody needs root")
    image = workspace / "out" / "rootfs.ext4"
    image.parent.mkdir()
    result = build_as(
        user,
        sample_layers(workspace / "layers"),
        image,
        workspace / "work",
        size_bytes=None,
        inject="tests.layers:inject_marker",
    )
    assert result.size_bytes == 1 << 30 == image.stat().st_size
    assert image.stat().st_blocks * 512 < 64 * MIB  # sparse
    assert list((workspace / "work").iterdir()) == []  # the tree is gone
    if user == "nobody":
        assert image.stat().st_uid == NOBODY.pw_uid
    assert inode(image, "/")["User"] == "0"
    su = inode(image, "/usr/bin/su")
    assert (su["User"], su["Group"], su["Mode"]) == ("0", "0", "04755")
    home = inode(image, "/home/u")
    assert (home["User"], home["Group"], home["Mode"]) == ("1000", "1000", "0700")
    assert inode(image, "/home/u/notes")["User"] == "1000"
    console = inode(image, "/dev/console")
    assert (console["Type"], console["device"], console["Mode"]) == ("character", "5:1", "0600")
    assert inode(image, "/run/initctl")["Type"] == "FIFO"
    assert inode(image, "/usr/bin/perlbug")["Links"] == "2"
    assert inode(image, "/usr/bin/perlthanks")["Links"] == "2"
    assert inode(image, "/etc/localtime")["target"] == "/usr/share/zoneinfo/UTC"
    assert "security.capability (20) = 01 00 00 02 00 20" in debugfs(image, "ea_list /usr/bin/ping")
    injected = inode(image, "/etc/banger-injected")
    assert (injected["User"], injected["Mode"]) == ("0", "0600")
    names = all_names(image)
    assert "/opt/new" in names and "/opt/old" not in names and "/var/junk" not in names
    assert not [n for n in names if "/.wh." in n]
    fsck_clean(image)


def test_layer_errors_come_back_typed_and_leave_nothing(tmp_path: Path) -> None:
    layer = write_layer(tmp_path / "bad.tar", [file("ok"), file("../escape", b"x")])
    out = tmp_path / "rootfs.ext4"
    with pytest.raises(InvalidArgument, match=r"'\.\./escape'.*above the image root"):
        build_as("self", [layer], out, tmp_path / "work", size_bytes=None)
    assert not out.exists()
    assert list((tmp_path / "work").iterdir()) == []


def test_a_crashing_inject_hook_is_a_command_failure_with_its_traceback(tmp_path: Path) -> None:
    layer = write_layer(tmp_path / "l.tar", [file("a")])
    with pytest.raises(CommandFailed) as caught:
        build_as(
            "self",
            [layer],
            tmp_path / "out",
            tmp_path / "work",
            size_bytes=None,
            inject="tests.layers:inject_crash",
        )
    assert "inject hook failed on purpose" in (caught.value.details or "")
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.parametrize("inject", ["no-colon", "a:b:c", "mod:1func", "../x:f"])
def test_inject_must_name_a_function(tmp_path: Path, inject: str) -> None:
    with pytest.raises(InvalidArgument, match="inject must look like"):
        build_as("self", [], tmp_path / "out", tmp_path / "work", size_bytes=None, inject=inject)


def test_a109_image_too_small_is_not_a_full_host(tmp_path: Path) -> None:
    layer = write_layer(tmp_path / "l.tar", [file(f"f{i}", os.urandom(MIB)) for i in range(80)])
    with pytest.raises(InvalidArgument, match="too small for the flattened tree") as caught:
        build_as("self", [layer], tmp_path / "out", tmp_path / "work", size_bytes=64 * MIB)
    assert "larger size" in (caught.value.hint or "")
    assert not (tmp_path / "out").exists()


def test_many_small_files_get_enough_inodes(tmp_path: Path) -> None:
    # 128 MiB at one inode per 16 KiB gives 8192 inodes; 12 000 files need more (-N).
    layer = write_layer(tmp_path / "l.tar", [file(f"d{i // 1000}/f{i}") for i in range(12_000)])
    result = build_as("self", [layer], tmp_path / "out", tmp_path / "work", size_bytes=128 * MIB)
    assert result.inodes > 12_000
    header = subprocess.run(
        ["dumpe2fs", "-h", str(tmp_path / "out")], capture_output=True, text=True, check=True
    ).stdout
    assert int(re.search(r"Inode count:\s+(\d+)", header).group(1)) >= 15_000  # type: ignore[union-attr]


@pytest.fixture
def small_fs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs of ``request.param`` mount options (size=, nr_inodes=): real ENOSPC."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", request.param, "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@needs_root
@pytest.mark.parametrize(
    ("small_fs", "files", "match"),
    [
        ("size=24m", 40, "no space left on the filesystem"),  # 106: the tree does not fit
        ("size=100m", 40, "no space left on the filesystem"),  # 106: the image would not fit
        ("size=200m,nr_inodes=64", 200, "no free inodes"),  # 108
    ],
    indirect=["small_fs"],
    ids=["flatten-enospc", "mkfs-preflight", "out-of-inodes"],
)
def test_a106_a108_full_host_filesystem(
    small_fs: Path, tmp_path: Path, files: int, match: str
) -> None:
    layer = write_layer(tmp_path / "l.tar", [file(f"f{i}", os.urandom(MIB)) for i in range(files)])
    with pytest.raises(CommandFailed, match=match) as caught:
        build_as("self", [layer], small_fs / "out", small_fs / "work", size_bytes=None)
    assert str(small_fs) in caught.value.brief
    assert sorted(p.name for p in small_fs.iterdir()) == ["work"]
    assert list((small_fs / "work").iterdir()) == []


def _big_layers(where: Path, total_bytes: int) -> list[Layer]:
    """About ``total_bytes`` in the shape of a distribution rootfs: many small files."""
    where.mkdir()
    chunk = os.urandom(1 << 20)
    sizes = [512, 4096, 16384, 65536, 262144]
    layers, made = [], 0
    for number in range(3):
        entries, layer_bytes = [], 0
        while layer_bytes < total_bytes // 3:
            size = sizes[len(entries) % len(sizes)]
            start = (len(entries) * 7919) % (len(chunk) - size)
            data = (
                chunk[start : start + size] if len(entries) % 2 else b"text line\n" * (size // 10)
            )
            entries.append(
                file(f"usr/share/l{number}/d{len(entries) // 200}/f{len(entries)}", data)
            )
            layer_bytes += size
        made += layer_bytes
        layers.append(write_layer(where / f"l{number}.tar.gz", entries, compression="gzip"))
    assert made >= total_bytes
    return layers


def test_build_time_of_a_300_mb_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layers = _big_layers(tmp_path / "layers", 300 * MIB)
    started = time.monotonic()
    result = build_as("self", layers, tmp_path / "out", tmp_path / "work", size_bytes=None)
    seconds = time.monotonic() - started
    with capsys.disabled():
        print(
            f"\n300 MB tree: {result.tree_bytes >> 20} MiB, {result.inodes} inodes, {seconds:.1f} s"
        )
    assert result.tree_bytes > 300 * MIB
    assert seconds < 180, "a 300 MB build should take seconds, not minutes"
