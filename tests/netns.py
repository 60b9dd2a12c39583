"""Network namespaces for tests that need bridges, TAPs or guest addresses.

The network rule: such addresses live only inside a namespace the test created itself,
never in the host's root namespace. ``netns()`` makes a fresh ``banger-t-<random>``
namespace (loopback up) and deletes it afterwards, also on failure::

    with netns() as ns:
        bridge_with_taps(ns, "br0", "172.30.0.1/24", ["tap0"])
        qemu = ns.popen(["qemu-system-x86_64", ...])
        ns.run(["ssh", ..., "root@172.30.0.2", "true"], timeout=10)

Processes started with ``ns.popen`` are the namespace's: on exit the ones still running
are terminated (then killed) by their pid. Nothing else is ever killed.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

PREFIX = "banger-t-"


@dataclass
class Netns:
    name: str
    _children: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run inside the namespace (same keywords and defaults)."""
        check = kw.pop("check", False)
        return subprocess.run(self.argv(argv), check=check, **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen inside the namespace; still running at exit = terminated."""
        proc = subprocess.Popen(self.argv(argv), **kw)
        self._children.append(proc)
        return proc

    def ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``ip -n <ns> args…``; raises CalledProcessError (with stderr) on failure."""
        return subprocess.run(
            ["ip", "-n", self.name, *args], capture_output=True, text=True, check=True
        )

    def pids(self) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def _stop_children(self) -> None:
        for proc in self._children:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._children:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)


def run_in(ns: Netns, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
    """Same as ``ns.run(argv, **kw)``."""
    return ns.run(argv, **kw)


@contextlib.contextmanager
def netns() -> Iterator[Netns]:
    name = PREFIX + secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=True)
    ns = Netns(name)
    try:
        ns.ip("link", "set", "lo", "up")
        yield ns
    finally:
        _delete(ns)


def _delete(ns: Netns) -> None:
    ns._stop_children()
    # Delete our links explicitly (as recipes/netns-down.sh does): a process that still
    # holds the namespace would otherwise keep the bridge and TAPs alive after `ip netns del`.
    links = subprocess.run(
        ["ip", "-n", ns.name, "-o", "link", "show"], capture_output=True, text=True, check=False
    )
    for line in links.stdout.splitlines():
        dev = line.split(":", 2)[1].strip().split("@")[0]
        if dev != "lo":
            subprocess.run(
                ["ip", "-n", ns.name, "link", "del", dev], capture_output=True, check=False
            )
    subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)


def bridge_with_taps(ns: Netns, bridge: str, cidr_ip: str, taps: Sequence[str]) -> None:
    """A bridge with ``cidr_ip`` (e.g. 172.30.0.1/24) and TAPs enslaved to it, inside ``ns``
    (recipes/netns-up.sh: forward_delay 0, stp_state 0, so frames flow at once)."""
    if not isinstance(ns, Netns) or not ns.name.startswith(PREFIX):
        raise ValueError("bridge_with_taps only works inside a namespace made by netns()")
    ns.ip("link", "add", bridge, "type", "bridge")
    ns.ip("link", "set", bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0")
    ns.ip("addr", "add", cidr_ip, "dev", bridge)
    ns.ip("link", "set", bridge, "up")
    for tap in taps:
        ns.ip("tuntap", "add", "dev", tap, "mode", "tap")
        ns.ip("link", "set", tap, "master", bridge, "up")
