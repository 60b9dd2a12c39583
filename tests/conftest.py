"""Shared fixtures: an isolated banger home per test and helpers to run the real CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@dataclass
class BangerHome:
    """HOME and XDG dirs of a throwaway user profile; env to run banger in it."""

    root: Path
    env: dict[str, str]

    @property
    def config_file(self) -> Path:
        return Path(self.env["XDG_CONFIG_HOME"]) / "banger" / "config.toml"

    @property
    def runtime_dir(self) -> Path:
        return Path(self.env["XDG_RUNTIME_DIR"]) / "banger"

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "bangerd.sock"

    @property
    def state_dir(self) -> Path:
        return Path(self.env["XDG_STATE_HOME"]) / "banger"

    def write_config(self, text: str) -> Path:
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(text)
        self.config_file.chmod(0o600)
        return self.config_file

    def banger(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "banger"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def daemon_pid(self) -> int | None:
        lock = self.runtime_dir / "bangerd.lock"
        with contextlib.suppress(OSError, ValueError):
            # The lock file holds the daemon's pid, then the socket it serves.
            text = lock.read_text().split("\n", 1)[0].strip()
            return int(text) if text else None
        return None


def make_home(root: Path) -> BangerHome:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "BANGER_"))}
    for name, sub in (
        ("HOME", "home"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_RUNTIME_DIR", "run"),
    ):
        path = root / sub
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    # Any free port: 42069 may belong to the developer's own daemon (or another test's).
    env["BANGER_DNS_PORT"] = "0"
    # No warm pool unless a test asks for one: a background boot would change what the
    # other tests time and see (the pool's own tests set BANGER_POOL_SIZE).
    env["BANGER_POOL_SIZE"] = "0"
    return BangerHome(root=root, env=env)


def stop_daemon_of(home: BangerHome) -> None:
    """Stop a daemon this test started: politely, then by its pid (ours)."""
    pid = home.daemon_pid()
    home.banger("daemon", "stop", timeout=30)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def home() -> Iterator[BangerHome]:
    # A short base path keeps socket paths far below the 108-byte sun_path limit.
    with tempfile.TemporaryDirectory(prefix="bgr-") as tmp:
        h = make_home(Path(tmp))
        try:
            yield h
        finally:
            stop_daemon_of(h)


def _hand_children_default_signals() -> None:
    """A shell without job control (``cmd &`` in a script, ``nohup``) starts us ignoring
    SIGINT and SIGQUIT (SIGHUP too under nohup); an ignored signal stays ignored across
    exec, so every CLI and SDK process a test starts would be deaf to the Ctrl-C and
    hang-up the interruption tests send (they failed so in a backgrounded CI run). A
    handler of ours is reset to the default in each child; the shell's choice is not
    ours to keep for the processes the tests start and signal themselves."""
    for signum, handler in (
        (signal.SIGINT, signal.default_int_handler),
        (signal.SIGQUIT, signal.SIG_DFL),
        (signal.SIGHUP, signal.SIG_DFL),
    ):
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, handler)


_hand_children_default_signals()
