"""The warm pool with banger's guest agent (issue 12): a real Debian guest under QEMU/TCG in
a netns of the test's own, claimed by `vm run` with no boot stage, renamed through the
agent's exec channel (the one connection the daemon keeps per VM, which the command then
runs on), the new name being the guest's hostname and resolving in the daemon's DNS, and
the pool refilling after each claim.

The image is the agent test image (``tests.guests.debian_agent_rootfs``: Debian bookworm
with banger-agent and sshd, built once from Debian's packages into the test cache), not
the product's default image: that one is built by `banger image pull` from a registry,
which a test here may not reach; both carry the same agent and the same hostname files.
The tiny agentless guest's claim over SSH is tests/e2e/test_pool.py.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests import guests
from tests.vmenv import VmEnv, vm_env

CONFIG = (
    'default_image_name = "deb-agent"\ntap_pool_size = 2\n'
    '[vm_defaults]\nvcpu = 2\nmemory_mib = 1024\ndisk_size = "1G"\n'
)


@pytest.fixture(scope="module")
def env() -> Iterator[VmEnv]:
    try:
        cached = guests.debian_agent_rootfs()
    except Exception as exc:  # no apt here: the image cannot be built
        pytest.skip(f"the Debian agent test image is not built here: {exc}")
    with vm_env(CONFIG, env_vars={"BANGER_POOL_SIZE": "1"}) as e:
        # A copy of its own: every refill reads the image, and another run may rebuild
        # the shared cache (under a new key, the old one removed) meanwhile.
        rootfs = e.home.root / "deb-agent.ext4"
        subprocess.run(["cp", "--sparse=always", str(cached), str(rootfs)], check=True)
        e.add_test_guests(tiny=False)
        e.ok("image", "register", "deb-agent", "--rootfs", str(rootfs), "--kernel-ref", "cloud")
        yield e


def wait_ready(env: VmEnv, *, timeout_s: float = 600) -> str:
    """The pool VM once the pool is full (a Debian boot under TCG on a shared machine)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status: dict[str, Any] = env.json("pool", "status")
        [deb] = status["images"]
        if deb["ready"] == deb["wanted"] == 1:
            name: str = deb["vms"][0]
            return name
        assert deb["last_error"] is None, deb
        assert time.monotonic() < deadline, f"the pool did not fill: {deb}"
        time.sleep(1)


def stage_lines(stdout: str) -> dict[str, str]:
    """Each finished stage's name → its line."""
    found = {}
    for line in stdout.splitlines():
        if line[:2] in ("✓ ", "! "):
            found[line.split()[1].rstrip(":")] = line
    return found


@pytest.mark.timeout(1800)
def test_vm_run_claims_a_debian_pool_vm_through_the_agent_and_the_pool_refills(
    env: VmEnv,
) -> None:
    pooled = wait_ready(env)
    assert env.json("vm", "list") == []

    started = time.monotonic()
    out = env.banger("vm", "run", "--name", "warm", "--", "hostname")
    took = time.monotonic() - started
    assert out.returncode == 0, out.stdout + out.stderr
    lines = stage_lines(out.stdout)
    assert list(lines) == ["claim"], out.stdout  # no reserve/disks/boot/wait-ready
    assert "through the agent" in lines["claim"], lines["claim"]
    assert "using ssh" not in out.stderr, "the command ran through the agent"
    assert out.stdout.strip().splitlines()[-1] == "warm", "the guest's hostname is the new name"
    vm = env.json("vm", "show", "warm")
    assert env.resolve("warm.vm") == vm["ip"]
    assert env.resolve(f"{pooled}.vm") == "NXDOMAIN"
    assert env.ok("vm", "exec", "warm", "--", "cat", "/etc/hostname").strip() == "warm"
    print(f"\nvm run --name warm -- hostname, warm pool (Debian, agent): {took:.2f}s")
    env.ok("vm", "delete", "--force", "warm")

    refilled = wait_ready(env)
    assert refilled != pooled
    started = time.monotonic()
    out = env.banger("vm", "run", "--rm", "--", "true")
    took = time.monotonic() - started
    assert out.returncode == 0, out.stdout + out.stderr
    assert list(stage_lines(out.stdout)) == ["claim"], out.stdout
    assert env.json("vm", "list") == [], "--rm deleted the claimed VM"
    print(f"vm run --rm -- true, warm pool (Debian, agent): {took:.2f}s")
    assert wait_ready(env) not in (pooled, refilled), "the pool refilled again"


@pytest.mark.timeout(1800)
def test_vm_run_with_a_bigger_disk_claims_and_grows_the_mounted_work_disk(env: VmEnv) -> None:
    """The pool's disk is 1G; `--disk-size 3G` still claims (no boot stage): the work-disk
    file, QEMU's drive (block_resize) and the mounted ext4 (resize2fs online, through the
    agent) are grown at claim, and `df` in the guest sees it."""
    wait_ready(env)
    started = time.monotonic()
    out = env.banger("vm", "run", "--name", "big", "--disk-size", "3G", "--", "df", "-B1", "/root")
    took = time.monotonic() - started
    assert out.returncode == 0, out.stdout + out.stderr
    lines = stage_lines(out.stdout)
    assert list(lines) == ["claim"], out.stdout  # no reserve/disks/boot/wait-ready
    assert "work disk grown to 3G" in lines["claim"], lines["claim"]
    [df] = [line for line in out.stdout.splitlines() if line.startswith("/dev/vdb")]
    size = int(df.split()[1])
    # ext4's own metadata (journal, inode tables) takes a little of the 3 GiB.
    assert 2.8 * 2**30 < size <= 3 * 2**30, df
    assert env.json("vm", "show", "big")["disk_size_bytes"] == 3 * 2**30
    work = env.home.root / "state" / "banger" / "vms" / "big" / "work.ext4"
    stat = work.stat()
    assert stat.st_size == 3 * 2**30
    print(f"\nvm run --disk-size 3G -- df, warm pool grown from 1G (Debian, agent): {took:.2f}s")
    print(f"work disk on the host after the grow: {stat.st_blocks * 512 / 2**20:.1f} MiB")
    # Sparse: the guest kernel's online resize zeroes the new inode tables as holes (1.2
    # MiB here, 1.3 MiB 30 s later), it does not write the 2 GiB it added.
    assert stat.st_blocks * 512 < 64 * 2**20
    env.ok("vm", "delete", "--force", "big")
