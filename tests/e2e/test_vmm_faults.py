"""ADVERSARIAL group J against real guests under QEMU/TCG in a netns: the VMM killed or
stopped while banger works with it, a guest that never answers, what the VMM process
inherits from the daemon, and a daemon started with too few file descriptors.

One daemon serves the module (as in test_vm_lifecycle.py); the Firecracker checks run a
second one configured with the stand-in (tests/fcstandin), the process banger spawns
there. Every process a test stops or kills is one the daemon recorded, checked by its
start time before it is signalled again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.host import procinfo
from banger.host.runner import PASSED_ENV
from tests.conftest import BIN, BangerHome, make_home, stop_daemon_of
from tests.vmenv import VmEnv, events, vm_env

TINY = ("--vcpu", "1", "--memory", "256", "--disk-size", "1G")
STANDIN = Path(__file__).resolve().parents[1] / "fcstandin" / "firecracker"
#: Devices a VMM may hold besides its own files (ADVERSARIAL 104).
DEVICES = {"/dev/null", "/dev/net/tun", "/dev/kvm", "/dev/urandom", "/dev/random"}
MUTE_INIT = """#!/bin/busybox sh
echo "mute-init: no sshd, no agent; sleeping"
exec /bin/busybox sleep 1000000
"""


@pytest.fixture(scope="module")
def env() -> Iterator[VmEnv]:
    with vm_env("tap_pool_size = 2\n") as e:
        e.add_test_guests()
        yield e


def _create(env: VmEnv, name: str, *extra: str) -> dict[str, Any]:
    env.ok("vm", "create", "--name", name, "--image", "tiny", *TINY, *extra)
    return _vm(env, name)


def _vm(env: VmEnv, name: str) -> dict[str, Any]:
    reply: dict[str, Any] = env.json("vm", "show", name)
    return reply


def _identity(vm: dict[str, Any]) -> procinfo.ProcessIdentity:
    return procinfo.ProcessIdentity(vm["pid"], vm["pid_start_ticks"], vm["boot_id"])


def _run_dir(env: VmEnv, vm: dict[str, Any]) -> Path:
    return env.home.runtime_dir / "vms" / str(vm["id"])


@contextlib.contextmanager
def _released(ident: procinfo.ProcessIdentity) -> Iterator[None]:
    """Whatever the test does to the VMM, it does not outlive the test stopped."""
    try:
        yield
    finally:
        if procinfo.is_running(ident):
            os.kill(ident.pid, signal.SIGCONT)
            os.kill(ident.pid, signal.SIGKILL)


def _ppid(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _children_of(pid: int) -> list[procinfo.ProcessIdentity]:
    kids = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _ppid(e) == pid]
    return [ident for ident in map(procinfo.identify, kids) if ident is not None]


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_for(what: str, check: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s:g}s"
        time.sleep(0.1)


def test_sigkill_during_a_graceful_stop_ends_the_stop_at_once_e96(env: VmEnv) -> None:
    """ADVERSARIAL 96: the VMM SIGKILLed while `vm stop` waits for the guest: the stop
    returns at once, the VM is stopped and says it was forcefully terminated."""
    vm = _create(env, "e96")
    # ctrl-alt-del now runs a handler that takes a minute: the stop is still waiting
    # for the guest (its graceful path) when the VMM is killed.
    script = "printf '#!/bin/sh\\nsleep 60\\n' > /etc/init.d/rcK"
    env.ok("vm", "ssh", "e96", "--", "sh", "-c", script)
    ident = _identity(vm)
    with _released(ident):
        stop = env.ns.popen(
            [str(BIN / "banger"), "vm", "stop", "e96"],
            env=env.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for("state stopping", lambda: _vm(env, "e96")["state"] == "stopping", 10)
        time.sleep(1)  # the guest has its ctrl-alt-del and sits in the slow handler
        assert stop.poll() is None, "the guest stopped by itself: nothing was tested"
        os.kill(ident.pid, signal.SIGKILL)
        killed = time.monotonic()
        out, err = stop.communicate(timeout=60)
        took = time.monotonic() - killed
    assert stop.returncode == 0, err
    assert out.strip() == "e96: stopped"
    assert took < 5, f"the stop went on for {took:.1f}s after the VMM died"
    after = _vm(env, "e96")
    assert after["state"] == "stopped" and after["pid"] is None
    assert "forcefully terminated" in (after["last_error"] or "")
    assert "SIGKILL" in after["last_error"]
    env.ok("vm", "delete", "e96")
    assert all(v["name"] != "e96" for v in env.json("vm", "list"))


def _stop_while_stopped(env: VmEnv, name: str, ident: procinfo.ProcessIdentity) -> float:
    """SIGSTOP the VMM, then `vm stop`: it must succeed within 12 s and leave no process."""
    os.kill(ident.pid, signal.SIGSTOP)
    _wait_for("SIGSTOP", lambda: _proc_state(ident.pid) == "T", 5)
    started = time.monotonic()
    out = env.banger("vm", "stop", name, timeout=120)
    took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{name}: stopped"
    assert took < 12, f"stop took {took:.1f}s"
    assert not procinfo.is_running(ident)
    return took


def test_sigstopped_vmm_is_killed_by_a_bounded_stop_e97(env: VmEnv) -> None:
    """ADVERSARIAL 97: a SIGSTOPped QEMU cannot answer QMP; `vm stop` gives up on the
    graceful path, kills it and returns within seconds, leaving no process."""
    ident = _identity(_create(env, "e97"))
    with _released(ident):
        took = _stop_while_stopped(env, "e97", ident)
    print(f"stop of a SIGSTOPped QEMU took {took:.1f}s")
    after = _vm(env, "e97")
    assert after["state"] == "stopped" and after["pid"] is None
    assert "forcefully terminated" in (after["last_error"] or "")
    env.ok("vm", "delete", "e97")


def _qmp(path: Path, command: str) -> Any:
    """One QMP command on the VM's socket (the test's own client, not banger's)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        stream = sock.makefile("rwb")
        assert b"QMP" in stream.readline()
        reply: dict[str, Any] = {}
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}).encode() + b"\n")
            stream.flush()
            reply = {}
            while "return" not in reply:
                reply = json.loads(stream.readline())
                assert "error" not in reply, reply
        return reply["return"]


def test_paused_guest_is_stopped_after_the_timeout_e97(env: VmEnv) -> None:
    """ADVERSARIAL 97, "PauseStop": a paused guest never handles ctrl-alt-del; `vm stop`
    waits its 20 s, then ends QEMU, and the VM is stopped with no process left."""
    vm = _create(env, "paused")
    ident = _identity(vm)
    qmp = _run_dir(env, vm) / "qmp.sock"
    with _released(ident):
        _qmp(qmp, "stop")
        assert _qmp(qmp, "query-status")["status"] == "paused"
        started = time.monotonic()
        out = env.banger("vm", "stop", "paused", timeout=120)
        took = time.monotonic() - started
    print(f"stop of a paused guest took {took:.1f}s")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "paused: stopped"
    assert 19 < took < 35, f"stop took {took:.1f}s"
    assert not procinfo.is_running(ident)
    assert _vm(env, "paused")["state"] == "stopped"
    env.ok("vm", "delete", "paused")


@pytest.fixture(scope="module")
def mute_image(env: VmEnv) -> Iterator[str]:
    """A guest whose init only sleeps: no sshd, no agent, ever (its console says so)."""
    with tempfile.TemporaryDirectory(prefix="bgr-mute-") as tmp:
        tree = Path(tmp) / "tree"
        for sub in ("bin", "sbin", "etc", "root", "proc", "sys", "dev", "tmp"):
            (tree / sub).mkdir(parents=True)
        shutil.copy2("/bin/busybox", tree / "bin" / "busybox")  # busybox-static
        (tree / "bin" / "sh").symlink_to("busybox")
        (tree / "sbin" / "init").write_text(MUTE_INIT)
        (tree / "sbin" / "init").chmod(0o755)
        rootfs = Path(tmp) / "mute.ext4"
        subprocess.run(["truncate", "-s", "32M", str(rootfs)], check=True)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", str(tree), str(rootfs)],
            check=True,
        )
        env.ok("image", "register", "mute", "--rootfs", str(rootfs), "--kernel-ref", "cloud")
        yield "mute"


def _runs_vmm_of(pid: int, vm_name: str) -> bool:
    """``pid`` is (still) a QEMU of this VM (``-name banger-<vm>``), not a zombie."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return f"banger-{vm_name}".encode() in argv and _proc_state(pid) not in ("Z", "X")
    except OSError:
        return False


def _no_process_named(vm_name: str) -> bool:
    """No process on the host runs QEMU for this VM."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return not any(_runs_vmm_of(pid, vm_name) for pid in pids)


def test_guest_that_never_answers_fails_the_create_after_the_timeout_e98(
    env: VmEnv, mute_image: str
) -> None:
    """ADVERSARIAL 98, "No Agent": neither agent nor SSH ever answers; `vm create
    --boot-timeout 8` fails after about 8 s naming the console log, the VMM is gone, the
    VM is kept in state error, and the console log shows the guest's boot."""
    started = time.monotonic()
    out = env.banger(
        "vm", "create", "--name", "mute", "--image", mute_image, *TINY, "--boot-timeout", "8"
    )
    took = time.monotonic() - started
    print(f"create of a mute guest failed after {took:.1f}s")
    assert out.returncode == 1, out.stdout
    assert "Traceback" not in out.stderr
    console_log = env.home.state_dir / "vms" / "mute" / "console.log"
    assert "the guest did not accept SSH within 8s" in out.stderr
    assert str(console_log) in out.stderr
    assert "kept in state error" in out.stderr and "banger vm delete mute" in out.stderr
    assert 8 <= took < 25, f"the create failed after {took:.1f}s"
    pid = int(re.findall(r"^✓ boot: .*pid (\d+)(?: \(\d+ ms\))?$", out.stdout, re.M)[0])
    assert not _runs_vmm_of(pid, "mute"), f"the VMM (pid {pid}) was left running"
    assert _no_process_named("mute")
    vm = _vm(env, "mute")
    assert vm["state"] == "error" and vm["pid"] is None
    assert "did not accept SSH" in (vm["last_error"] or "")
    assert "mute-init: no sshd" in console_log.read_text(errors="replace")
    assert "mute-init: no sshd" in env.ok("vm", "logs", "mute")
    env.ok("vm", "delete", "mute")


def test_slow_boot_fails_a_short_deadline_and_a_longer_one_works_e98(env: VmEnv) -> None:
    """ADVERSARIAL 98, "Slow Root FS": the tiny guest needs ~4 s under TCG, so a 1 s
    deadline fails (VM kept in error); starting it again with the default deadline works."""
    out = env.banger(
        "vm", "create", "--name", "slow", "--image", "tiny", *TINY, "--boot-timeout", "1"
    )
    assert out.returncode == 1 and "within 1s" in out.stderr, out.stderr
    assert _vm(env, "slow")["state"] == "error"
    env.ok("vm", "start", "slow")
    assert env.ok("vm", "ssh", "slow", "--", "hostname").strip() == "slow"
    env.ok("vm", "delete", "--force", "slow")


def test_in_flight_ssh_fails_fast_when_the_vmm_dies_e99(env: VmEnv) -> None:
    """ADVERSARIAL 99: `vm ssh NAME -- sleep 600` while the VMM is SIGKILLed ends within
    ssh's keepalive window (not TCP's ~15 min), and says the VM stopped under it."""
    ident = _identity(_create(env, "e99"))
    ssh = env.ns.popen(
        [str(BIN / "banger"), "vm", "ssh", "e99", "--", "sh", "-c", "echo started; exec sleep 600"],
        env=env.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert ssh.stdout is not None and ssh.stderr is not None
    try:
        ready, _, _ = select.select([ssh.stdout], [], [], 60)
        assert ready and ssh.stdout.readline().strip() == "started"
        os.kill(ident.pid, signal.SIGKILL)
        killed = time.monotonic()
        ssh.wait(timeout=120)
        took = time.monotonic() - killed
    finally:
        if ssh.poll() is None:
            ssh.kill()
            ssh.wait()
    print(f"the in-flight ssh ended {took:.1f}s after the VMM died")
    assert ssh.returncode == 255
    assert took < 40, f"ssh hung for {took:.1f}s"
    err = ssh.stderr.read()
    assert "lost the connection to e99: the VM is stopped" in err, err
    assert "exited unexpectedly" in err
    assert _vm(env, "e99")["state"] == "stopped"
    env.ok("vm", "delete", "e99")


# -- ADVERSARIAL 104: what the VMM process holds ---------------------------------------


def _fd_targets(pid: int) -> dict[str, str]:
    fds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            fds[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return fds


def _unix_socket_paths(pid: int) -> dict[str, str]:
    """socket:[inode] -> bound path, for the Unix sockets of ``pid``'s network namespace."""
    paths = {}
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8:
            paths[f"socket:[{fields[6]}]"] = fields[7]
    return paths


def _environ_names(pid: int) -> set[str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return {item.split(b"=", 1)[0].decode() for item in raw.split(b"\0") if item}


def _check_vmm_hygiene(env: VmEnv, vm: dict[str, Any]) -> dict[str, str]:
    """Every fd of the VMM is its own (ADVERSARIAL 104); returns the fds for the caller."""
    pid = vm["pid"]
    own = (Path(vm["vm_dir"]), _run_dir(env, vm))
    fds = _fd_targets(pid)
    daemon_pid = env.home.daemon_pid()
    assert daemon_pid is not None
    daemon_fds = set(_fd_targets(daemon_pid).values())
    sockets = _unix_socket_paths(pid)
    for fd, target in sorted(fds.items(), key=lambda item: int(item[0])):
        where = f"{vm['name']}: fd {fd} -> {target}"
        if target.startswith(("pipe:", "socket:")):
            assert target not in daemon_fds, f"{where} is shared with the daemon"
            bound = sockets.get(target)
            assert not bound or any(Path(bound).is_relative_to(d) for d in own), where
        elif not target.startswith("anon_inode:"):
            mine = any(Path(target).is_relative_to(d) for d in own)
            assert mine or target in DEVICES or target.startswith("/dev/vhost-"), where
            assert target in DEVICES or target not in daemon_fds, f"{where}: the daemon's"
    leaked = _environ_names(pid) - set(PASSED_ENV)
    assert not leaked, f"{vm['name']}: the VMM inherited {sorted(leaked)}"
    # ...which means something: the daemon's own environment has more than that.
    assert "XDG_STATE_HOME" in _environ_names(daemon_pid)
    return fds


def test_vmm_holds_only_its_own_fds_and_a_minimal_env_e104_e105(env: VmEnv) -> None:
    """ADVERSARIAL 104: two QEMUs booted side by side each hold only /dev/null, their own
    VM's files and sockets and a few devices: not state.db, the RPC socket, the other
    VM's files or any layer/cache file; their environment holds only PASSED_ENV names.
    ADVERSARIAL 105 (/dev/kvm that cannot run guests): QEMU falls back to TCG."""
    procs = [
        env.ns.popen(
            [
                str(BIN / "banger"),
                "vm",
                "create",
                "--name",
                name,
                "--image",
                "tiny",
                *TINY,
                "--json",
            ],
            env=env.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("fd-a", "fd-b")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert events(out)[-1]["data"]["state"] == "running"
    for name in ("fd-a", "fd-b"):
        vm = _vm(env, name)
        fds = _check_vmm_hygiene(env, vm)
        print(f"{name} (pid {vm['pid']}) fds:", json.dumps(fds, indent=1, sort_keys=True))
        targets = set(fds.values())
        assert {"/dev/null", str(Path(vm["vm_dir"]) / "rootfs.ext4")} <= targets
        assert any(t.startswith("socket:") for t in targets)
        qmp = str(_run_dir(env, vm) / "qmp.sock")
        assert qmp in _unix_socket_paths(vm["pid"]).values()
        cmdline = Path(f"/proc/{vm['pid']}/cmdline").read_bytes().split(b"\0")
        probe = json.loads((env.home.state_dir / "kvm-probe.json").read_text())
        accel = b"kvm" if probe["kvm_runs_guests"] else b"tcg"
        assert cmdline[cmdline.index(b"-accel") + 1] == accel
    env.ok("vm", "delete", "--force", "fd-a", "fd-b")


def test_firecracker_standin_fds_env_and_sigstop_e104_e97() -> None:
    """ADVERSARIAL 104 for the Firecracker path: the stand-in (the process banger spawns)
    holds only its own fds and PASSED_ENV. ADVERSARIAL 97 there: a SIGSTOPped
    Firecracker cannot answer SendCtrlAltDel; `vm stop` kills it at once."""
    config = f'firecracker_bin = "{STANDIN}"\nvmm = "firecracker"\n'
    with vm_env(config) as fc:
        fc.add_test_guests()
        vm = _create(fc, "fcv")
        assert vm["vmm"] == "firecracker"
        fds = _check_vmm_hygiene(fc, vm)
        print("stand-in fds:", json.dumps(fds, indent=1, sort_keys=True))
        assert str(_run_dir(fc, vm) / "fc.sock") in _unix_socket_paths(vm["pid"]).values()
        ident = _identity(vm)
        guest_qemu = _children_of(ident.pid)
        assert len(guest_qemu) == 1  # the stand-in boots the guest under QEMU
        with _released(ident), _released(guest_qemu[0]):
            took = _stop_while_stopped(fc, "fcv", ident)
        print(f"stop of a SIGSTOPped Firecracker stand-in took {took:.1f}s")
        assert "forcefully terminated" in (_vm(fc, "fcv")["last_error"] or "")
        # (it dies with the stand-in: PR_SET_PDEATHSIG)
        _wait_for("the stand-in's QEMU to go", lambda: not procinfo.is_running(guest_qemu[0]), 10)
        fc.ok("vm", "delete", "fcv")


# -- ADVERSARIAL 105: a tiny RLIMIT_NOFILE ------------------------------------------------


def _banger_with_nofile(
    env: VmEnv, home: BangerHome, limit: str
) -> subprocess.CompletedProcess[str]:
    """The CLI under ``prlimit``: the daemon it starts inherits the limit."""
    return env.ns.run(
        ["prlimit", f"--nofile={limit}", str(BIN / "banger"), "vm", "list", "--json"],
        env=home.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_tiny_open_files_limit_is_refused_or_raised_at_start_e105(env: VmEnv) -> None:
    """ADVERSARIAL 105: with a hard RLIMIT_NOFILE of 16 the daemon refuses to start with
    an error and a hint (not EMFILE somewhere later); a soft 16 under a hard 4096 is
    raised and the daemon serves."""
    with tempfile.TemporaryDirectory(prefix="bgr-") as tmp:
        home = make_home(Path(tmp))
        try:
            refused = _banger_with_nofile(env, home, "16:16")
            assert home.daemon_pid() is None or not _alive(home.daemon_pid())
            raised = _banger_with_nofile(env, home, "16:4096")
            pid = home.daemon_pid()
            limits = Path(f"/proc/{pid}/limits").read_text() if pid else ""
        finally:
            stop_daemon_of(home)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    brief = "error: the daemon could not start: the open-files limit (RLIMIT_NOFILE) is 16"
    assert refused.stderr.startswith(brief), refused.stderr
    assert "\nhint: raise it" in refused.stderr
    assert raised.returncode == 0, raised.stderr
    assert json.loads(raised.stdout) == []
    assert re.search(r"^Max open files\s+4096\s+4096\s", limits, re.M), limits


def _alive(pid: int | None) -> bool:
    return pid is not None and Path(f"/proc/{pid}").exists() and _proc_state(pid) not in "ZX"
