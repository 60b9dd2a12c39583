"""Interrupting `vm run` and `vm create` mid-boot, with real guests (issue 14 item 6).

Ctrl-C (SIGINT) and a closed terminal (SIGHUP) reach the CLI while the tiny guest is
booting under QEMU/TCG: with ``--rm`` no VM is left (``vm list --json`` empty after a
bounded wait), without it the message names the VM that is kept and how to delete it.
The daemon runs in a netns of the test's own (tests/vmenv.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import BIN
from tests.vmenv import VmEnv, vm_env

TINY = ("--image", "tiny", "--vcpu", "1", "--memory", "256", "--disk-size", "1G")
GONE_WITHIN_S = 60


@pytest.fixture(scope="module")
def env() -> Iterator[VmEnv]:
    with vm_env("tap_pool_size = 2\n") as e:
        e.add_test_guests()
        yield e


def _interrupt_after_boot(env: VmEnv, sig: signal.Signals, *args: str) -> tuple[int, str]:
    """Start ``banger ARGS``, send ``sig`` once the boot stage is done (the guest is then
    still coming up); its exit status and stderr."""
    proc = env.ns.popen(
        [str(BIN / "banger"), *args],
        env=env.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("✓ boot"):
            break
    else:
        raise AssertionError("no boot stage:\n" + "".join(seen) + proc.communicate()[1])
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=GONE_WITHIN_S + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def _vms(env: VmEnv) -> list[str]:
    return [vm["name"] for vm in json.loads(env.ok("vm", "list", "--json"))]


def _none_left(env: VmEnv) -> bool:
    deadline = time.monotonic() + GONE_WITHIN_S
    while _vms(env):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["sigint", "sighup"])
def test_run_rm_interrupted_mid_boot_leaves_no_vm(env: VmEnv, sig: signal.Signals) -> None:
    name = f"rm-{sig.name.lower()}"
    code, err = _interrupt_after_boot(env, sig, "vm", "run", "--rm", "--name", name, *TINY)
    assert code == 130, err
    assert f"deleted {name}" in err, err
    assert _none_left(env), _vms(env)


def test_run_rm_without_a_name_interrupted_leaves_no_vm(env: VmEnv) -> None:
    code, err = _interrupt_after_boot(env, signal.SIGINT, "vm", "run", "--rm", *TINY)
    assert code == 130 and "deleted " in err, err
    assert _none_left(env), _vms(env)


@pytest.mark.parametrize("command", ["run", "create"])
def test_interrupted_without_rm_names_the_kept_vm(env: VmEnv, command: str) -> None:
    name = f"kept-{command}"
    code, err = _interrupt_after_boot(env, signal.SIGINT, "vm", command, "--name", name, *TINY)
    assert code == 130, err
    assert f"VM {name} is kept" in err and f"banger vm delete --force {name}" in err, err
    assert "interrupted\n" not in err  # said once, with what became of the VM
    # The daemon finishes the create: the VM comes up and stays.
    deadline = time.monotonic() + 300
    while json.loads(env.ok("vm", "show", name, "--json"))["state"] != "running":
        assert time.monotonic() < deadline, "the kept VM never came up"
        time.sleep(1)
    env.ok("vm", "delete", "--force", name)
