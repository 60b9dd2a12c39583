"""A banger daemon running inside a network namespace of the test's own, with the real
CLI driving it (TESTING.md network rule: bridges, TAPs and guest IPs exist only there).

``VmEnv`` owns one throwaway banger home, one netns and the daemon in it; ``banger()``
runs the CLI inside the namespace (so `vm ssh` reaches the guests). At the end every VM is
deleted and any VMM still alive is killed by the pid the daemon recorded for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from banger.host import procinfo
from tests.conftest import BIN, BangerHome, make_home
from tests.netns import Netns, netns
from tests.netproxy import PORT as PROXY_PORT
from tests.netproxy import HostProxy

REPO = Path(__file__).resolve().parents[1]
_DNS_QUERY = """
import sys, dns.message, dns.query, dns.rcode
reply = dns.query.udp(dns.message.make_query(sys.argv[1], "A"), "127.0.0.1",
                      port=int(sys.argv[2]), timeout=3)
print(reply.answer[0][0].address if reply.answer else dns.rcode.to_text(reply.rcode()))
"""


@dataclass
class VmEnv:
    home: BangerHome
    ns: Netns
    daemon: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**self.home.env, **self.extra_env}

    def banger(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self.ns.run(
            [str(BIN / "banger"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, timeout: float = 600) -> str:
        out = self.banger(*args, timeout=timeout)
        assert out.returncode == 0, f"banger {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
        return out.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def resolve(self, name: str) -> str:
        """Ask the daemon's DNS server for ``name`` from inside the namespace where it
        listens: the address, or the rcode (``NXDOMAIN``)."""
        port = self.json("daemon", "status")["dns"].rsplit(":", 1)[1]
        out = self.ns.run(
            [sys.executable, "-c", _DNS_QUERY, name, port],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.strip()

    def add_test_guests(self, *, tiny: bool = True) -> None:
        """Import the cached cloud kernel as `cloud` and register the tiny guest as `tiny`."""
        from tests import guests

        self.ok("kernel", "import", "cloud", "--from", str(guests.cloud_kernel().import_dir))
        if tiny:
            self.ok(
                "image",
                "register",
                "tiny",
                "--rootfs",
                str(guests.tiny_rootfs()),
                "--kernel-ref",
                "cloud",
            )

    def start_daemon(self) -> None:
        log = (self.home.root / "bangerd.out").open("ab")
        self.daemon = self.ns.popen(
            [str(BIN / "bangerd")],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            out = self.banger("version", "--json", timeout=30)
            if out.returncode == 0 and json.loads(out.stdout)["daemon"] is not None:
                return
            assert self.daemon.poll() is None, "daemon exited: see bangerd.out"
            assert time.monotonic() < deadline, "daemon did not come up"
            time.sleep(0.1)

    def kill_daemon(self) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait(timeout=10)

    def stop_daemon(self) -> None:
        self.banger("daemon", "stop", timeout=60)
        if self.daemon is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.daemon.wait(timeout=30)

    def recorded_vmm_pids(self) -> list[procinfo.ProcessIdentity]:
        db = self.home.state_dir / "state.db"
        if not db.exists():
            return []
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows = conn.execute(
                "SELECT pid, pid_start_ticks, boot_id FROM vms WHERE pid IS NOT NULL"
            ).fetchall()
        return [procinfo.ProcessIdentity(*row) for row in rows]

    def cleanup(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            for vm in json.loads(self.banger("vm", "list", "--json").stdout or "[]"):
                self.banger("vm", "delete", "--force", vm["name"], timeout=120)
        for ident in self.recorded_vmm_pids():
            if procinfo.is_running(ident):
                os.kill(ident.pid, signal.SIGKILL)
        self.stop_daemon()


@contextlib.contextmanager
def vm_env(
    config: str = "", *, apt_proxy: bool = False, env_vars: dict[str, str] | None = None
) -> Iterator[VmEnv]:
    """A daemon in a fresh netns; ``apt_proxy`` gives it a way to Debian's archive only
    (tests/netproxy.py), for tests that build the default image; ``env_vars`` are set for
    the daemon and the CLI (``BANGER_POOL_SIZE`` for the pool's tests)."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bgr-vm-"))
        ns = stack.enter_context(netns())
        home = make_home(Path(tmp))
        home.write_config(config)
        env = VmEnv(home=home, ns=ns, extra_env=dict(env_vars or {}))
        if apt_proxy:
            sock = Path(tmp) / "proxy.sock"
            stack.enter_context(HostProxy(sock))
            ns.popen(
                [sys.executable, "-m", "tests.netproxy", "forward", str(sock), str(PROXY_PORT)],
                cwd=str(REPO),
            )
            env.extra_env["http_proxy"] = f"http://127.0.0.1:{PROXY_PORT}"
        try:
            env.start_daemon()
            yield env
        finally:
            env.cleanup()


@contextlib.contextmanager
def agent_guest_env(tap_pool_size: int) -> Iterator[VmEnv]:
    """A daemon whose default image is the Debian test guest carrying banger's agent
    (``deb-agent``, 2 vCPU, 1 GiB), git's test identity in the env: the SDK's and the MCP
    server's tests, which create sandboxes without naming an image."""
    from tests import guests
    from tests.gitrepos import GIT_ENV

    config = (
        f'default_image_name = "deb-agent"\ntap_pool_size = {tap_pool_size}\n'
        '[vm_defaults]\nvcpu = 2\nmemory_mib = 1024\ndisk_size = "1G"\n'
    )
    with vm_env(config) as env:
        env.add_test_guests(tiny=False)
        rootfs = str(guests.debian_agent_rootfs())
        env.ok("image", "register", "deb-agent", "--rootfs", rootfs, "--kernel-ref", "cloud")
        env.extra_env.update(GIT_ENV)
        yield env


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
