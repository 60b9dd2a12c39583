"""The kernel store through the real daemon and CLI, with Debian's real cloud kernel.

Covers SPEC §6 (import, list, show, rm), the ELF extraction from Debian's LZ4 bzImage,
the initrd built from the kernel's modules (and a boot of both under QEMU/TCG), and the
bad inputs: ambiguous directories, bad names, duplicates, in-use kernels, leftovers.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from banger.client.http import Client
from banger.errors import CommandFailed, InvalidArgument, InvalidRequest, KernelNotFound
from banger.host.runner import Runner
from banger.kernels.initrd import MODULES, build_initrd
from banger.kernels.store import sha256_file, verify_kernel
from banger.kernels.vmlinux import Compression, extract_vmlinux, find_payload, is_elf_vmlinux
from tests.conftest import BIN, BangerHome, make_home, stop_daemon_of
from tests.guests import CloudKernel, cloud_kernel
from tests.kernelfiles import SYNTH_V, fake_elf, make_ext4, synthetic_tree

pytestmark = pytest.mark.component


def events_of(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def store_entries(home: BangerHome) -> list[str]:
    kdir = home.state_dir / "kernels"
    return sorted(p.name for p in kdir.iterdir() if p.name != ".staging") if kdir.exists() else []


def staging_leftovers(home: BangerHome) -> list[Path]:
    area = home.state_dir / "kernels" / ".staging"
    return list(area.iterdir()) if area.exists() else []


# -- the real Debian kernel, imported once for the module ---------------------------------


@dataclass
class Imported:
    home: BangerHome
    kernel: CloudKernel
    events: list[dict[str, Any]]
    seconds: float

    @property
    def dir(self) -> Path:
        return self.home.state_dir / "kernels" / "debian-cloud"


@pytest.fixture(scope="module")
def debian() -> Iterator[Imported]:
    kernel = cloud_kernel()
    with tempfile.TemporaryDirectory(prefix="bgr-") as tmp:
        home = make_home(Path(tmp))
        try:
            assert home.banger("daemon", "start").returncode == 0
            started = time.monotonic()
            out = home.banger(
                "kernel", "import", "debian-cloud", "--from", str(kernel.import_dir), "--json"
            )
            seconds = time.monotonic() - started
            assert out.returncode == 0, out.stderr
            yield Imported(home, kernel, events_of(out.stdout), seconds)
        finally:
            stop_daemon_of(home)


def test_debian_cloud_kernel_imports_as_elf_with_a_built_initrd(debian: Imported) -> None:
    print(f"import of the Debian cloud kernel took {debian.seconds:.2f}s")
    stages = [e["stage"] for e in debian.events if e["type"] == "stage" and e["state"] == "ok"]
    assert stages == ["discover", "extract", "modules", "initrd", "publish"]
    result = debian.events[-1]["data"]
    assert result["version"] == debian.kernel.version
    assert result["has_initrd"] and result["has_modules"]
    kdir = debian.dir
    assert is_elf_vmlinux(kdir / "vmlinux")
    assert sha256_file(kdir / "vmlinuz") == sha256_file(debian.kernel.vmlinuz)
    assert stat.S_IMODE((kdir / "vmlinux").stat().st_mode) == 0o644
    assert (kdir / "modules" / "kernel" / "drivers" / "block" / "virtio_blk.ko").is_file()
    manifest = json.loads((kdir / "manifest.json").read_text())
    assert manifest["initrd_origin"] == "built"
    assert manifest["files"]["vmlinux"]["origin"] == "extracted"
    assert manifest["sha256"] == sha256_file(kdir / "vmlinux") == result["sha256"]
    assert manifest["source"] == f"import:{debian.kernel.import_dir}"
    assert "virtio_blk.ko" in manifest["files"]["initrd.img"]["modules"]
    assert verify_kernel(kdir) == []


def test_list_and_show_describe_the_imported_kernel(debian: Imported) -> None:
    listed = json.loads(debian.home.banger("kernel", "list", "--json").stdout)
    assert [k["name"] for k in listed] == ["debian-cloud"]
    shown = json.loads(debian.home.banger("kernel", "show", "debian-cloud", "--json").stdout)
    assert shown["dir_path"] == str(debian.dir)
    assert shown["manifest"]["version"] == debian.kernel.version
    text = debian.home.banger("kernel", "list").stdout
    assert "debian-cloud" in text and debian.kernel.version in text
    plain = debian.home.banger("kernel", "show", "debian-cloud")
    assert "initrd: built" in plain.stdout


def test_verify_finds_a_flipped_bit(debian: Imported, tmp_path: Path) -> None:
    copy = tmp_path / "k"
    shutil.copytree(debian.dir, copy, symlinks=True)
    data = bytearray((copy / "initrd.img").read_bytes())
    data[100] ^= 1
    (copy / "initrd.img").write_bytes(bytes(data))
    problems = verify_kernel(copy)
    assert len(problems) == 1 and "initrd.img" in problems[0]


def _tiny_rootfs(tmp: Path) -> Path:
    tree = tmp / "tree"
    for sub in ("bin", "sbin", "dev", "proc", "sys"):
        (tree / sub).mkdir(parents=True)
    shutil.copy2("/bin/busybox", tree / "bin" / "busybox")
    init = tree / "sbin" / "init"
    init.write_text(
        "#!/bin/busybox sh\n/bin/busybox echo BANGER-KERNEL-BOOTED\n/bin/busybox poweroff -f\n"
    )
    init.chmod(0o755)
    image = tmp / "rootfs.ext4"
    mkfs = ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), "32M"]
    subprocess.run(mkfs, check=True, capture_output=True)
    return image


def _tsc_khz() -> int:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.split(":")[1]) * 1000)
    return 2_000_000


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86")
def test_imported_vmlinux_and_initrd_boot_to_the_rootfs_init(
    debian: Imported, tmp_path: Path
) -> None:
    """The ELF (PVH entry) and the built initrd find and mount /dev/vda under TCG."""
    rootfs = _tiny_rootfs(tmp_path)
    serial = tmp_path / "serial.log"
    append = f"console=ttyS0 root=/dev/vda rw panic=-1 reboot=k tsc_early_khz={_tsc_khz()}"
    argv = [
        "qemu-system-x86_64", "-M", "microvm,acpi=on,rtc=on,isa-serial=on", "-accel", "tcg",
        "-cpu", "max", "-m", "512", "-nodefaults", "-no-user-config", "-display", "none",
        "-monitor", "none", "-no-reboot", "-serial", f"file:{serial}",
        "-kernel", str(debian.dir / "vmlinux"), "-initrd", str(debian.dir / "initrd.img"),
        "-append", append,
        "-drive", f"file={rootfs},if=none,id=d0,format=raw",
        "-device", "virtio-blk-device,drive=d0",
    ]  # fmt: skip
    subprocess.run(argv, timeout=180, check=True, capture_output=True)
    assert "BANGER-KERNEL-BOOTED" in serial.read_text(errors="replace")


def test_real_debian_bzimage_is_lz4_and_extracts(tmp_path: Path) -> None:
    kernel = cloud_kernel()
    image = kernel.vmlinuz.read_bytes()
    kind, _, expected = find_payload(image)
    assert kind is Compression.LZ4
    extract_vmlinux(kernel.vmlinuz, tmp_path / "vmlinux", Runner())
    assert (tmp_path / "vmlinux").stat().st_size == expected
    assert is_elf_vmlinux(tmp_path / "vmlinux")


# -- the initrd builder on real modules -----------------------------------------------------


def _cpio_list(initrd: Path) -> list[str]:
    data = gzip.decompress(initrd.read_bytes())
    out = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True)
    return out.stdout.decode().split()


def _module_subset(src: Path, dst: Path, compressor: str | None = None) -> Path:
    """Copy the recipe's modules of a real kernel, optionally compressed (.xz/.zst)."""
    for rel in MODULES[:7]:
        source = src / "kernel" / rel
        target = dst / "kernel" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if compressor == "xz":
            target.with_name(target.name + ".xz").write_bytes(
                lzma.compress(source.read_bytes(), check=lzma.CHECK_CRC32)
            )
        elif compressor == "zst":
            subprocess.run(["zstd", "-q", "-o", f"{target}.zst", str(source)], check=True)
        else:
            shutil.copy2(source, target)
    return dst


def test_initrd_is_reproducible_and_lists_the_recipe(tmp_path: Path) -> None:
    modules = cloud_kernel().modules_dir
    first, second = tmp_path / "a.img", tmp_path / "b.img"
    names = build_initrd(modules, first, Runner())
    build_initrd(modules, second, Runner())
    assert first.read_bytes() == second.read_bytes()
    assert names[:2] == ["virtio_ring.ko", "virtio.ko"]  # dependency order
    assert len(names) == len(MODULES)
    listed = _cpio_list(first)
    assert {"init", "bin/busybox", "dev/console", "lib/modules/order", "newroot"} <= set(listed)
    assert "lib/modules/virtio_blk.ko" in listed
    assert stat.S_IMODE(first.stat().st_mode) == 0o644


@pytest.mark.parametrize("compressor", ["xz", "zst"])
def test_initrd_takes_compressed_modules(compressor: str, tmp_path: Path) -> None:
    real = cloud_kernel().modules_dir
    subset = _module_subset(real, tmp_path / "mods", compressor)
    names = build_initrd(subset, tmp_path / "initrd.img", Runner())
    assert names == [Path(m).name for m in MODULES[:7]]
    extract = tmp_path / "x"
    extract.mkdir()
    data = gzip.decompress((tmp_path / "initrd.img").read_bytes())
    subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=extract, check=True)
    blk = (extract / "lib" / "modules" / "virtio_blk.ko").read_bytes()
    assert blk == (real / "kernel" / "drivers" / "block" / "virtio_blk.ko").read_bytes()


def test_initrd_without_any_virtio_module_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mods" / "kernel").mkdir(parents=True)
    with pytest.raises(InvalidArgument, match="none of the virtio modules"):
        build_initrd(tmp_path / "mods", tmp_path / "initrd.img", Runner())


def test_initrd_needs_a_static_busybox(tmp_path: Path) -> None:
    modules = cloud_kernel().modules_dir
    with pytest.raises(CommandFailed, match="not a statically linked") as info:
        build_initrd(modules, tmp_path / "i", Runner(), busybox=Path("/bin/ls"))
    assert info.value.hint == "install the static busybox: apt-get install busybox-static"
    with pytest.raises(CommandFailed, match="is missing"):
        build_initrd(modules, tmp_path / "i", Runner(), busybox=tmp_path / "nope")


# -- store rules through the CLI (synthetic kernels) ---------------------------------------


def test_depmod_runs_when_the_source_has_no_modules_dep(home: BangerHome, tmp_path: Path) -> None:
    kernel = cloud_kernel()
    src = tmp_path / "src"
    (src / "boot").mkdir(parents=True)
    shutil.copy2(kernel.vmlinuz, src / "boot" / kernel.vmlinuz.name)
    _module_subset(kernel.modules_dir, src / "lib" / "modules" / kernel.version)
    out = home.banger("kernel", "import", "small", "--from", str(src))
    assert out.returncode == 0, out.stderr
    assert "generated modules.dep" in out.stdout
    dep = (home.state_dir / "kernels" / "small" / "modules" / "modules.dep").read_text()
    assert "virtio_blk.ko" in dep
    assert not (home.state_dir / "kernels" / "small" / ".depmod").exists()


def test_two_kernels_in_one_directory_is_a_clear_error(home: BangerHome, tmp_path: Path) -> None:
    src = synthetic_tree(tmp_path / "src")
    second = src / "boot" / "vmlinuz-6.6.7-test"
    second.write_bytes((src / "boot" / f"vmlinuz-{SYNTH_V}").read_bytes())
    out = home.banger("kernel", "import", "k", "--from", str(src))
    assert out.returncode == 1
    assert "error: found 2 candidates for the bzImage kernel" in out.stderr
    assert f"boot/vmlinuz-{SYNTH_V}" in out.stderr and "boot/vmlinuz-6.6.7-test" in out.stderr
    assert "hint:" in out.stderr
    assert json.loads(home.banger("kernel", "list", "--json").stdout) == []
    assert store_entries(home) == []
    assert staging_leftovers(home) == []


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "-x", "x" * 65, "with space"])
def test_bad_names_are_refused(home: BangerHome, tmp_path: Path, name: str) -> None:
    src = synthetic_tree(tmp_path / "src")
    out = home.banger("kernel", "import", "--from", str(src), "--", name)
    assert out.returncode == 1, out.stdout
    assert "invalid kernel name" in out.stderr
    assert "hint: use 1-64 letters" in out.stderr
    assert store_entries(home) == []
    assert not (tmp_path / "escape").exists()


def test_duplicate_needs_force_which_replaces(home: BangerHome, tmp_path: Path) -> None:
    first = synthetic_tree(tmp_path / "one")
    assert home.banger("kernel", "import", "k", "--from", str(first)).returncode == 0
    old = json.loads(home.banger("kernel", "show", "k", "--json").stdout)
    second = synthetic_tree(tmp_path / "two", version="6.6.9-new", modules=False)
    again = home.banger("kernel", "import", "k", "--from", str(second))
    assert again.returncode == 1
    assert "error: kernel 'k' already exists" in again.stderr
    assert "--force" in again.stderr
    forced = home.banger("kernel", "import", "k", "--from", str(second), "--force")
    assert forced.returncode == 0, forced.stderr
    new = json.loads(home.banger("kernel", "show", "k", "--json").stdout)
    assert (old["version"], new["version"]) == (SYNTH_V, "6.6.9-new")
    assert new["sha256"] != old["sha256"]
    assert not new["has_modules"] and not new["has_initrd"]
    kdir = home.state_dir / "kernels" / "k"
    assert sorted(p.name for p in kdir.iterdir()) == ["manifest.json", "vmlinux", "vmlinuz"]
    assert store_entries(home) == ["k"]
    assert staging_leftovers(home) == []


def test_rm_refuses_while_an_image_uses_the_kernel(home: BangerHome, tmp_path: Path) -> None:
    src = synthetic_tree(tmp_path / "src")
    assert home.banger("kernel", "import", "k", "--from", str(src)).returncode == 0
    rootfs = make_ext4(tmp_path / "rootfs.ext4")
    reg = home.banger("image", "register", "img", "--rootfs", str(rootfs), "--kernel-ref", "k")
    assert reg.returncode == 0, reg.stderr
    refused = home.banger("kernel", "rm", "k")
    assert refused.returncode == 1
    assert "error: kernel 'k' is in use by image img" in refused.stderr
    assert (home.state_dir / "kernels" / "k" / "vmlinux").is_file()
    assert home.banger("image", "delete", "img").returncode == 0
    removed = home.banger("kernel", "rm", "k")
    assert removed.returncode == 0, removed.stderr
    assert store_entries(home) == []
    gone = home.banger("kernel", "rm", "k")
    assert gone.returncode == 1
    assert "kernel 'k' not found" in gone.stderr


def test_relative_source_is_taken_from_the_cli_cwd(home: BangerHome, tmp_path: Path) -> None:
    synthetic_tree(tmp_path / "src")
    out = subprocess.run(
        [str(BIN / "banger"), "kernel", "import", "rel", "--from", "src"],
        env=home.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    shown = json.loads(home.banger("kernel", "show", "rel", "--json").stdout)
    assert shown["source"] == f"import:{tmp_path / 'src'}"


def test_a_given_initrd_is_copied_not_built(home: BangerHome, tmp_path: Path) -> None:
    src = synthetic_tree(tmp_path / "src")
    (src / "boot" / f"initrd.img-{SYNTH_V}").write_bytes(b"my initrd")
    out = home.banger("kernel", "import", "k", "--from", str(src), "--json")
    assert out.returncode == 0, out.stderr
    kdir = home.state_dir / "kernels" / "k"
    assert (kdir / "initrd.img").read_bytes() == b"my initrd"
    assert json.loads((kdir / "manifest.json").read_text())["initrd_origin"] == "given"


def test_an_elf_vmlinux_without_modules_is_copied(home: BangerHome, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "vmlinux").write_bytes(fake_elf(50_000))
    out = home.banger("kernel", "import", "elf", "--from", str(src))
    assert out.returncode == 0, out.stderr
    kdir = home.state_dir / "kernels" / "elf"
    assert (kdir / "vmlinux").read_bytes() == (src / "vmlinux").read_bytes()
    assert sorted(p.name for p in kdir.iterdir()) == ["manifest.json", "vmlinux"]
    shown = json.loads(home.banger("kernel", "show", "elf", "--json").stdout)
    assert shown["manifest"]["initrd_origin"] == "none"
    assert shown["version"] is None


def test_a_crash_leftover_directory_is_replaced(home: BangerHome, tmp_path: Path) -> None:
    assert home.banger("daemon", "start").returncode == 0
    orphan = home.state_dir / "kernels" / "k"
    orphan.mkdir(parents=True)
    (orphan / "junk").write_text("from a crash between publish and the row")
    out = home.banger("kernel", "import", "k", "--from", str(synthetic_tree(tmp_path / "s")))
    assert out.returncode == 0, out.stderr
    assert not (orphan / "junk").exists()
    assert (orphan / "vmlinux").is_file()


def test_source_that_is_missing_or_a_file(home: BangerHome, tmp_path: Path) -> None:
    missing = home.banger("kernel", "import", "k", "--from", str(tmp_path / "absent"))
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    (tmp_path / "f").write_text("x")
    afile = home.banger("kernel", "import", "k", "--from", str(tmp_path / "f"))
    assert afile.returncode == 1
    assert "is a regular file, not a directory" in afile.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = home.banger("kernel", "import", "k", "--from", str(empty))
    assert nothing.returncode == 1
    assert "error: no kernel found" in nothing.stderr
    assert store_entries(home) == []


def test_import_progress_is_ndjson_and_the_api_checks_its_body(home: BangerHome) -> None:
    out = home.banger("kernel", "import", "k", "--from", "/nonexistent-dir", "--json")
    assert out.returncode == 1
    client = Client(home.socket)
    with pytest.raises(InvalidRequest, match="source_dir"):
        list(client.stream("POST", "/kernels/import", {"name": "k", "source_dir": "rel"}))
    with pytest.raises(InvalidRequest, match="name"):
        client.post("/kernels/import", {"name": "../k", "source_dir": "/x"})
    with pytest.raises(KernelNotFound):
        client.request("DELETE", "/kernels/-bad")
    with pytest.raises(InvalidRequest, match="unknown field"):
        client.post("/kernels/import", {"name": "k", "source_dir": "/x", "extra": 1})
    with pytest.raises(InvalidRequest):
        client.post("/kernels/import", {"name": "k", "source_dir": "/x", "force": "yes"})


def test_modules_symlinks_out_of_the_tree_are_not_copied(home: BangerHome, tmp_path: Path) -> None:
    src = synthetic_tree(tmp_path / "src")
    mods = src / "lib" / "modules" / SYNTH_V
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    (mods / "build").symlink_to("/usr/src")
    (mods / "leak.ko").symlink_to(secret)
    out = home.banger("kernel", "import", "k", "--from", str(src))
    assert out.returncode == 0, out.stderr
    copied = home.state_dir / "kernels" / "k" / "modules"
    assert not os.path.lexists(copied / "build")
    assert not os.path.lexists(copied / "leak.ko")
    assert (copied / "kernel" / "drivers" / "virtio" / "virtio.ko").is_file()
