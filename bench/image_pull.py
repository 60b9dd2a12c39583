"""Image pull: `banger image pull` of a Debian image from a local registry, from start to
the published ext4 (fresh daemon home, so a cold blob cache), vs `skopeo copy` +
`umoci unpack` + `mkfs.ext4 -d` of the same image into an image of the same size.

The image is the cached debootstrapped Debian of tests/guests.py turned into a one-layer
OCI layout (gzip): the ext4 is loop-mounted read-only (root), its tree tarred with GNU tar
(numeric owners, xattrs, device nodes, hard links; lost+found left out). The layout is
cached as ``<test cache>/debian-oci/<key>/layout``, so only the first run pays for it.
The registry is Debian's `docker-registry` on 127.0.0.1 (tests/registry.py); the daemon
runs on the host like bench/cli_latency.py's and only ever talks to 127.0.0.1.
Run: bench/run [--quick] (or `.venv/bin/python -m bench.image_pull --runs N`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests import guests
from tests.conftest import BangerHome, make_home, stop_daemon_of
from tests.registry import (
    LAYER_GZIP,
    OCI_CONFIG,
    OCI_MANIFEST,
    LocalRegistry,
    OciLayout,
    running_registry,
)

OCI_RECIPE = "o1"  # bump when the layout recipe below changes
TAG = "bench"
REPO_TAG = "debian:bench"
PULL_TIMEOUT_S = 900


# -- the OCI layout, built once from the cached Debian rootfs --------------------------


def debian_layout() -> Path:
    rootfs = guests.debian_rootfs()
    key = f"{OCI_RECIPE}-{guests.DEBIAN_RECIPE}"
    # tests/guests.py's cache machinery: locked, built in a temp dir, renamed into place.
    return guests._artifact("debian-oci", key, lambda tmp: _build_layout(tmp, rootfs)) / "layout"


def _sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()


def _build_layout(tmp: Path, rootfs: Path) -> None:
    mnt, layer_tar = tmp / "mnt", tmp / "layer.tar"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "ro,loop,noload", str(rootfs), str(mnt)], check=True)
    try:
        top = sorted(p.name for p in mnt.iterdir() if p.name != "lost+found")
        subprocess.run(
            [
                "tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--sort=name",
                "-C", str(mnt), "-cf", str(layer_tar), *top,
            ],
            check=True,
        )  # fmt: skip
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    mnt.rmdir()
    diff_id = _sha256_file(layer_tar)
    layer_gz = tmp / "layer.tar.gz"
    with layer_gz.open("wb") as out:
        subprocess.run(["gzip", "-n", "-6", "-c", str(layer_tar)], stdout=out, check=True)
    layer_tar.unlink()
    layout = OciLayout(tmp / "layout")
    digest = _sha256_file(layer_gz)
    layer = {"mediaType": LAYER_GZIP, "digest": digest, "size": layer_gz.stat().st_size}
    layer_gz.rename(layout.root / "blobs" / "sha256" / digest.split(":")[1])
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/bash"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": layout.blob(json.dumps(config).encode(), OCI_CONFIG),
        "layers": [layer],
    }
    layout.tag(layout.blob(json.dumps(manifest).encode(), OCI_MANIFEST), TAG)


def _layer_bytes(layout: Path) -> int:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    return sum(int(layer["size"]) for layer in manifest["layers"])


def push_layout(layout: Path, reg: LocalRegistry) -> None:
    # LocalRegistry.push wants an OciLayout, whose constructor rewrites index.json.
    subprocess.run(
        [
            "skopeo", "copy", "--preserve-digests", "--dest-tls-verify=false",
            f"oci:{layout}:{TAG}", f"docker://{reg.host}/{REPO_TAG}",
        ],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


# -- the two measurements ---------------------------------------------------------------


def _fsck(image: Path) -> None:
    out = subprocess.run(["e2fsck", "-fn", str(image)], check=False, capture_output=True, text=True)
    assert out.returncode == 0, f"e2fsck of {image} failed:\n{out.stdout}{out.stderr}"


def _banger_pull(home: BangerHome, ref: str) -> tuple[float, dict[str, int], dict[str, Any]]:
    """Seconds from `image pull` start to its exit (image published), stage ms, the row."""
    started = home.banger("daemon", "start", timeout=60)
    assert started.returncode == 0, f"daemon start failed:\n{started.stderr}"
    try:
        t0 = time.perf_counter()
        out = home.banger("image", "pull", ref, "--name", "debian-bench", "--json", timeout=900)
        took = time.perf_counter() - t0
        assert out.returncode == 0, f"image pull failed:\n{out.stdout}\n{out.stderr}"
        events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        row = next(e["data"] for e in events if e.get("type") == "result")
        stages = {
            e["stage"]: int(e["elapsed_ms"])
            for e in events
            if e.get("type") == "stage" and e.get("state") == "ok" and "elapsed_ms" in e
        }
        listed = json.loads(home.banger("image", "show", "debian-bench", "--json").stdout)
        assert listed["managed"], f"pulled image not managed: {listed}"
        _fsck(Path(row["rootfs_path"]))
        return took, stages, row
    finally:
        stop_daemon_of(home)


def _baseline(work: Path, ref: str, size: int) -> tuple[float, dict[str, float]]:
    """skopeo copy + umoci unpack + mkfs.ext4 -d into a sparse image of ``size`` bytes."""
    oci, bundle, image = work / "oci", work / "bundle", work / "rootfs.ext4"
    steps = {
        "copy": ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{oci}:{TAG}"],
        "unpack": ["umoci", "unpack", "--image", f"{oci}:{TAG}", str(bundle)],
        "mkfs": [
            "sh", "-c", 'truncate -s "$1" "$2" && mkfs.ext4 -q -F -E root_owner=0:0 -d "$3" "$2"',
            "mkfs", str(size), str(image), str(bundle / "rootfs"),
        ],
    }  # fmt: skip
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    for name, argv in steps.items():
        t = time.perf_counter()
        out = subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=PULL_TIMEOUT_S
        )
        assert out.returncode == 0, f"baseline {name} failed:\n{out.stdout}{out.stderr}"
        times[name] = time.perf_counter() - t
    took = time.perf_counter() - t0
    _fsck(image)
    return took, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="three runs of each (CI)")
    parser.add_argument("--runs", type=int, default=0)
    args = parser.parse_args()
    # Three even in CI: the baseline's `umoci unpack` alone varies from 3.3 to 4.7 s
    # between runs here, and a run pair costs under 10 s.
    runs = args.runs or (3 if args.quick else 5)
    t0 = time.perf_counter()
    layout = debian_layout()
    prepared = time.perf_counter() - t0
    banger_s: list[float] = []
    base_s: list[float] = []
    stages: dict[str, list[int]] = {}
    steps: dict[str, list[float]] = {}
    size = 0
    # A short base path keeps the daemon's socket path far below the sun_path limit.
    with (
        tempfile.TemporaryDirectory(prefix="bgr-bench-", dir="/tmp") as tmp,
        running_registry(Path(tmp) / "registry") as reg,
    ):
        push_layout(layout, reg)
        ref = f"{reg.host}/{REPO_TAG}"
        for i in range(runs):
            root = Path(tmp) / f"h{i}"
            took, stage_ms, row = _banger_pull(make_home(root), ref)
            banger_s.append(took)
            for name, ms in stage_ms.items():
                stages.setdefault(name, []).append(ms)
            size = int(row["size_bytes"])
            shutil.rmtree(root, ignore_errors=True)
            work = Path(tmp) / f"b{i}"
            work.mkdir()
            took, times = _baseline(work, ref, size)
            base_s.append(took)
            for name, secs in times.items():
                steps.setdefault(name, []).append(secs)
            shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    base, ours = med(base_s), med(banger_s)
    mib = 1024 * 1024
    print(
        f"bench image_pull: Debian {guests.DEBIAN_SUITE} (1 layer, "
        f"{_layer_bytes(layout) / mib:.1f} MiB gzip) from a local registry to a "
        f"{size / mib:.0f} MiB ext4, median of {runs} run(s)"
        + (f" [OCI layout built in {prepared:.1f} s, now cached]" if prepared > 5 else "")
    )
    detail = ", ".join(f"{n} {med(v):.2f} s" for n, v in steps.items())
    print(f"  skopeo+umoci+mkfs.ext4 -d (baseline) {base:7.2f} s   x1.00   ({detail})")
    detail = ", ".join(f"{n} {med(v) / 1000:.2f} s" for n, v in stages.items())
    print(f"  banger image pull, cold cache        {ours:7.2f} s   x{ours / base:.2f}   ({detail})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
