"""Image registration, promotion and deletion through the real daemon and CLI (SPEC §5).

Registered images point at the user's files: every bad path is refused with a clear
error and nothing recorded (ADVERSARIAL 48), deleting never touches those files, a VM
using an image protects it (ADVERSARIAL 120), and promotion copies into images/<name>/.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from banger.client.http import Client
from banger.errors import InvalidArgument, InvalidRequest
from banger.model.records import VmRecord, VmState, utc_now
from banger.state import repo
from banger.state.db import Database
from tests.conftest import BIN, BangerHome
from tests.kernelfiles import compress, fake_elf, make_bzimage, make_ext4, synthetic_tree

pytestmark = pytest.mark.component


class Files:
    """A user's image files in a directory of their own."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        self.root = root
        self.rootfs = make_ext4(root / "rootfs.ext4", "16M")
        self.work_seed = make_ext4(root / "work.ext4")
        self.kernel = root / "vmlinuz"
        self.kernel.write_bytes(make_bzimage(compress("gzip", fake_elf())))
        self.initrd = root / "initrd.img"
        self.initrd.write_bytes(b"initrd bytes")
        self.modules = root / "modules"
        (self.modules / "kernel").mkdir(parents=True)
        (self.modules / "kernel" / "a.ko").write_bytes(b"module")

    def snapshot(self) -> dict[str, bytes]:
        return {
            str(p.relative_to(self.root)): p.read_bytes()
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path / "mine")


def register(home: BangerHome, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return home.banger("image", "register", name, *args)


def full_args(f: Files) -> list[str]:
    return [
        "--rootfs", str(f.rootfs), "--kernel", str(f.kernel), "--initrd", str(f.initrd),
        "--modules", str(f.modules), "--work-seed", str(f.work_seed),
    ]  # fmt: skip


def images(home: BangerHome) -> list[dict[str, object]]:
    out = home.banger("image", "list", "--json")
    assert out.returncode == 0, out.stderr
    listed: list[dict[str, object]] = json.loads(out.stdout)
    return listed


def test_register_records_the_host_paths_unmanaged(home: BangerHome, files: Files) -> None:
    out = register(home, "mine", *full_args(files), "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(home.banger("image", "show", "mine", "--json").stdout)
    assert shown == json.loads(out.stdout)
    assert shown["managed"] is False
    assert shown["source"] == "register"
    assert (shown["rootfs_path"], shown["kernel_path"]) == (str(files.rootfs), str(files.kernel))
    assert shown["initrd_path"] == str(files.initrd)
    assert shown["modules_path"] == str(files.modules)
    assert shown["work_seed_path"] == str(files.work_seed)
    assert shown["size_bytes"] == 16 << 20
    assert [i["name"] for i in images(home)] == ["mine"]
    text = home.banger("image", "list").stdout
    assert "mine" in text and "registered" in text


def test_register_with_a_stored_kernel(home: BangerHome, files: Files, tmp_path: Path) -> None:
    src = synthetic_tree(tmp_path / "k")
    assert home.banger("kernel", "import", "k", "--from", str(src)).returncode == 0
    out = register(home, "withref", "--rootfs", str(files.rootfs), "--kernel-ref", "k")
    assert out.returncode == 0, out.stderr
    assert "registered image withref" in out.stdout
    shown = json.loads(home.banger("image", "show", "withref", "--json").stdout)
    assert (shown["kernel_name"], shown["kernel_path"]) == ("k", None)


def test_register_and_delete_never_touch_the_users_files(home: BangerHome, files: Files) -> None:
    before = files.snapshot()
    assert register(home, "mine", *full_args(files)).returncode == 0
    out = home.banger("image", "delete", "mine")
    assert out.returncode == 0, out.stderr
    assert "files left in place" in out.stdout
    assert files.snapshot() == before
    assert images(home) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kernel", "K", "--kernel-ref", "k"], "not both"),
        ([], "an image needs a kernel"),
        (["--kernel-ref", "k", "--initrd", "I"], "go with --kernel"),
        (["--kernel-ref", "../k"], "invalid kernel name"),
        (["--kernel-ref", "nokernel"], "kernel 'nokernel' not found"),
    ],
)
def test_kernel_choice_rules(home: BangerHome, files: Files, args: list[str], message: str) -> None:
    swap = {"K": str(files.kernel), "I": str(files.initrd)}
    out = register(home, "x", "--rootfs", str(files.rootfs), *[swap.get(a, a) for a in args])
    assert out.returncode == 1, out.stdout
    assert message in out.stderr
    assert images(home) == []


def _bad_paths(f: Files, tmp: Path) -> list[tuple[list[str], str]]:
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    text = tmp / "text.img"
    text.write_bytes(os.urandom(4096))
    qcow = tmp / "disk.qcow2"
    qcow.write_bytes(b"QFI\xfb" + bytes(4092))
    long_path = "/" + "/".join(["d" * 200] * 21)
    kernel = ["--kernel", str(f.kernel)]
    return [
        (["--rootfs", str(tmp / "absent.ext4"), *kernel], "does not exist"),
        (["--rootfs", str(tmp), *kernel], "is a directory, not a regular file"),
        (["--rootfs", str(fifo), *kernel], "is a FIFO, not a regular file"),
        (["--rootfs", "/dev/zero", *kernel], "is a character device"),
        (["--rootfs", str(text), *kernel], "is not an ext4 image"),
        (["--rootfs", str(qcow), *kernel], "qemu-img convert"),
        (["--rootfs", long_path, *kernel], "longer than the system allows"),
        (["--rootfs", str(f.rootfs), "--kernel", str(text)], "neither a bzImage nor"),
        (["--rootfs", str(f.rootfs), "--kernel", str(fifo)], "is a FIFO"),
        ([*kernel, "--rootfs", str(f.rootfs), "--initrd", "/dev/zero"], "character device"),
        ([*kernel, "--rootfs", str(f.rootfs), "--modules", str(text)], "not a directory"),
        ([*kernel, "--rootfs", str(f.rootfs), "--work-seed", str(text)], "work seed"),
        ([*kernel, "--rootfs", str(f.rootfs), "--work-seed", str(fifo)], "is a FIFO"),
    ]


def test_bad_paths_are_refused_clearly_and_nothing_is_recorded(
    home: BangerHome, files: Files, tmp_path: Path
) -> None:
    assert home.banger("daemon", "start").returncode == 0
    for args, message in _bad_paths(files, tmp_path):
        out = home.banger("image", "register", "bad", *args, timeout=20)
        assert out.returncode == 1, (args, out.stdout)
        assert message in out.stderr, (args, out.stderr)
        assert out.stderr.startswith("error: "), out.stderr
    assert images(home) == []


def test_relative_paths_are_made_absolute_by_the_cli(home: BangerHome, files: Files) -> None:
    out = subprocess.run(
        [str(BIN / "banger"), "image", "register", "rel", "--rootfs", "rootfs.ext4",
         "--kernel", "./vmlinuz", "--modules", "modules"],
        env=home.env, cwd=files.root, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    shown = json.loads(home.banger("image", "show", "rel", "--json").stdout)
    assert shown["rootfs_path"] == str(files.rootfs)
    assert shown["kernel_path"] == str(files.kernel)
    assert shown["modules_path"] == str(files.modules)


def test_the_api_rejects_relative_paths_and_unknown_fields(home: BangerHome) -> None:
    assert home.banger("daemon", "start").returncode == 0
    client = Client(home.socket)
    with pytest.raises(InvalidRequest, match="rootfs"):
        client.post("/images/register", {"name": "x", "rootfs": "rootfs.ext4", "kernel_ref": "k"})
    with pytest.raises(InvalidRequest, match="name"):
        client.post("/images/register", {"name": "../x", "rootfs": "/r", "kernel_ref": "k"})
    with pytest.raises(InvalidArgument, match="does not exist"):
        client.post("/images/register", {"name": "x", "rootfs": "/nonexistent", "kernel_ref": "k"})
    with pytest.raises(InvalidRequest, match="unknown field"):
        client.post("/images/register", {"name": "x", "rootfs": "/r", "bogus": True})
    with pytest.raises(InvalidRequest):
        client.post("/images/register", {"name": "x", "rootfs": 5})


def test_duplicate_and_bad_image_names(home: BangerHome, files: Files) -> None:
    args = ["--rootfs", str(files.rootfs), "--kernel", str(files.kernel)]
    assert register(home, "img", *args).returncode == 0
    dup = register(home, "img", *args)
    assert dup.returncode == 1
    assert "already exists" in dup.stderr
    bad = home.banger("image", "register", *args, "--", "../img")
    assert bad.returncode == 1
    assert "invalid image name" in bad.stderr
    assert [i["name"] for i in images(home)] == ["img"]


def _add_vm_using(home: BangerHome, image_id: int) -> None:
    """A VM row, as the VM service writes it, from a second connection (WAL allows it)."""
    db = Database.open(home.state_dir / "state.db")
    try:
        now = utc_now()
        vm = VmRecord(
            name="busy-vm", image_id=image_id, state=VmState.STOPPED, vcpu=1,
            memory_mib=256, disk_size_bytes=1 << 30, created_at=now, updated_at=now,
        )  # fmt: skip
        repo.insert_vm(db, vm)
    finally:
        db.close()


def test_delete_refuses_while_a_vm_uses_the_image(home: BangerHome, files: Files) -> None:
    out = register(home, "img", "--rootfs", str(files.rootfs), "--kernel", str(files.kernel))
    assert out.returncode == 0, out.stderr
    image_id = json.loads(home.banger("image", "show", "img", "--json").stdout)["id"]
    _add_vm_using(home, image_id)
    refused = home.banger("image", "delete", "img")
    assert refused.returncode == 1
    assert "error: image 'img' is in use by VM busy-vm" in refused.stderr
    assert [i["name"] for i in images(home)] == ["img"]


def test_promote_copies_into_the_store_and_delete_removes_only_copies(
    home: BangerHome, files: Files
) -> None:
    before = files.snapshot()
    assert register(home, "img", *full_args(files)).returncode == 0
    out = home.banger("image", "promote", "img")
    assert out.returncode == 0, out.stderr
    assert "promoted image img" in out.stdout
    own = home.state_dir / "images" / "img"
    shown = json.loads(home.banger("image", "show", "img", "--json").stdout)
    assert shown["managed"] is True
    assert shown["source"] == f"promote:{files.rootfs}"
    assert shown["rootfs_path"] == str(own / "rootfs.ext4")
    assert shown["kernel_path"] == str(own / "vmlinuz")
    assert shown["modules_path"] == str(own / "modules")
    assert (own / "rootfs.ext4").read_bytes() == files.rootfs.read_bytes()
    assert (own / "work-seed.ext4").read_bytes() == files.work_seed.read_bytes()
    assert (own / "initrd.img").read_bytes() == b"initrd bytes"
    assert (own / "modules" / "kernel" / "a.ko").read_bytes() == b"module"
    again = home.banger("image", "promote", "img")
    assert again.returncode == 1
    assert "already managed" in again.stderr
    deleted = home.banger("image", "delete", "img")
    assert deleted.returncode == 0, deleted.stderr
    assert not own.exists()
    assert files.snapshot() == before


def test_promote_refuses_when_the_registered_files_went_away(
    home: BangerHome, files: Files
) -> None:
    assert register(home, "img", *full_args(files)).returncode == 0
    files.initrd.unlink()
    out = home.banger("image", "promote", "img", "--json")
    assert out.returncode == 1
    assert "initrd" in out.stderr and "does not exist" in out.stderr
    shown = json.loads(home.banger("image", "show", "img", "--json").stdout)
    assert shown["managed"] is False
    assert not (home.state_dir / "images" / "img").exists()


def test_promote_progress_as_ndjson(home: BangerHome, files: Files) -> None:
    args = ["--rootfs", str(files.rootfs), "--kernel", str(files.kernel)]
    assert register(home, "img", *args).returncode == 0
    out = home.banger("image", "promote", "img", "--json")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    done = [e["stage"] for e in events if e["type"] == "stage" and e["state"] == "ok"]
    assert done == ["check", "rootfs", "artifacts", "publish"]
    assert events[-1]["type"] == "result" and events[-1]["data"]["managed"] is True


def test_unknown_image(home: BangerHome) -> None:
    for args in (("show", "nope"), ("delete", "nope"), ("promote", "nope")):
        out = home.banger("image", *args)
        assert out.returncode == 1
        assert "image 'nope' not found" in out.stderr
        assert "hint: `banger image list`" in out.stderr
