"""``banger image pull`` end to end: the real CLI, the real daemon, Debian's real
``docker-registry`` on 127.0.0.1, the real flattener and ``mkfs.ext4``.

Covers a multi-arch pull, refusals before any download, failures that publish nothing,
overlapping pulls (ADVERSARIAL 114, 117) and ``kill -9`` of the daemon at every pull
stage through the ``BANGER_FAILPOINT=pull:<stage>`` failpoints (85).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from banger.client.launcher import pid_alive
from banger.services.image_pulls import FAILPOINTS
from tests.conftest import BangerHome
from tests.registry import (
    LocalRegistry,
    OciLayout,
    have_registry_tools,
    running_registry,
    tar_layer,
)

pytestmark = [
    pytest.mark.component,
    pytest.mark.skipif(not have_registry_tools(), reason="docker-registry/skopeo missing"),
]

PULL_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def _base(arch: str) -> bytes:
    return tar_layer(
        {
            "bin/": None,
            "bin/sh": b"#!/bin/false\n",
            "etc/": None,
            "etc/os-release": b"ID=debian\nVERSION_ID=12\n",
            f"etc/arch-{arch}": arch.encode(),
        }
    )


def _push(
    reg: LocalRegistry,
    tmp: Path,
    repo_tag: str,
    *,
    extra_layers: int = 2,
    shared: list[bytes] | None = None,
    archs: tuple[str, ...] = ("amd64", "arm64"),
) -> dict[str, dict[str, Any]]:
    """Push a (multi-arch) image; its per-arch manifest descriptors."""
    layout = OciLayout(tmp / f"layout-{secrets.token_hex(4)}")
    descs = {}
    for arch in archs:
        own = [tar_layer({f"opt/{arch}-{i}": os.urandom(4096)}) for i in range(extra_layers)]
        descs[arch] = layout.image([_base(arch), *(shared or []), *own], arch=arch)
    top = layout.index(list(descs.values())) if len(archs) > 1 else descs[archs[0]]
    layout.tag(top, "t")
    reg.push(layout, "t", repo_tag)
    return descs


def _events(out: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _result(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, out.stderr
    results = [e for e in _events(out) if e["type"] == "result"]
    assert len(results) == 1
    data: dict[str, Any] = results[0]["data"]
    return data


def _images(home: BangerHome) -> list[dict[str, Any]]:
    out = home.banger("image", "list", "--json")
    assert out.returncode == 0, out.stderr
    images: list[dict[str, Any]] = json.loads(out.stdout)
    return images


def _leftovers(home: BangerHome) -> list[str]:
    """Staging entries and partial blobs: what a finished or failed pull must not leave."""
    staging = home.state_dir / "images" / ".staging"
    blobs = Path(home.env["XDG_CACHE_HOME"]) / "banger" / "oci" / "blobs" / "sha256"
    found = [p.name for p in staging.iterdir()] if staging.exists() else []
    found += [p.name for p in blobs.glob("*.partial")] if blobs.exists() else []
    return found


def _debugfs_ls(image: Path, path: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", f"ls -l {path}", str(image)], capture_output=True, text=True, check=True
    ).stdout


def test_pull_multi_arch_image_end_to_end(
    home: BangerHome, registry: LocalRegistry, tmp_path: Path
) -> None:
    descs = _push(registry, tmp_path, "test/app:v1", extra_layers=3)
    ref = f"{registry.host}/test/app:v1"
    started = time.monotonic()
    out = home.banger("image", "pull", ref, "--json", timeout=PULL_TIMEOUT_S)
    elapsed = time.monotonic() - started
    image = _result(out)
    assert image["name"] == "app-v1"
    assert image["managed"] is True
    assert image["source"] == ref
    assert image["source_digest"] == descs["amd64"]["digest"]
    assert image["init_path"] == "/sbin/banger-init"
    assert image["kernel_name"] is None
    rootfs = Path(image["rootfs_path"])
    assert rootfs == home.state_dir / "images" / "app-v1" / "rootfs.ext4"
    assert image["size_bytes"] == rootfs.stat().st_size >= 1 << 30
    listing = _debugfs_ls(rootfs, "/etc")
    assert "arch-amd64" in listing and "arch-arm64" not in listing
    assert "banger-init" in _debugfs_ls(rootfs, "/sbin")
    stages = [(e["stage"], e["state"]) for e in _events(out) if e["type"] == "stage"]
    finished = [s for s, state in stages if state == "ok"]
    assert finished == ["resolve", "fetch", "build", "publish"]
    details = [e.get("detail", "") for e in _events(out) if e.get("stage") == "fetch"]
    assert sum("layer " in d and "downloaded" in d for d in details) == 4
    assert [i["name"] for i in _images(home)] == ["app-v1"]
    assert _leftovers(home) == []
    print(f"pull of a 4-layer image: {elapsed:.2f} s")

    # Plain output, a name of our own; every blob now comes from the cache.
    gets = len(registry.blob_gets())
    again = home.banger("image", "pull", ref, "--name", "app2", timeout=PULL_TIMEOUT_S)
    assert again.returncode == 0, again.stderr
    assert "pulled image app2 from" in again.stdout
    assert "0 downloaded" in again.stdout and "4 cached" in again.stdout
    assert "no kernel recorded" in again.stdout
    assert len(registry.blob_gets()) == gets


def test_name_taken_is_refused_before_any_download(
    home: BangerHome, registry: LocalRegistry, tmp_path: Path
) -> None:
    _push(registry, tmp_path, "test/taken:v1", archs=("amd64",))
    first = home.banger("image", "pull", f"{registry.host}/test/taken:v1", "--name", "taken")
    assert first.returncode == 0, first.stderr
    _push(registry, tmp_path, "test/other:v1", archs=("amd64",))
    gets = len(registry.blob_gets())
    manifests = registry.log_path.read_text().count("/v2/test/other/manifests/")
    out = home.banger("image", "pull", f"{registry.host}/test/other:v1", "--name", "taken")
    assert out.returncode == 1
    assert "error: image 'taken' already exists" in out.stderr
    assert "hint:" in out.stderr
    assert len(registry.blob_gets()) == gets
    assert registry.log_path.read_text().count("/v2/test/other/manifests/") == manifests


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad:Ref"], "must be lowercase"),
        (["x@sha256:" + "A" * 64], "lowercase"),
        (["debian", "--name", "-bad"], "invalid image name"),
        (["debian", "--kernel-ref", "nope"], "kernel 'nope' not found"),
        (["debian", "--size", "1M"], "must be at least 64 MiB"),
    ],
)
def test_bad_requests_fail_before_contacting_a_registry(
    home: BangerHome, args: list[str], message: str
) -> None:
    out = home.banger("image", "pull", *args)
    assert out.returncode in {1, 2}, out.stderr
    assert message in out.stderr
    assert _images(home) == []


def test_missing_platform_and_corrupt_blob_publish_nothing(
    home: BangerHome, registry: LocalRegistry, tmp_path: Path
) -> None:
    _push(registry, tmp_path, "test/armonly:v1", archs=("arm64", "riscv64"))
    out = home.banger("image", "pull", f"{registry.host}/test/armonly:v1")
    assert out.returncode == 1
    assert "error: no linux/amd64 manifest in" in out.stderr
    assert "linux/arm64, linux/riscv64" in out.stderr

    descs = _push(registry, tmp_path, "test/corrupt:v1", archs=("amd64",))
    manifest = json.loads(registry.blob_data(descs["amd64"]["digest"]).read_bytes())
    victim = registry.blob_data(manifest["layers"][-1]["digest"])
    original = victim.read_bytes()
    victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        out = home.banger("image", "pull", f"{registry.host}/test/corrupt:v1")
    finally:
        victim.write_bytes(original)
    assert out.returncode == 1
    assert "does not match its digest: expected sha256:" in out.stderr
    assert _images(home) == []
    assert _leftovers(home) == []
    assert [p.name for p in (home.state_dir / "images").iterdir()] in ([], [".staging"])


def test_damaged_cache_blob_is_downloaded_again_and_said_so(
    home: BangerHome, registry: LocalRegistry, tmp_path: Path
) -> None:
    """Issue 14 item 20: a cached layer whose bytes rotted (same name and size) made every
    later pull fail with "corrupt gzip data" and a hint blaming the image."""
    descs = _push(registry, tmp_path, "test/rot:v1", archs=("amd64",))
    ref = f"{registry.host}/test/rot:v1"
    _result(home.banger("image", "pull", ref, "--name", "rot-a", "--json", timeout=PULL_TIMEOUT_S))
    manifest = json.loads(registry.blob_data(descs["amd64"]["digest"]).read_bytes())
    layer = manifest["layers"][0]["digest"].removeprefix("sha256:")
    cached = Path(home.env["XDG_CACHE_HOME"]) / "banger" / "oci" / "blobs" / "sha256" / layer
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))

    out = home.banger("image", "pull", ref, "--name", "rot-b", "--json", timeout=PULL_TIMEOUT_S)
    image = _result(out)
    assert image["name"] == "rot-b"
    details = " ".join(e.get("detail") or "" for e in _events(out) if e.get("stage") == "fetch")
    assert "damaged" in details and "local cache" in details
    assert "corrupt" not in out.stderr
    assert sha256_of(cached) == layer


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_overlapping_pulls_share_blobs_and_download_each_once_e117(
    home: BangerHome, registry: LocalRegistry, tmp_path: Path
) -> None:
    shared = [tar_layer({f"usr/shared-{i}": os.urandom(3 << 20)}) for i in range(3)]
    _push(registry, tmp_path, "test/one:v1", shared=shared, archs=("amd64",))
    _push(registry, tmp_path, "test/two:v1", shared=shared, archs=("amd64",))
    assert home.banger("daemon", "start").returncode == 0
    before = registry.blob_gets()
    with ThreadPoolExecutor(2) as pool:
        outs = list(
            pool.map(
                lambda r: home.banger("image", "pull", r, "--json", timeout=PULL_TIMEOUT_S),
                (f"{registry.host}/test/one:v1", f"{registry.host}/test/two:v1"),
            )
        )
    names = sorted(_result(o)["name"] for o in outs)
    assert names == ["one-v1", "two-v1"]
    new = registry.blob_gets()[len(before) :]
    assert len(new) == len(set(new)), "a blob was downloaded twice"
    # 2 configs + 1 base (the same bytes in both) + 3 shared + 2 * 2 own layers
    assert len(new) == 10
    assert _leftovers(home) == []


def test_same_name_pulled_twice_at_once_gives_one_image_e114(
    home: BangerHome, registry: LocalRegistry, tmp_path: Path
) -> None:
    _push(registry, tmp_path, "test/race-a:v1", archs=("amd64",))
    _push(registry, tmp_path, "test/race-b:v1", archs=("amd64",))
    assert home.banger("daemon", "start").returncode == 0
    with ThreadPoolExecutor(2) as pool:
        outs = list(
            pool.map(
                lambda r: home.banger("image", "pull", r, "--name", "race", timeout=PULL_TIMEOUT_S),
                (f"{registry.host}/test/race-a:v1", f"{registry.host}/test/race-b:v1"),
            )
        )
    codes = sorted(o.returncode for o in outs)
    assert codes == [0, 1], [o.stderr for o in outs]
    loser = next(o for o in outs if o.returncode == 1)
    assert "image 'race' already exists" in loser.stderr
    images = _images(home)
    assert [i["name"] for i in images] == ["race"]
    assert sorted(p.name for p in (home.state_dir / "images").iterdir()) == [".staging", "race"]
    assert _leftovers(home) == []


def _wait_gone(pid: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"daemon {pid} survived its failpoint"
        time.sleep(0.02)


@pytest.mark.parametrize("point", FAILPOINTS)
def test_kill_9_at_each_pull_stage_then_pull_again_e85(
    home: BangerHome, registry: LocalRegistry, tmp_path: Path, point: str
) -> None:
    repo = f"test/crash-{point}:v1"
    descs = _push(registry, tmp_path, repo, extra_layers=2, archs=("amd64",))
    ref = f"{registry.host}/{repo}"
    crashing = BangerHome(home.root, {**home.env, "BANGER_FAILPOINT": f"pull:{point}"})
    out = crashing.banger("image", "pull", ref, "--name", "crash", timeout=PULL_TIMEOUT_S)
    assert out.returncode == 1, out.stdout
    pid = home.daemon_pid()
    assert pid is not None
    _wait_gone(pid)
    # What the crash left, before any restart cleans up: the stage really was reached.
    staging = home.state_dir / "images" / ".staging"
    blobs = Path(home.env["XDG_CACHE_HOME"]) / "banger" / "oci" / "blobs" / "sha256"
    if point == "fetch":
        assert list(blobs.glob("*.partial")), "no partial blob: the failpoint missed"
    if point in {"build", "built"}:
        assert list(staging.glob("crash.*.partial")), "no staging dir: the failpoint missed"
    # The tree is flattened in RAM (banger.host.ramscratch), out of the staging dir's reach.
    scratch = list(Path("/dev/shm").glob(f"banger-scratch.{os.getuid()}.{pid}.*"))
    if point == "build":
        assert scratch, "no RAM scratch: the failpoint missed it"
    if point == "renamed":
        assert (home.state_dir / "images" / "crash" / "rootfs.ext4").is_file()

    # Restarted (without the failpoint): no half image is ever listed ...
    assert _images(home) == []
    assert not [p for p in scratch if p.exists()], "the daemon's start left a dead tree in RAM"
    # ... and pulling again works with no manual cleanup.
    image = _result(
        home.banger("image", "pull", ref, "--name", "crash", "--json", timeout=PULL_TIMEOUT_S)
    )
    assert image["source_digest"] == descs["amd64"]["digest"]
    assert [i["name"] for i in _images(home)] == ["crash"]
    assert Path(image["rootfs_path"]).is_file()
    _wait_no_leftovers(home)


def _wait_no_leftovers(home: BangerHome, timeout_s: float = 30) -> None:
    # The flatten worker dies with the daemon (PDEATHSIG, ADVERSARIAL 94; its own test is
    # tests/component/test_flatten_worker_death.py), but its exit is asynchronous to the
    # kill: give it a moment before looking.
    deadline = time.monotonic() + timeout_s
    while (left := _leftovers(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == []
