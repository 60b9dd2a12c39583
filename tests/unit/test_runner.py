"""The Runner on real processes: results, errors, and stopping everything a command forked.

Each child leads its own session; a timeout, a cancellation or an exception in the caller
stops the whole session (SIGTERM, a short grace, SIGKILL), so a command that forks (``sh
-c`` with background jobs, mmdebstrap, fakeroot) leaves nothing behind. Survivors are
checked by process identity (pid + start time, ``banger.host.procinfo``): a pid alone may have
been reused, and a zombie waiting for init to reap it is not a survivor.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.errors import CommandFailed, Timeout
from banger.host import procinfo
from banger.host.procinfo import ProcessIdentity
from banger.host.runner import TERM_GRACE_S, Runner, find_tool, search_path

#: A shell with two background children; it writes its own pid and theirs to "$1".
FORKING = 'echo $$ >> "$1"; sleep 300 & echo $! >> "$1"; sleep 300 & echo $! >> "$1"; wait'
#: Python, to ask the kernel what the child was given.
CHILD_REPORT = (
    "import ctypes, os\n"
    "sig = ctypes.c_int()\n"
    "ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG\n"
    "print(sig.value, os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid())\n"
)


class Recorder:
    """Reads the pids a command writes, taking each one's identity while it runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: dict[int, ProcessIdentity] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._take()
            time.sleep(0.005)

    def _take(self) -> None:
        text = self.path.read_text() if self.path.exists() else ""
        for line in text.split():
            pid = int(line)
            if pid not in self.seen and (identity := procinfo.identify(pid)) is not None:
                self.seen[pid] = identity

    def wait_for(self, count: int, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.seen) < count:
            assert time.monotonic() < deadline, f"saw {len(self.seen)} of {count} processes"
            time.sleep(0.01)

    def close(self) -> list[ProcessIdentity]:
        self._stop.set()
        self._thread.join()
        return list(self.seen.values())

    def survivors(self, within_s: float = 2.0) -> list[int]:
        """The recorded processes still running after ``within_s``: a SIGKILLed process
        takes a moment to be gone (longer on a loaded machine), so poll briefly."""
        deadline = time.monotonic() + within_s
        while True:
            alive = [i.pid for i in self.seen.values() if procinfo.is_running(i)]
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.01)


@pytest.fixture
def pids(tmp_path: Path) -> Iterator[Recorder]:
    """A pid file for the command and a recorder of it; leftovers are killed at the end
    (only if still the very process recorded)."""
    recorder = Recorder(tmp_path / "pids")
    yield recorder
    for identity in recorder.close():
        if procinfo.is_running(identity):
            os.kill(identity.pid, signal.SIGKILL)


def forking(pids: Recorder) -> list[str]:
    return ["sh", "-c", FORKING, "sh", str(pids.path)]


def test_output_exit_codes_and_the_stderr_tail() -> None:
    runner = Runner()
    result = runner.run(["sh", "-c", "echo out; echo err >&2"])
    assert (result.returncode, result.text, result.stderr) == (0, "out\n", b"err\n")
    assert runner.run(["sh", "-c", "exit 3"], ok_codes=(3,)).returncode == 3
    with pytest.raises(CommandFailed) as caught:
        runner.run(["sh", "-c", "echo the reason >&2; exit 4"])
    assert "exit status 4" in caught.value.brief
    assert caught.value.details == "the reason"
    assert runner.run(["cat"], input_bytes=b"fed on stdin").stdout == b"fed on stdin"
    assert runner.run(["cat"]).stdout == b""  # stdin is /dev/null, never ours


def test_a_missing_program_is_a_clear_error() -> None:
    with pytest.raises(CommandFailed, match="no-such-tool-here is not installed"):
        Runner().run(["no-such-tool-here"])
    with pytest.raises(CommandFailed, match="no-such-tool-here is not installed"):
        asyncio.run(Runner().run_async(["no-such-tool-here"]))


def test_the_environment_is_fixed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANGER_TEST_SECRET", "leak")
    text = Runner(extra_env={"EXTRA": "1"}).run(["env"], env={"OVERRIDE": "2"}).text
    assert "BANGER_TEST_SECRET" not in text
    assert "EXTRA=1" in text and "OVERRIDE=2" in text and "LC_ALL=C" in text


def test_each_child_leads_its_own_session_and_dies_with_us() -> None:
    argv = [sys.executable, "-c", CHILD_REPORT]
    assert Runner().run(argv).text.split() == [str(int(signal.SIGKILL)), "True", "True"]
    assert asyncio.run(Runner().run_async(argv)).text.split() == ["9", "True", "True"]
    assert Runner(die_with_parent=False).run(argv).text.split() == ["0", "True", "True"]


def test_a_timeout_stops_the_children_the_command_forked(pids: Recorder) -> None:
    started = time.monotonic()
    with pytest.raises(Timeout, match="did not finish within 1s"):
        Runner().run(forking(pids), timeout_s=1)
    elapsed = time.monotonic() - started
    pids.wait_for(3)
    assert pids.survivors() == []
    assert elapsed < 1 + TERM_GRACE_S, f"took {elapsed:.2f}s"


def test_a_timeout_while_only_grandchildren_hold_the_pipes(pids: Recorder) -> None:
    # The shell exits at once; the sleeps keep its stdout open, so the command never ends.
    script = 'sleep 300 & echo $! >> "$1"; sleep 300 & echo $! >> "$1"'
    with pytest.raises(Timeout):
        Runner().run(["sh", "-c", script, "sh", str(pids.path)], timeout_s=1)
    pids.wait_for(2)
    assert pids.survivors() == []


def test_what_ignores_sigterm_gets_sigkill_after_the_grace(pids: Recorder) -> None:
    script = 'trap "" TERM; echo $$ >> "$1"; sleep 300 & echo $! >> "$1"; wait'
    started = time.monotonic()
    with pytest.raises(Timeout):
        Runner().run(["sh", "-c", script, "sh", str(pids.path)], timeout_s=0.5)
    elapsed = time.monotonic() - started
    pids.wait_for(2)
    assert pids.survivors() == []
    assert 0.5 + TERM_GRACE_S <= elapsed < 0.5 + TERM_GRACE_S + 2, f"took {elapsed:.2f}s"


def test_an_exception_in_the_caller_stops_the_command(pids: Recorder) -> None:
    """Ctrl-C in the CLI, say: the terminal no longer signals the child's session."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        with pytest.raises(KeyboardInterrupt):
            Runner().run(forking(pids), timeout_s=60)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pids.wait_for(3)
    assert pids.survivors() == []


def test_run_async_timeout_stops_the_children(pids: Recorder) -> None:
    started = time.monotonic()
    with pytest.raises(Timeout):
        asyncio.run(Runner().run_async(forking(pids), timeout_s=1))
    elapsed = time.monotonic() - started
    pids.wait_for(3)
    assert pids.survivors() == []
    assert elapsed < 1 + TERM_GRACE_S, f"took {elapsed:.2f}s"


def test_run_async_cancelled_stops_the_children(pids: Recorder) -> None:
    async def cancel_midway() -> float:
        task = asyncio.create_task(Runner().run_async(forking(pids), timeout_s=60))
        while len(pids.seen) < 3:
            await asyncio.sleep(0.01)
        assert len(pids.survivors()) == 3  # all three really run
        task.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    elapsed = asyncio.run(cancel_midway())
    assert pids.survivors() == []
    assert elapsed < TERM_GRACE_S, f"took {elapsed:.2f}s"


def test_the_event_loop_keeps_serving_while_a_command_is_stopped(pids: Recorder) -> None:
    """The grace period is awaited, not slept: other tasks run meanwhile."""
    script = 'trap "" TERM; sleep 300 & echo $! >> "$1"; wait'

    async def ticks_during_stop() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        tick = asyncio.create_task(ticker())
        with pytest.raises(Timeout):
            await Runner().run_async(["sh", "-c", script, "sh", str(pids.path)], timeout_s=0.2)
        tick.cancel()
        return ticks

    assert asyncio.run(ticks_during_stop()) >= int(TERM_GRACE_S / 0.05) // 2
    pids.wait_for(1)
    assert pids.survivors() == []


def test_a_normal_users_path_still_finds_the_sbin_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's login PATH for a normal user has no sbin: mkfs.ext4 (in /usr/sbin or /sbin)
    was 'not installed' for a user's image build (seen running scripts/quickstart as one)."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert search_path() == "/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
    assert search_path("/opt/x:/usr/sbin") == "/opt/x:/usr/sbin:/usr/local/sbin:/sbin"
    assert find_tool("mkfs.ext4") is not None
    result = Runner().run(["mkfs.ext4", "-V"])
    assert b"mke2fs" in result.stdout + result.stderr
