"""The warm pool with real guests under QEMU/TCG in a netns (issue 12): `vm run` claims a
ready VM (no boot stage; the new name resolves in the daemon's DNS and is the guest's
hostname), the pool refills, and a daemon killed with SIGKILL and restarted finds its
pool VMs again (adopted, not listed, still claimable).

The tiny busybox/dropbear guest has no agent, so the claim renames it over SSH; the
agent's exec channel is what the Debian guests use (tests/services/test_pool.py covers
the claim's logic with fakes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.vmenv import VmEnv, vm_env

CONFIG = (
    'default_image_name = "tiny"\ntap_pool_size = 2\n'
    '[vm_defaults]\nvcpu = 1\nmemory_mib = 256\ndisk_size = "1G"\n'
)
BOOT_STAGES = ("reserve", "disks", "boot", "wait-ready")


@pytest.fixture(scope="module")
def env() -> Iterator[VmEnv]:
    with vm_env(CONFIG, env_vars={"BANGER_POOL_SIZE": "1"}) as e:
        e.add_test_guests()
        yield e


def pool_status(env: VmEnv) -> dict[str, Any]:
    reply: dict[str, Any] = env.json("pool", "status")
    return reply


def wait_ready(env: VmEnv, *, timeout_s: float = 240) -> list[str]:
    """The pool VMs once the pool is full."""
    deadline = time.monotonic() + timeout_s
    while True:
        [tiny] = pool_status(env)["images"]
        if tiny["ready"] == tiny["wanted"] == 1:
            names: list[str] = tiny["vms"]
            return names
        assert tiny["last_error"] is None, tiny
        assert time.monotonic() < deadline, f"the pool did not fill: {tiny}"
        time.sleep(0.5)


def stages(stdout: str) -> list[str]:
    return [line.split()[1].rstrip(":") for line in stdout.splitlines() if line.startswith("✓ ")]


def test_vm_run_claims_a_ready_vm_renamed_and_the_pool_refills(env: VmEnv) -> None:
    [pooled] = wait_ready(env)
    assert env.json("vm", "list") == [], "pool VMs are not the user's"
    assert env.resolve(f"{pooled}.vm") == "NXDOMAIN"
    status = env.ok("daemon", "status")
    assert "pool:" in status and "tiny: 1/1 ready" in status

    started = time.monotonic()
    out = env.banger("vm", "run", "--name", "warm", "--", "hostname")
    took = time.monotonic() - started
    assert out.returncode == 0, out.stdout + out.stderr
    got = stages(out.stdout)
    assert got == ["claim"], out.stdout  # no reserve/disks/boot/wait-ready: no boot
    assert out.stdout.strip().splitlines()[-1] == "warm", "the guest's hostname is the new name"
    vm = env.json("vm", "show", "warm")
    assert vm["state"] == "running"
    assert env.resolve("warm.vm") == vm["ip"]
    assert env.ok("vm", "ssh", "warm", "--", "cat", "/etc/hostname").strip() == "warm"
    assert [v["name"] for v in env.json("vm", "list")] == ["warm"]
    print(f"\nvm run -- hostname with a warm pool (tiny guest, ssh): {took:.2f}s")

    [refilled] = wait_ready(env)
    assert refilled != pooled
    env.ok("vm", "delete", "--force", "warm")


def test_a_request_no_pool_vm_matches_boots_cold_and_keeps_the_pool(env: VmEnv) -> None:
    [pooled] = wait_ready(env)
    out = env.banger("vm", "create", "--name", "cold", "--memory", "384")
    assert out.returncode == 0, out.stdout + out.stderr
    assert tuple(stages(out.stdout)) == BOOT_STAGES, out.stdout
    assert pool_status(env)["images"][0]["vms"] == [pooled]
    env.ok("vm", "delete", "--force", "cold")


def test_a_bigger_disk_on_a_guest_without_resize2fs_boots_cold_and_keeps_the_pool(
    env: VmEnv,
) -> None:
    """The busybox guest cannot grow an ext4 online: it is asked first (over SSH), and its
    pool VM is left as it was."""
    [pooled] = wait_ready(env)
    out = env.banger("vm", "create", "--name", "big", "--disk-size", "2G")
    assert out.returncode == 0, out.stdout + out.stderr
    assert tuple(stages(out.stdout)) == BOOT_STAGES, out.stdout
    assert f"{pooled} cannot grow its work disk" in out.stdout, out.stdout
    assert env.json("vm", "show", "big")["disk_size_bytes"] == 2 * 2**30
    assert pool_status(env)["images"][0]["vms"] == [pooled]
    env.ok("vm", "delete", "--force", "big")


def test_pool_vms_survive_a_daemon_kill_and_stay_claimable(env: VmEnv) -> None:
    [pooled] = wait_ready(env)
    env.kill_daemon()
    env.start_daemon()
    assert wait_ready(env, timeout_s=30) == [pooled], "the living pool VM was adopted"
    assert env.json("vm", "list") == []
    out = env.banger("vm", "create", "--name", "after")
    assert out.returncode == 0, out.stdout + out.stderr
    assert stages(out.stdout) == ["claim"], out.stdout
    assert env.ok("vm", "ssh", "after", "--", "hostname").strip() == "after"
    env.ok("vm", "delete", "--force", "after")
    wait_ready(env)


def test_drain_removes_pool_vms_and_fill_brings_them_back(env: VmEnv) -> None:
    [pooled] = wait_ready(env)
    drained = env.json("pool", "drain")
    assert drained["removed"] == [pooled]
    assert pool_status(env)["images"][0]["ready"] == 0
    env.ok("pool", "fill")
    assert wait_ready(env) != [pooled]
