"""Bridge, TAPs, the TAP pool and NAT on a real kernel (ADVERSARIAL 93, 118, 127).

The network rule: everything here happens inside a ``banger-t-<random>`` namespace made
by ``tests.netns.netns()``. The code under test runs in a forked worker process that has
joined that namespace (``setns``) before doing anything, and checks that it did; the test
process itself only inspects the namespace with ``ip -n`` and ``ip netns exec``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import multiprocessing
import os
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from banger.errors import AlreadyExists, BangerError, InvalidArgument, NotFound
from banger.host.runner import Runner
from banger.model.addressing import mac_for_ip
from banger.net.privileged import InProcessPrivilegedOps
from banger.net.taps import TapPool
from tests.netns import Netns, netns

pytestmark = [
    pytest.mark.component,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None,
        reason="needs root, iproute2 and nftables (network namespaces)",
    ),
]

BRIDGE = "banger0"
ADDRESS = "10.213.7.1/24"
CIDR = "10.213.7.0/24"
UID = 4242
OTHER_UID = 4243
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


# -- running code inside the namespace -----------------------------------------------------


def _join_netns(name: str) -> None:
    """Worker initializer: move this (single-threaded) process into the test namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
        # Refuse to run anything unless we really are in the test's namespace.
        if os.stat("/proc/self/ns/net").st_ino != os.fstat(fd).st_ino:
            raise RuntimeError(f"not inside netns {name}; refusing to touch the network")
    finally:
        os.close(fd)


@dataclass
class Sandbox:
    ns: Netns
    worker: ProcessPoolExecutor

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = self.worker.submit(fn, *args).result(timeout=120)
        return result

    def link(self, name: str) -> dict[str, Any] | None:
        out = self.ns.run(["ip", "-d", "-j", "link", "show", "dev", name], capture_output=True)
        return json.loads(out.stdout)[0] if out.returncode == 0 else None

    def links(self) -> list[str]:
        return sorted(link["ifname"] for link in json.loads(self.ns.ip("-j", "link").stdout))

    def inet(self, name: str) -> list[str]:
        out = json.loads(self.ns.ip("-j", "addr", "show", "dev", name).stdout)[0]
        return [f"{a['local']}/{a['prefixlen']}" for a in out["addr_info"] if a["family"] == "inet"]

    def nft(self, *args: str) -> str:
        return str(self.ns.run(["nft", *args], capture_output=True, text=True, check=True).stdout)

    def snapshot(self) -> tuple[str, str, str]:
        return (
            self.ns.ip("-d", "-j", "link").stdout,
            self.ns.ip("-j", "addr").stdout,
            self.nft("list", "ruleset"),
        )


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with netns() as ns:
        ctx = multiprocessing.get_context("fork")
        pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=_join_netns, initargs=(ns.name,))
        try:
            yield Sandbox(ns, pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _ops() -> InProcessPrivilegedOps:
    return InProcessPrivilegedOps(Runner(), bridge_name=BRIDGE)


def _bridge_up() -> None:
    _ops().ensure_bridge(BRIDGE, ADDRESS)


# -- the bridge ---------------------------------------------------------------------------


def _ensure_bridge_twice() -> None:
    _bridge_up()
    _bridge_up()


def test_bridge_is_created_once_with_address_and_no_stp(box: Sandbox) -> None:
    box.call(_ensure_bridge_twice)
    link = box.link(BRIDGE)
    assert link is not None
    info = link["linkinfo"]
    assert info["info_kind"] == "bridge"
    assert info["info_data"]["forward_delay"] == 0 and info["info_data"]["stp_state"] == 0
    assert "UP" in link["flags"]
    # A fixed MAC: the bridge must not take over the MAC of whichever TAP joins first.
    assert link["address"] == mac_for_ip("10.213.7.1")
    assert box.inet(BRIDGE) == [ADDRESS]


def _move_bridge() -> None:
    _ops().ensure_bridge(BRIDGE, "10.213.9.1/24")


def test_a_changed_cidr_replaces_the_old_address(box: Sandbox) -> None:
    box.call(_bridge_up)
    box.call(_move_bridge)
    assert box.inet(BRIDGE) == ["10.213.9.1/24"]


def _ensure_user_bridge(name: str) -> str:
    try:
        InProcessPrivilegedOps(Runner(), bridge_name=name).ensure_bridge(name, ADDRESS)
    except BangerError as exc:
        return f"{type(exc).__name__}: {exc.brief}"
    return "ok"


def test_a_bridge_that_is_not_ours_must_already_exist(box: Sandbox) -> None:
    assert box.call(_ensure_user_bridge, "br-user").startswith("NotFound: bridge br-user")
    assert "br-user" not in box.links()
    box.ns.ip("link", "add", "br-user", "type", "bridge")
    assert box.call(_ensure_user_bridge, "br-user") == "ok"
    assert box.inet("br-user") == [ADDRESS]
    link = box.link("br-user")
    assert link is not None and link["linkinfo"]["info_data"]["forward_delay"] == 1500
    box.ns.ip("link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    assert box.call(_ensure_user_bridge, "uplink0").startswith("Conflict: uplink0 exists")


# -- TAPs ---------------------------------------------------------------------------------


def _open_tap_as(name: str, uid: int) -> int:
    """In a grandchild running as ``uid``: attach to TAP ``name``; return 0 or the errno."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the grandchild
        code = 0
        try:
            # Opened before dropping root: some hosts (containers) make /dev/net/tun 0600.
            # What is under test is TUNSETIFF's owner check, which runs after the drop.
            fd = os.open("/dev/net/tun", os.O_RDWR)
            os.setgid(uid)
            os.setuid(uid)
            iff_tap, iff_no_pi, iff_vnet_hdr = 0x0002, 0x1000, 0x4000
            ifr = struct.pack("16sH", name.encode(), iff_tap | iff_no_pi | iff_vnet_hdr)
            fcntl.ioctl(fd, 0x400454CA, ifr)  # TUNSETIFF
        except OSError as exc:
            code = exc.errno or 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _create_tap_and_open() -> tuple[int, int]:
    _bridge_up()
    _ops().create_tap("bgtap0", bridge=BRIDGE, owner_uid=UID)
    return _open_tap_as("bgtap0", OTHER_UID), _open_tap_as("bgtap0", UID)


def _delete_tap_twice() -> list[str]:
    ops = _ops()
    ops.delete_tap("bgtap0")
    ops.delete_tap("bgtap0")  # already gone: fine
    return ops.list_taps()


def test_tap_is_owned_attached_and_deleted(box: Sandbox) -> None:
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun")
    other, owner = box.call(_create_tap_and_open)
    link = box.link("bgtap0")
    assert link is not None
    assert link["linkinfo"]["info_kind"] == "tun"
    assert link["linkinfo"]["info_data"]["type"] == "tap"
    assert link["linkinfo"]["info_data"]["user"] == UID
    assert link["master"] == BRIDGE and "UP" in link["flags"]
    # The owner's unprivileged VMM can open it; another user cannot (ADVERSARIAL 127).
    assert (other, owner) == (errno.EPERM, 0)
    assert box.call(_delete_tap_twice) == []
    assert box.link("bgtap0") is None


def _create_over_existing() -> str:
    _bridge_up()
    try:
        _ops().create_tap("bgtap5", bridge=BRIDGE, owner_uid=UID)
    except AlreadyExists as exc:
        return exc.brief
    return "created"


def test_creating_never_adopts_an_existing_tap(box: Sandbox) -> None:
    box.ns.ip("tuntap", "add", "dev", "bgtap5", "mode", "tap", "user", str(OTHER_UID))
    assert "already exists" in box.call(_create_over_existing)
    link = box.link("bgtap5")
    assert link is not None and link["linkinfo"]["info_data"]["user"] == OTHER_UID


def _create_without_bridge() -> str:
    try:
        _ops().create_tap("bgtap0", bridge=BRIDGE, owner_uid=UID)
    except NotFound as exc:
        return exc.brief
    return "created"


def test_a_tap_needs_the_bridge(box: Sandbox) -> None:
    assert "not set up" in box.call(_create_without_bridge)
    assert box.links() == ["lo"]


# -- the pool -----------------------------------------------------------------------------


def _parallel_acquires() -> dict[str, Any]:
    _bridge_up()
    ops = _ops()
    pool = TapPool(ops, BRIDGE, 2, UID)
    pool.fill()
    warm_before = pool.warm
    got: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def grab() -> None:
        barrier.wait()
        try:
            got.append(pool.acquire({"bgtap3"}))  # a VM row already uses bgtap3
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.wait_idle()
    on_host = ops.list_taps(owner_uid=UID)
    for name in got:
        pool.release(name)
    pool.wait_idle()
    return {
        "warm_before": warm_before,
        "got": got,
        "errors": [repr(e) for e in errors],
        "on_host": on_host,
        "after_release": ops.list_taps(),
        "warm_after": pool.warm,
    }


def test_eight_parallel_acquires_get_eight_distinct_taps(box: Sandbox) -> None:
    result = box.call(_parallel_acquires)
    assert result["errors"] == []
    assert len(result["warm_before"]) == 2
    got = result["got"]
    assert len(got) == 8 and len(set(got)) == 8
    assert "bgtap3" not in got
    assert set(result["warm_before"]) <= set(got)  # warm ones were handed out first
    assert set(got) <= set(result["on_host"])
    # Released TAPs are deleted; the pool tops itself back up to its size.
    assert sorted(result["after_release"]) == sorted(result["warm_after"])
    assert len(result["warm_after"]) == 2
    for name in result["warm_after"]:
        link = box.link(name)
        assert link is not None and link["master"] == BRIDGE


def _cleanup(in_use: set[str]) -> list[str]:
    _bridge_up()
    ops = _ops()
    for name in ("bgtap3", "bgtap7"):
        ops.create_tap(name, bridge=BRIDGE, owner_uid=UID)
    ops.create_tap("bgtap9", bridge=BRIDGE, owner_uid=OTHER_UID)  # another user's
    return TapPool(ops, BRIDGE, 0, UID).cleanup_orphans(in_use)


def test_cleanup_deletes_only_our_unused_taps(box: Sandbox) -> None:
    box.ns.ip("tuntap", "add", "dev", "tap0", "mode", "tap")  # the user's own
    box.ns.ip("tuntap", "add", "dev", "bgtapx", "mode", "tap")  # not our naming
    box.ns.ip("tuntap", "add", "dev", "bgtap8", "mode", "tun")  # our naming, but not a TAP
    assert box.call(_cleanup, {"bgtap3"}) == ["bgtap7"]
    assert box.links() == sorted(["lo", BRIDGE, "tap0", "bgtapx", "bgtap8", "bgtap3", "bgtap9"])


# -- NAT ----------------------------------------------------------------------------------


def _nat_twice() -> None:
    _bridge_up()
    ops = _ops()
    ops.enable_ip_forward()
    ops.ensure_nat(BRIDGE, CIDR)
    ops.ensure_nat(BRIDGE, CIDR)


def _nat_off() -> None:
    _ops().remove_nat()
    _ops().remove_nat()  # already gone: fine


def test_nat_table_exists_once_and_goes_away(box: Sandbox) -> None:
    box.call(_nat_twice)
    table = box.nft("list", "table", "inet", "banger")
    assert table.count("masquerade") == 1
    assert table.count('iifname "banger0"') == 1 and table.count('oifname "banger0" counter') == 1
    assert "ip saddr 10.213.7.0/24" in table
    tables = json.loads(box.nft("-j", "list", "tables"))["nftables"]
    assert [t["table"]["name"] for t in tables if "table" in t] == ["banger"]
    forward = box.ns.run(["cat", "/proc/sys/net/ipv4/ip_forward"], capture_output=True, text=True)
    assert forward.stdout.strip() == "1"
    box.call(_nat_off)
    assert box.nft("list", "ruleset").strip() == ""


# -- hostile arguments (ADVERSARIAL 127) ------------------------------------------------------

HOSTILE: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("delete_tap", ("eth0",), {}),
    ("delete_tap", ("lo",), {}),
    ("delete_tap", ("%d",), {}),
    ("delete_tap", ("bgtap%d",), {}),
    ("delete_tap", ("bgtap12345678901",), {}),  # 16 bytes: never truncated to 15
    ("delete_tap", ("bgtap01",), {}),  # not a name we make (leading zero)
    ("delete_tap", ("bgtap1;reboot",), {}),
    ("delete_tap", ("bgtap1 eth0",), {}),
    ("delete_tap", ("bgtap8",), {}),  # our naming, but a TUN, not a TAP: never deleted
    ("create_tap", ("eth0",), {"bridge": BRIDGE, "owner_uid": UID}),
    ("create_tap", ("bgtap1",), {"bridge": "eth0", "owner_uid": UID}),
    ("create_tap", ("bgtap1",), {"bridge": "other0", "owner_uid": UID}),
    ("create_tap", ("bgtap1",), {"bridge": BRIDGE, "owner_uid": -1}),
    ("create_tap", ("x" * 16,), {"bridge": BRIDGE, "owner_uid": UID}),
    ("ensure_bridge", ("lo", ADDRESS), {}),
    ("ensure_bridge", ("eth0", ADDRESS), {}),
    ("ensure_bridge", ("banger0;x", ADDRESS), {}),
    ("ensure_bridge", (BRIDGE, "0.0.0.0/0"), {}),
    ("ensure_bridge", (BRIDGE, "8.8.8.1/24"), {}),
    ("ensure_nat", (BRIDGE, "0.0.0.0/0"), {}),
    ("ensure_nat", (BRIDGE, "8.8.8.0/24"), {}),
    ("ensure_nat", ('banger0" accept; #', CIDR), {}),
    ("ensure_nat", ("eth0", CIDR), {}),
    ("ensure_nat", (BRIDGE, f"{CIDR}; flush ruleset"), {}),
    ("list_taps", (), {"owner_uid": -1}),
]
UNPINNED_HOSTILE: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("ensure_bridge", ("lo", ADDRESS), {}),
    ("ensure_bridge", ("eth0", ADDRESS), {}),
    ("ensure_bridge", ("br-absent", ADDRESS), {}),
    ("create_tap", ("bgtap1",), {"bridge": "eth0", "owner_uid": UID}),
]


def _hostile_calls() -> list[str]:
    ops = _ops()
    outcomes = []
    for method, args, kwargs in HOSTILE:
        try:
            getattr(ops, method)(*args, **kwargs)
        except BangerError as exc:
            outcomes.append(f"{type(exc).__name__}: {exc.brief}")
        else:
            outcomes.append(f"ACCEPTED {method}{args}")
    try:
        InProcessPrivilegedOps(Runner(), bridge_name="bgtap0")
    except InvalidArgument as exc:
        outcomes.append(f"InvalidArgument: {exc.brief}")
    # Not pinned to a bridge: still never a non-bridge, nor a bridge that is not ours.
    unpinned = InProcessPrivilegedOps(Runner())
    for method, args, kwargs in UNPINNED_HOSTILE:
        try:
            getattr(unpinned, method)(*args, **kwargs)
        except BangerError as exc:
            outcomes.append(f"{type(exc).__name__}: {exc.brief}")
        else:
            outcomes.append(f"ACCEPTED unpinned {method}{args}")
    return outcomes


def test_hostile_arguments_are_rejected_and_nothing_changes(box: Sandbox) -> None:
    box.ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    box.ns.ip("link", "add", "other0", "type", "bridge")
    box.ns.ip("tuntap", "add", "dev", "bgtap8", "mode", "tun")
    box.ns.run(["nft", "add", "table", "ip", "users"], check=True)
    before = box.snapshot()
    outcomes = box.call(_hostile_calls)
    assert not [o for o in outcomes if o.startswith("ACCEPTED")], outcomes
    assert len(outcomes) == len(HOSTILE) + 1 + len(UNPINNED_HOSTILE)
    for outcome in outcomes:
        kind = outcome.split(":")[0]
        assert kind in {"InvalidArgument", "PermissionDenied", "Conflict", "NotFound"}, outcome
    assert any("1-15 ASCII" in o for o in outcomes)
    assert any("not private" in o for o in outcomes)
    assert any("not the configured bridge" in o for o in outcomes)
    assert any("not a banger TAP" in o for o in outcomes)
    assert box.snapshot() == before
