"""Helper processes die with the daemon, VMMs do not (ADVERSARIAL 94).

Real processes throughout: a parent Python process (this venv's interpreter) starts a
long-lived child through banger's Runner, the test SIGKILLs the parent and the child must
be gone within a couple of seconds. PR_SET_PDEATHSIG fires when the *thread* that forked
the child exits, not the process (prctl(2)); the daemon runs commands from
``asyncio.to_thread`` workers, so the tests also fork from such a thread, check that the
child lives as long as that thread waits for it even while other threads come and go,
and show the hazard itself: a child whose forking thread returns at once is killed,
which is why the VMM spawn (which must outlive the daemon) never uses it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.host import procinfo
from banger.host.procinfo import ProcessIdentity
from banger.host.runner import Runner, die_with_parent
from banger.vmm import spawn

GONE_WITHIN_S = 2.0
#: A long-lived child that writes its pid (it execs, so the pid stays the child's).
CHILD = 'echo $$ > "$1"; exec sleep 300'

PARENT = f"""
import asyncio, sys
from banger.host.runner import Runner

how, pid_file = sys.argv[1], sys.argv[2]
argv = ["sh", "-c", {CHILD!r}, "sh", pid_file]
runner = Runner()
if how == "main-thread":
    runner.run(argv, timeout_s=600)
elif how == "worker-thread":  # as the daemon does: a to_thread worker waits for it
    asyncio.run(asyncio.to_thread(runner.run, argv, timeout_s=600))
elif how == "event-loop":
    asyncio.run(runner.run_async(argv, timeout_s=600))
"""

#: A child that is slow to ask for PDEATHSIG: the parent dies before it does.
SLOW_CHILD = """
import sys, time
from banger.host.runner import die_with_parent

parent = int(sys.argv[1])
open(sys.argv[2], "w").write("ready")
time.sleep(float(sys.argv[3]))
die_with_parent(parent)
print("still running")
"""


def wait_for_pid(path: Path, timeout_s: float = 20) -> ProcessIdentity:
    deadline = time.monotonic() + timeout_s
    while True:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            identity = procinfo.identify(int(text))
            assert identity is not None, "the child exited at once"
            return identity
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.01)


def gone_within(identity: ProcessIdentity, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while procinfo.is_running(identity):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def leftovers() -> Iterator[list[ProcessIdentity]]:
    """Kills what a failing test leaves (only if still the very process recorded)."""
    found: list[ProcessIdentity] = []
    yield found
    for identity in found:
        if procinfo.is_running(identity):
            os.kill(identity.pid, signal.SIGKILL)


def start_parent(script: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # the test's own session and terminal stay out of it
    )


@pytest.mark.parametrize("how", ["main-thread", "worker-thread", "event-loop"])
def test_a_runner_child_dies_when_its_parent_is_sigkilled_e94(
    tmp_path: Path, how: str, leftovers: list[ProcessIdentity]
) -> None:
    """ADVERSARIAL 94: the daemon SIGKILLed mid-command leaves no helper running."""
    pid_file = tmp_path / "child.pid"
    parent = start_parent(PARENT, how, str(pid_file))
    try:
        child = wait_for_pid(pid_file)
        leftovers.append(child)
        time.sleep(0.3)
        assert procinfo.is_running(child)
    finally:
        parent.kill()
        parent.wait()
    assert gone_within(child, GONE_WITHIN_S), f"child {child.pid} outlived its parent"


def test_a_child_lives_while_its_worker_thread_waits_e94(
    tmp_path: Path, leftovers: list[ProcessIdentity]
) -> None:
    """ADVERSARIAL 94: forked from a to_thread worker, the child lives while that thread
    waits for it, however many other worker threads finish meanwhile."""
    pid_file = tmp_path / "child.pid"
    argv = ["sh", "-c", CHILD, "sh", str(pid_file)]

    async def scenario() -> int:
        job = asyncio.create_task(asyncio.to_thread(Runner().run, argv, ok_codes=(-9,)))
        child = await asyncio.to_thread(wait_for_pid, pid_file)
        leftovers.append(child)
        for _ in range(20):  # other threads start and end; the forking one stays
            await asyncio.to_thread(time.sleep, 0.01)
            thread = threading.Thread(target=time.sleep, args=(0.01,))
            thread.start()
            thread.join()
        await asyncio.sleep(1.0)
        assert procinfo.is_running(child), "the child died while its thread still waited"
        os.kill(child.pid, signal.SIGKILL)
        return (await job).returncode

    assert asyncio.run(scenario()) == -signal.SIGKILL


def test_a_child_dies_when_its_forking_thread_exits_e94(
    tmp_path: Path, leftovers: list[ProcessIdentity]
) -> None:
    """ADVERSARIAL 94, the hazard: PDEATHSIG follows the forking *thread*. A spawner that
    returns while its child runs (as the VMM spawn does) must therefore not use it."""
    pid_file = tmp_path / "child.pid"
    spawned: list[subprocess.Popen[bytes]] = []
    children: list[ProcessIdentity] = []

    def spawn_and_return() -> None:
        spawned.append(
            subprocess.Popen(
                ["sh", "-c", CHILD, "sh", str(pid_file)],
                preexec_fn=functools.partial(die_with_parent, os.getpid()),  # noqa: PLW1509
            )
        )
        children.append(wait_for_pid(pid_file))  # then this thread ends; the process lives

    thread = threading.Thread(target=spawn_and_return)
    thread.start()
    thread.join()
    child = children[0]
    leftovers.append(child)
    assert gone_within(child, GONE_WITHIN_S), "PDEATHSIG did not follow the thread"
    assert spawned[0].wait(timeout=5) == -signal.SIGKILL


def test_a_vmm_spawned_from_a_thread_that_exits_survives_e94(
    tmp_path: Path, leftovers: list[ProcessIdentity]
) -> None:
    """ADVERSARIAL 94: a VM spawned from a worker thread that then exits must live on
    (the daemon re-adopts VMMs after a restart): the VMM spawn sets no PDEATHSIG."""
    pid_file = tmp_path / "vmm.pid"
    found: list[ProcessIdentity] = []
    thread = threading.Thread(
        target=lambda: found.append(
            spawn.spawn_detached(
                ["sh", "-c", CHILD, "sh", str(pid_file)],
                log_path=tmp_path / "vmm.log",
                runner=Runner(),
            )
        )
    )
    thread.start()
    thread.join()
    leftovers.extend(found)
    vmm = wait_for_pid(pid_file)
    assert vmm.pid == found[0].pid
    time.sleep(GONE_WITHIN_S)
    assert procinfo.is_running(vmm), "the VMM died with the thread that spawned it"
    assert os.getsid(vmm.pid) == vmm.pid  # its own session, outside any Runner group
    spawn.signal_if_ours(vmm, signal.SIGKILL)
    assert asyncio.run(spawn.wait_exit(vmm, timeout_s=5))


def test_a_parent_that_dies_before_the_prctl_still_takes_the_child_e94(
    tmp_path: Path, leftovers: list[ProcessIdentity]
) -> None:
    """ADVERSARIAL 94: the daemon dying right after the fork, before the child asked for
    PDEATHSIG: the child sees its parent changed and kills itself."""
    ready = tmp_path / "ready"
    result = tmp_path / "child.out"
    parent_script = f"""
import subprocess, sys
with open({str(result)!r}, "wb") as out:
    child = subprocess.Popen(
        [sys.executable, "-c", {SLOW_CHILD!r}, str(__import__("os").getpid()), {str(ready)!r}, "1"],
        stdout=out,
    )
print(child.pid, flush=True)
__import__("time").sleep(300)
"""
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_script],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert parent.stdout is not None
        child = procinfo.identify(int(parent.stdout.readline()))
        assert child is not None
        leftovers.append(child)
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.01)
    finally:
        parent.kill()
        parent.wait()
    assert gone_within(child, 1 + GONE_WITHIN_S), "the child outlived a parent that died early"
    assert result.read_text() == ""


def test_a_slow_child_with_its_parent_alive_carries_on() -> None:
    """The check against the race does not misfire while the parent lives."""
    out = subprocess.run(
        [sys.executable, "-c", SLOW_CHILD, str(os.getpid()), os.devnull, "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (out.returncode, out.stdout) == (0, "still running\n")
