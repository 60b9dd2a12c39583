"""``banger vm exec`` end to end (issue 12): the real CLI, the real daemon in a netns of the
test's own (tests/vmenv.py), the Debian test guest with banger's agent, QEMU/TCG over
virtio-serial — and once over Firecracker's vsock (``CONNECT 53``) with the stand-in.

Covers: a TCG guest without ASLR and on a TSC clock; exit codes 0, 3 and a signal (128+N);
stderr apart from stdout; 1 MiB of stdin from a pipe (sha256); ``--cwd``/``--env``; Ctrl-C
to the CLI reaching a ``trap`` in the guest, the CLI exiting with the command's status;
``--timeout`` (124); a CLI killed with SIGKILL mid-command → the guest command is gone
shortly after; ``head -c 100M /dev/zero`` exact with the daemon's RSS growing < 20 MiB
(ADVERSARIAL 100: a guest flooding output is held to a window); a missing program (127); a
stopped VM (clear error and hint), also right after its VMM was killed under a running
command (ADVERSARIAL 99); ``vm run -- CMD`` going through the agent (no SSH session), and
falling back to SSH for a guest without the agent (said on stderr).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import guests
from tests.conftest import BIN
from tests.vmenv import VmEnv, vm_env

STANDIN = Path(__file__).resolve().parents[1] / "fcstandin" / "firecracker"
DEBIAN = ["--vcpu", "2", "--memory", "1024", "--disk-size", "1G"]
MIB = 1024 * 1024


def _register(env: VmEnv, *, tiny: bool = False) -> None:
    env.add_test_guests(tiny=tiny)
    rootfs = str(guests.debian_agent_rootfs())
    env.ok("image", "register", "deb-agent", "--rootfs", rootfs, "--kernel-ref", "cloud")


@pytest.fixture(scope="module")
def env() -> Iterator[VmEnv]:
    with vm_env() as env:
        _register(env, tiny=True)
        env.ok("vm", "create", "--name", "ex", "--image", "deb-agent", *DEBIAN, timeout=900)
        yield env


def cli(env: VmEnv, *args: str, **kw: object) -> subprocess.Popen[bytes]:
    return env.ns.popen([str(BIN / "banger"), *args], env=env.env, **kw)  # type: ignore[arg-type]


def run(
    env: VmEnv, *args: str, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    return env.ns.run(
        [str(BIN / "banger"), *args],
        env=env.env,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(900)
def test_exit_codes_streams_stdin_cwd_env(env: VmEnv) -> None:
    out = run(env, "vm", "exec", "ex", "--", "true")
    assert out.returncode == 0, out.stderr
    out = run(env, "vm", "exec", "ex", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (out.returncode, out.stdout, out.stderr) == (3, b"out\n", b"err\n")
    out = run(env, "vm", "exec", "ex", "--", "sh", "-c", "kill -TERM $$")
    assert out.returncode == 128 + 15
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    out = run(env, "vm", "exec", "ex", "--", "sha256sum", stdin=data)
    assert (
        out.returncode == 0 and out.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    )
    out = run(
        env, "vm", "exec", "ex", "--cwd", "/tmp", "--env", "A=1 2", "--env", "B=x=y",
        "--", 'pwd; echo "$A|$B"; hostname',
    )  # fmt: skip
    assert (out.returncode, out.stdout) == (0, b"/tmp\n1 2|x=y\nex\n"), out.stderr
    out = run(env, "vm", "exec", "ex", "--", "/no/such/program")
    assert out.returncode == 127 and b"error:" in out.stderr


@pytest.mark.timeout(900)
def test_the_plain_form_takes_the_fast_path(env: VmEnv) -> None:
    """docs/explanation/cli-startup.md: with the daemon up, ``vm exec NAME -- CMD`` never
    loads click; the calls above all went this way."""
    argv = [sys.executable, "-X", "importtime", str(BIN / "banger"), "vm", "exec", "ex"]
    out = env.ns.run(
        [*argv, "--", "echo", "fast"], env=env.env, capture_output=True, timeout=120, check=False
    )
    assert (out.returncode, out.stdout) == (0, b"fast\n"), out.stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.decode().splitlines()}
    assert "banger.cli.fast_exec" in loaded and "click" not in loaded


@pytest.mark.timeout(900)
def test_a_tcg_guest_runs_without_aslr_on_a_tsc_clock(env: VmEnv) -> None:
    """docs/explanation/emulated-guests.md: under TCG (all this host has) banger boots the
    guest with ``norandmaps`` and ``tsc=reliable``; the guest's kernel took both."""
    probe = (
        "cat /proc/sys/kernel/randomize_va_space "
        "/sys/devices/system/clocksource/clocksource0/current_clocksource; "
        "for i in 1 2; do grep -m1 'libc.so' /proc/self/maps | cut -d- -f1; done"
    )
    out = run(env, "vm", "exec", "ex", "--", probe)
    assert out.returncode == 0, out.stderr
    aslr, clock, libc_a, libc_b = out.stdout.decode().split()
    assert (aslr, clock) == ("0", "tsc")
    assert libc_a == libc_b, "two processes mapped libc at the same address"


@pytest.mark.timeout(900)
def test_ctrl_c_reaches_the_command_and_timeout_ends_it(env: VmEnv) -> None:
    script = "trap 'echo INT; exit 7' INT; echo ready; while :; do sleep 0.1; done"
    proc = cli(env, "vm", "exec", "ex", "--", "sh", "-c", script, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert (proc.returncode, rest) == (7, b"INT\n")

    started = time.monotonic()
    out = run(env, "vm", "exec", "ex", "--timeout", "2", "--", "sleep", "60")
    assert out.returncode == 124, out.stderr
    assert time.monotonic() - started < 30


@pytest.mark.timeout(900)
def test_a_killed_cli_leaves_no_command_behind(env: VmEnv) -> None:
    proc = cli(
        env, "vm", "exec", "ex", "--", "sh", "-c", "echo $$; exec sleep 600",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 20
    while run(env, "vm", "exec", "ex", "--", "kill", "-0", str(pid)).returncode == 0:
        assert time.monotonic() < deadline, f"guest pid {pid} outlived its CLI"
        time.sleep(0.5)


@pytest.mark.timeout(900)
def test_100_mib_exact_with_the_daemon_bounded(env: VmEnv) -> None:
    assert env.daemon is not None
    daemon_pid = env.daemon.pid
    assert b"bangerd" in Path(f"/proc/{daemon_pid}/cmdline").read_bytes()
    run(env, "vm", "exec", "ex", "--", "head", "-c", "1M", "/dev/zero")  # warm
    before = rss(daemon_pid)
    peak = before
    proc = cli(
        env, "vm", "exec", "ex", "--", "head", "-c", "100M", "/dev/zero", stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    total = 0
    started = time.monotonic()
    while chunk := os.read(proc.stdout.fileno(), 1 << 20):
        total += len(chunk)
        assert chunk.count(0) == len(chunk)
        peak = max(peak, rss(daemon_pid))
    assert proc.wait(timeout=60) == 0
    seconds = time.monotonic() - started
    print(f"100 MiB in {seconds:.1f}s; daemon RSS {before / MIB:.1f} → peak {peak / MIB:.1f} MiB")
    assert total == 100 * MIB
    assert peak - before < 20 * MIB


@pytest.mark.timeout(900)
def test_a_vmm_dying_mid_command_fails_fast_and_a_stopped_vm_is_a_clear_error(
    env: VmEnv,
) -> None:
    """ADVERSARIAL 99: the VMM killed under a running command → the CLI fails at once."""
    proc = cli(
        env, "vm", "exec", "ex", "--", "sh", "-c", "echo started; exec sleep 600",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    env.ok("vm", "kill", "ex", timeout=120)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and err.startswith(b"error:"), err
    out = run(env, "vm", "exec", "ex", "--", "true")
    assert out.returncode == 1
    assert b"error: VM 'ex' is in state stopped, not running" in out.stderr
    assert b"hint: `banger vm start ex`" in out.stderr
    out = run(env, "vm", "exec", "nope", "--", "true")
    assert out.returncode == 1 and b"error:" in out.stderr


@pytest.mark.timeout(900)
def test_vm_run_uses_the_agent_and_falls_back_to_ssh(env: VmEnv) -> None:
    """After the stopped-VM test: one guest at a time on this 2-core host."""
    out = run(
        env, "vm", "run", "--rm", "--image", "deb-agent", *DEBIAN, "--boot-timeout", "900",
        "--", 'echo "ssh=${SSH_CONNECTION:-none}"; exit 4',
        timeout=900,
    )  # fmt: skip
    assert out.returncode == 4, out.stderr
    assert out.stdout.splitlines()[-1] == b"ssh=none"
    assert b"using ssh" not in out.stderr
    out = run(env, "vm", "run", "--rm", "--image", "tiny", "--", "echo hi; exit 5", timeout=900)
    assert out.returncode == 5, out.stderr
    assert out.stdout.splitlines()[-1] == b"hi"
    assert b"does not answer; using ssh" in out.stderr


@pytest.mark.timeout(900)
def test_exec_over_firecracker_vsock() -> None:
    with vm_env(f'firecracker_bin = "{STANDIN}"\nvmm = "firecracker"\n') as fc:
        _register(fc)
        fc.ok("vm", "create", "--name", "fcx", "--image", "deb-agent", *DEBIAN, timeout=900)
        assert fc.json("vm", "show", "fcx")["vmm"] == "firecracker"
        out = run(fc, "vm", "exec", "fcx", "--", "sh", "-c", "hostname; echo e >&2; exit 6")
        assert (out.returncode, out.stdout, out.stderr) == (6, b"fcx\n", b"e\n")
        data = os.urandom(300_000)
        out = run(fc, "vm", "exec", "fcx", "--", "sha256sum", stdin=data)
        assert out.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
        fc.ok("vm", "delete", "--force", "fcx", timeout=300)
