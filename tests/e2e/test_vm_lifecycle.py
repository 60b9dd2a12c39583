"""Real guests under QEMU/TCG in a netns, through the daemon and the CLI (issue 3).

Each module-scoped environment runs one daemon inside its own network namespace; the
tiny busybox/dropbear guest keeps the suite quick, the Debian guest proves systemd boots.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import BIN
from tests.vmenv import VmEnv, events, vm_env

TINY = ("--image", "tiny", "--vcpu", "1", "--memory", "256", "--disk-size", "1G")


@pytest.fixture(scope="module")
def env() -> Iterator[VmEnv]:
    with vm_env("tap_pool_size = 2\n") as e:
        e.add_test_guests()
        yield e


def _vm(env: VmEnv, name: str) -> dict[str, Any]:
    reply: dict[str, Any] = env.json("vm", "show", name)
    return reply


def test_create_ssh_stop_start_delete_tiny_guest(env: VmEnv) -> None:
    out = env.banger("vm", "create", "--name", "life", *TINY)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "spec: 1 vcpu · 256 MiB · 1G disk"
    for stage in ("reserve", "disks", "boot", "wait-ready"):
        assert any(line.startswith(f"✓ {stage}") for line in lines), out.stdout
    # the tiny guest has no python3, so no agent: readiness is the SSH way
    assert any("wait-ready: guest answered SSH after" in line for line in lines), out.stdout
    uname = env.ok("vm", "ssh", "life", "--", "uname", "-a")
    assert uname.startswith("Linux life ")
    mounted = env.ok(
        "vm", "ssh", "life", "--", "sh", "-c", "stat -c %a:%u /root; grep ' /root ' /proc/mounts"
    )
    assert mounted.startswith("755:0\n") and "/dev/vdb /root ext4" in mounted
    vm = _vm(env, "life")
    assert vm["state"] == "running" and vm["ip"].startswith("10.213.7.")
    assert _dns(env, "LIFE.vm") == vm["ip"]  # case-insensitive, follows state (H.77/78)

    refused = env.banger("vm", "delete", "life")
    assert refused.returncode == 1 and "is running" in refused.stderr and "hint:" in refused.stderr

    assert env.ok("vm", "stop", "life").strip() == "life: stopped"
    assert _vm(env, "life")["state"] == "stopped"
    assert env.ok("vm", "stop", "life").strip() == "life: stopped"  # idempotent (E51)
    stopped = env.banger("vm", "ssh", "life", "--", "true")
    assert "error: VM 'life' is in state stopped, not running" in stopped.stderr, stopped.stderr
    # An empty log says so on stderr; stdout stays the log alone (issue 14 item 19).
    vmm_log = os.path.join(_vm(env, "life")["vm_dir"], "vmm.log")
    os.truncate(vmm_log, 0)  # the stopped VM's VMM log, made empty
    empty = env.banger("vm", "logs", "--vmm", "life")
    assert empty.returncode == 0 and empty.stdout == "", empty.stdout
    assert f"the VMM log of life is empty ({vmm_log})" in empty.stderr, empty.stderr
    started = env.ok("vm", "start", "life").splitlines()
    ip = _vm(env, "life")["ip"]
    assert started[-1] == f"life is running at {ip} (banger vm ssh life)", started
    assert _vm(env, "life")["state"] == "running"
    restarted = env.ok("vm", "restart", "life").splitlines()
    assert restarted[-1] == f"life is running at {ip} (banger vm ssh life)", restarted
    shown = env.ok("vm", "show", "life")
    assert any(line.split() == ["image:", "tiny"] for line in shown.splitlines()), shown
    assert "image_id" not in shown and "1G" in shown and "pid_start_ticks" not in shown, shown
    assert env.ok("vm", "ssh", "life", "--", "hostname").strip() == "life"
    stats = env.json("vm", "stats", "life")
    assert stats["pid"] and stats["rss_bytes"] > 0
    console = env.ok("vm", "logs", "life")  # the last 16 KiB of both boots
    assert "dropbear" in console.lower()
    env.ok("vm", "delete", "--force", "life")
    assert all(v["name"] != "life" for v in env.json("vm", "list"))
    assert _dns(env, "life.vm") == "NXDOMAIN"


DNS_QUERY = """
import sys, dns.message, dns.query, dns.rcode
reply = dns.query.udp(dns.message.make_query(sys.argv[1], "A"), "127.0.0.1",
                      port=int(sys.argv[2]), timeout=3)
print(reply.answer[0][0].address if reply.answer else dns.rcode.to_text(reply.rcode()))
"""


def _dns(env: VmEnv, name: str) -> str:
    """Ask the daemon's DNS server, from inside the namespace where it listens."""
    port = env.json("daemon", "status")["dns"].rsplit(":", 1)[1]
    out = env.ns.run(
        [sys.executable, "-c", DNS_QUERY, name, port],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def test_ssh_exit_status_is_the_commands(env: VmEnv) -> None:
    env.ok("vm", "create", "--name", "exits", *TINY)
    out = env.banger("vm", "ssh", "exits", "--", "sh", "-c", "exit 7")
    assert out.returncode == 7
    env.ok("vm", "delete", "--force", "exits")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--vcpu", "0"), "--vcpu"),
        (("--vcpu", "-1"), "--vcpu"),
        (("--vcpu", "true"), "--vcpu"),
        (("--memory", "0"), "--memory"),
        (("--memory", "1_024"), "--memory"),
        (("--disk-size", "-5G"), "--disk-size"),
        (("--name", "Bad_Name"), "invalid VM name"),
        (("--name", "a" * 64), "invalid VM name"),
        (("--name", "ß"), "invalid VM name"),
        (("--image", "no-such-image"), "no-such-image"),
        (("--vcpu", "4096"), "vcpu"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing_e46_e47(
    env: VmEnv, args: tuple[str, ...], message: str
) -> None:
    before = env.json("vm", "list")
    out = env.banger("vm", "create", *TINY, *args)
    assert out.returncode in (1, 2), out.stdout
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert env.json("vm", "list") == before


def test_duplicate_name_is_refused(env: VmEnv) -> None:
    env.ok("vm", "create", "--name", "dup", *TINY)
    out = env.banger("vm", "create", "--name", "dup", *TINY)
    assert out.returncode == 1 and "already exists" in out.stderr
    assert [v["name"] for v in env.json("vm", "list")].count("dup") == 1
    env.ok("vm", "delete", "--force", "dup")


def test_set_refuses_zero_and_running_and_grows_a_stopped_vm(env: VmEnv) -> None:
    env.ok("vm", "create", "--name", "sized", *TINY)
    running = env.banger("vm", "set", "sized", "--memory", "512")
    assert running.returncode == 1 and "not supported after start" in running.stderr
    env.ok("vm", "stop", "sized")
    zero = env.banger("vm", "set", "sized", "--vcpu", "0")
    assert zero.returncode == 2 and "--vcpu" in zero.stderr  # a usage error (issue 14/15)
    env.ok("vm", "set", "sized", "--memory", "384", "--disk-size", "2G")
    vm = _vm(env, "sized")
    assert (vm["memory_mib"], vm["disk_size_bytes"]) == (384, 2 * 1024**3)
    env.ok("vm", "start", "sized")
    size = env.ok("vm", "ssh", "sized", "--", "sh", "-c", "df -k /root | tail -1")
    assert int(size.split()[1]) > 1_800_000  # KiB: the filesystem grew too
    env.ok("vm", "delete", "--force", "sized")


def test_vmm_killed_from_outside_is_noticed_e95(env: VmEnv) -> None:
    env.ok("vm", "create", "--name", "victim", *TINY)
    pid = _vm(env, "victim")["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _vm(env, "victim")["state"] != "stopped":
        assert time.monotonic() < deadline, "the dead VMM was not noticed within 10 s"
        time.sleep(0.25)
    assert "exited unexpectedly" in (_vm(env, "victim")["last_error"] or "")
    env.ok("vm", "start", "victim")
    env.ok("vm", "delete", "--force", "victim")


def test_daemon_sigkill_then_restart_readopts_running_vms_e86_e87(env: VmEnv) -> None:
    env.ok("vm", "create", "--name", "survivor", *TINY)
    before = _vm(env, "survivor")
    env.kill_daemon()
    env.start_daemon()
    after = _vm(env, "survivor")
    assert after["state"] == "running" and after["pid"] == before["pid"]
    assert env.ok("vm", "ssh", "survivor", "--", "hostname").strip() == "survivor"
    assert env.ok("vm", "stop", "survivor").strip() == "survivor: stopped"
    env.ok("vm", "delete", "survivor")


def _stream_with_times(env: VmEnv, name: str, sink: list[tuple[float, dict[str, Any]]]) -> int:
    proc = env.ns.popen(
        [str(BIN / "banger"), "vm", "create", "--name", name, *TINY, "--json"],
        env=env.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        sink.append((time.monotonic(), json.loads(line)))
    return proc.wait()


def test_two_creates_boot_at_the_same_time(env: VmEnv) -> None:
    seen: dict[str, list[tuple[float, dict[str, Any]]]] = {"par-a": [], "par-b": []}
    threads = [threading.Thread(target=_stream_with_times, args=(env, n, seen[n])) for n in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def window(name: str) -> tuple[float, float]:
        stamps = seen[name]
        start = next(t for t, e in stamps if e.get("stage") == "boot" and e["state"] == "running")
        end = next(t for t, e in stamps if e.get("stage") == "wait-ready" and e["state"] == "ok")
        return start, end

    (a0, a1), (b0, b1) = window("par-a"), window("par-b")
    assert a0 < b1 and b0 < a1, "the two boots did not overlap"
    for name in seen:
        env.ok("vm", "delete", "--force", name)


def test_eight_parallel_creates_get_unique_resources_e118(env: VmEnv) -> None:
    procs = [
        env.ns.popen(
            [str(BIN / "banger"), "vm", "create", *TINY, "--json", "--boot-timeout", "900"],
            env=env.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, err
        results.append(events(out)[-1]["data"])
    for key in ("name", "ip", "mac", "tap"):
        assert len({r[key] for r in results}) == 8, key
    for r in results:
        assert env.ok("vm", "ssh", r["name"], "--", "hostname").strip() == r["name"]
    env.ok("vm", "delete", "--force", *[r["name"] for r in results])


def test_vm_run_passes_the_exit_status_and_rm_deletes(env: VmEnv) -> None:
    before = {v["name"] for v in env.json("vm", "list")}
    out = env.banger("vm", "run", "--rm", *TINY, "--", "sh", "-c", "echo in-guest; exit 7")
    assert out.returncode == 7, out.stderr
    assert "in-guest" in out.stdout
    assert out.stdout.splitlines()[0].startswith("spec: 1 vcpu")
    assert "deleted" in out.stderr
    assert {v["name"] for v in env.json("vm", "list")} == before


def test_vm_run_without_rm_keeps_the_vm(env: VmEnv) -> None:
    out = env.banger("vm", "run", "--name", "kept", *TINY, "--", "cat", "/etc/hostname")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "kept"
    assert "still running" in out.stderr
    assert env.json("vm", "show", "kept")["state"] == "running"
    env.ok("vm", "delete", "--force", "kept")
