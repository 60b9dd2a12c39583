"""A normal user made for the test, running banger through banger-helper in a netns.

``user_env()`` creates a user (``useradd``; ``userdel`` at the end), its HOME and XDG dirs
under a fresh directory, a network namespace, and — unless ``helper=False`` —
``banger-helper --owner USER`` as root in that namespace (TESTING.md "Non-root and
rootless"). ``UserEnv.banger()`` runs the CLI as the user through ``setpriv``, which execs,
so no root parent process stays behind.

This CI host's ``/dev/net/tun`` is 0600 (Debian's is 0666) and nothing here works around
it: in helper mode the helper opens each TAP and passes the descriptor to the daemon
(``open-tap``), which hands it to QEMU; rootless VMs open no TAP at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests import guests
from tests.conftest import BIN
from tests.netns import Netns, netns

TOOLS = ("ip", "nft", "useradd", "userdel", "setpriv", "qemu-system-x86_64")


@dataclass
class UserEnv:
    ns: Netns
    user: str
    uid: int
    base: Path
    helper: subprocess.Popen[bytes] | None
    daemon: subprocess.Popen[bytes] | None = None
    #: ``privilege_mode`` for the user's daemon and CLI (unset: the default, auto).
    privilege_mode: str | None = None
    #: More environment for the user's commands (``http_proxy`` for an archive build).
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def helper_socket(self) -> Path:
        return self.base / "helper" / "run" / "helper.sock"

    def as_user(self, argv: list[str]) -> list[str]:
        """``argv`` run as the user (setpriv execs: no root parent stays behind)."""
        env = {
            "HOME": self.base / "home",
            "XDG_CONFIG_HOME": self.base / "config",
            "XDG_STATE_HOME": self.base / "state",
            "XDG_CACHE_HOME": self.base / "cache",
            "XDG_RUNTIME_DIR": self.base / "run",
            "BANGER_DNS_PORT": "0",
            "BANGER_POOL_SIZE": "0",
            "BANGER_HELPER_SOCKET": self.helper_socket,
            "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
            **self.extra_env,
        }
        if self.privilege_mode is not None:
            env["BANGER_PRIVILEGE_MODE"] = self.privilege_mode
        return [
            *("setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--init-groups"),
            *("env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv),
        ]

    def banger(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self.ns.run(
            self.as_user([str(BIN / "banger"), *args]),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str, timeout: float = 600) -> str:
        out = self.banger(*args, timeout=timeout)
        assert out.returncode == 0, f"banger {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
        return out.stdout

    def start_helper(self) -> None:
        """``banger-helper --owner USER`` as root in the namespace, ready to answer."""
        sock, log = self.helper_socket, self.base / "helper.log"
        self.helper = self.ns.popen(
            [str(BIN / "banger-helper"), "--owner", self.user, "--socket", str(sock)],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert self.helper.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "helper did not come up"
            time.sleep(0.05)

    def stop_helper(self) -> None:
        assert self.helper is not None
        self.helper.terminate()
        self.helper.wait(timeout=30)
        self.helper = None

    def start_daemon(self, prefix: tuple[str, ...] = ()) -> None:
        """``prefix`` runs as root in the namespace before the user's ``bangerd`` (it must
        exec its arguments): a mount namespace of the test's, say."""
        log = (self.base / "bangerd.out").open("ab")
        self.daemon = self.ns.popen(
            [*prefix, *self.as_user([str(BIN / "bangerd")])], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while True:
            out = self.banger("version", "--json", timeout=30)
            if out.returncode == 0 and json.loads(out.stdout)["daemon"] is not None:
                return
            assert self.daemon.poll() is None, (self.base / "bangerd.out").read_text()
            assert time.monotonic() < deadline, "daemon did not come up"
            time.sleep(0.2)


@contextlib.contextmanager
def user_env(
    *, helper: bool = True, privilege_mode: str | None = None, subids: bool = False
) -> Iterator[UserEnv]:
    """A user of the test's own; ``subids`` gives it a subordinate uid/gid range of 65536
    (what mmdebstrap's unshare mode needs; ``userdel`` removes the range with the user)."""
    user = f"bgrh{secrets.token_hex(3)}"
    base = Path(tempfile.mkdtemp(prefix="bgr-u-"))
    base.chmod(0o755)
    subprocess.run(
        ["useradd", "-M", "-d", str(base / "home"), "-s", "/usr/sbin/nologin", "-U", user],
        check=True,
    )
    try:
        if subids:
            first = 1_000_000_000 + secrets.randbelow(1000) * 65536
            ids = f"{first}-{first + 65535}"
            subprocess.run(
                ["usermod", "--add-subuids", ids, "--add-subgids", ids, user], check=True
            )
        uid = pwd.getpwnam(user).pw_uid
        for sub in ("home", "config", "state", "cache", "run"):
            (base / sub).mkdir(mode=0o700)
            os.chown(base / sub, uid, uid)
        (base / "helper").mkdir(mode=0o755)
        with netns() as ns:
            env = UserEnv(ns, user, uid, base, None, privilege_mode=privilege_mode)
            if helper:
                env.start_helper()
            try:
                yield env
            finally:
                _cleanup(env)
    finally:
        subprocess.run(["userdel", user], check=False)
        shutil.rmtree(base, ignore_errors=True)


def _cleanup(env: UserEnv) -> None:
    if env.daemon is not None and env.daemon.poll() is None:
        listed = env.banger("vm", "list", "--json", timeout=60)
        for vm in json.loads(listed.stdout or "[]"):
            env.banger("vm", "delete", "--force", vm["name"], timeout=120)
        env.banger("daemon", "stop", timeout=60)
        with contextlib.suppress(subprocess.TimeoutExpired):
            env.daemon.wait(timeout=30)


def add_tiny_guest(e: UserEnv) -> None:
    e.ok("kernel", "import", "cloud", "--from", str(guests.cloud_kernel().import_dir))
    rootfs = str(guests.tiny_rootfs())
    e.ok("image", "register", "tiny", "--rootfs", rootfs, "--kernel-ref", "cloud")
    e.ok("image", "show", "tiny")  # registered by the user, in the user's state
