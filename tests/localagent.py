"""The guest agent run on this host for the agent tests: the very file images carry, under
each Python it must support, on a Unix socket in a short private directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.guest import banger_agent as agent

AGENT = Path(agent.__file__)


def _python37() -> str | None:
    for candidate in (os.environ.get("BANGER_TEST_PYTHON37"), shutil.which("python3.7")):
        if not candidate:
            continue
        check = subprocess.run(
            [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 7)"],
            capture_output=True,
            check=False,
        )
        if check.returncode == 0:
            return candidate
    return None


PY37 = _python37()
PYTHONS = [
    pytest.param(sys.executable, id="py-current"),
    pytest.param(
        PY37 or "python3.7",
        id="py37",
        marks=pytest.mark.skipif(PY37 is None, reason="no Python 3.7 here"),
    ),
]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bga-"))  # sun_path is 108 bytes
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def run_agent(
    python: str, *args: str, pass_fds: tuple[int, ...] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [python, "-I", str(AGENT), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=pass_fds,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
        print(err.decode(errors="replace"))
        assert b"vsock" not in err, "a test agent must leave the host's vsock alone"


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the agent exited"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(str(path)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"the agent does not listen on {path}")
