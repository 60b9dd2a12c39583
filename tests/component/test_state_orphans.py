"""Every published dir under the state dir has a row, or doctor names it and a documented
command removes it (issue 14 items 4 and 5; ADVERSARIAL 85, 92).

kill -9 through ``BANGER_FAILPOINT``: ``pull:renamed`` (image dir in place, no row yet) and
``kernel:swapped`` (``kernel import --force`` swapped the new files in, old row still there).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.client.launcher import pid_alive
from tests.conftest import BangerHome, stop_daemon_of
from tests.kernelfiles import SYNTH_V, synthetic_tree
from tests.registry import (
    LocalRegistry,
    OciLayout,
    have_registry_tools,
    running_registry,
    tar_layer,
)

pytestmark = pytest.mark.component


def _wait_gone(pid: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"daemon {pid} survived its failpoint"
        time.sleep(0.05)


def _crash(home: BangerHome, point: str, *args: str) -> None:
    crashing = BangerHome(home.root, {**home.env, "BANGER_FAILPOINT": point})
    out = crashing.banger(*args, timeout=180)
    assert out.returncode != 0, out.stdout
    pid = home.daemon_pid()
    assert pid is not None
    _wait_gone(pid)


def _doctor_state(home: BangerHome) -> dict[str, Any]:
    out = home.banger("doctor", "--json", timeout=120)
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    states = [e for e in events if e.get("stage") == "state" and e.get("state") != "running"]
    assert len(states) == 1, out.stdout
    return states[0]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    if not have_registry_tools():
        pytest.skip("docker-registry/skopeo missing")
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def test_image_dir_left_by_a_crash_after_rename_is_reported_and_removable(
    home: BangerHome, registry: LocalRegistry, tmp_path: Path
) -> None:
    """Item 4: ``pull:renamed`` left an image dir no command could see or remove."""
    layout = OciLayout(tmp_path / "layout")
    desc = layout.image(
        [tar_layer({"bin/": None, "bin/sh": b"#!/bin/false\n", "etc/": None})], arch="amd64"
    )
    layout.tag(desc, "t")
    registry.push(layout, "t", "test/orphan:v1")
    ref = f"{registry.host}/test/orphan:v1"
    _crash(home, "pull:renamed", "image", "pull", ref, "--name", "crash")
    orphan = home.state_dir / "images" / "crash"
    assert (orphan / "rootfs.ext4").is_file()

    state = _doctor_state(home)
    assert state["state"] == "warn"
    assert str(orphan) in state["detail"] and "without a row" in state["detail"]
    assert "`banger image delete crash`" in state["hint"]
    listed = json.loads(home.banger("image", "list", "--json").stdout)
    assert listed == []

    out = home.banger("image", "delete", "crash")
    assert out.returncode == 0, out.stderr
    assert not orphan.exists()
    assert _doctor_state(home)["state"] == "ok"
    # A name with neither row nor dir is still "not found".
    again = home.banger("image", "delete", "crash")
    assert again.returncode == 1 and "not found" in again.stderr


def test_kernel_dir_without_a_row_is_reported_and_removable(
    home: BangerHome, tmp_path: Path
) -> None:
    """Item 4, kernels: a kernel dir with no row is named by doctor, removed by ``kernel rm``."""
    assert home.banger("daemon", "start").returncode == 0
    orphan = home.state_dir / "kernels" / "lost"
    orphan.mkdir(parents=True)
    (orphan / "vmlinux").write_bytes(b"\0" * 8192)
    state = _doctor_state(home)
    assert state["state"] == "warn" and str(orphan) in state["detail"]
    assert "`banger kernel rm lost`" in state["hint"]
    out = home.banger("kernel", "rm", "lost")
    assert out.returncode == 0, out.stderr
    assert not orphan.exists()
    # Never a path: a traversal name is refused, the dir above untouched.
    out = home.banger("kernel", "rm", "..")
    assert out.returncode != 0
    assert (home.state_dir / "kernels").is_dir()


def test_crash_after_a_forced_kernel_swap_is_reconciled_from_the_manifest(
    home: BangerHome, tmp_path: Path
) -> None:
    """Item 5: kill -9 right after ``kernel import --force`` swapped the files left the
    old row (no initrd) over the new files (initrd + modules) for good."""
    first = tmp_path / "one"
    first.mkdir()
    from tests.kernelfiles import fake_elf

    (first / "vmlinux").write_bytes(fake_elf(50_000))
    assert home.banger("kernel", "import", "k", "--from", str(first)).returncode == 0
    old = json.loads(home.banger("kernel", "show", "k", "--json").stdout)
    assert not old["has_initrd"] and not old["has_modules"]

    second = synthetic_tree(tmp_path / "two")
    (second / "boot" / f"initrd.img-{SYNTH_V}").write_bytes(b"my initrd")
    stop_daemon_of(home)  # the failpoint is read by the daemon the next command starts
    _crash(home, "kernel:swapped", "kernel", "import", "k", "--from", str(second), "--force")
    kdir = home.state_dir / "kernels" / "k"
    assert (kdir / "initrd.img").is_file() and (kdir / "modules").is_dir()

    new = json.loads(home.banger("kernel", "show", "k", "--json").stdout)  # restarted
    manifest = json.loads((kdir / "manifest.json").read_text())
    assert new["has_initrd"] and new["has_modules"]
    assert new["version"] == SYNTH_V
    assert new["sha256"] == manifest["sha256"] != old["sha256"]
    assert new["source"] == manifest["source"]
    logs = home.banger("daemon", "logs", "--json", "-n", "400").stdout
    # Once: for the crash, not at every start for a row that agreed all along.
    assert logs.count("kernel row disagreed with its manifest") == 1
