"""The real banger-helper, as root, inside a network namespace the test made (SPEC §9).

ADVERSARIAL 121 (another uid on the socket: refused by SO_PEERCRED with a clear message)
and 127 (the root helper: other users denied; the owner's hostile arguments refused; only
banger's bridge, its TAPs and its nft table ever touched). The helper runs with ``ip netns
exec`` so every link, address and nft rule it makes lives in the test's namespace; the
root namespace is compared before and after. Callers are forked workers that dropped to a
non-root uid (setgroups/setgid/setuid) before connecting, which is what SO_PEERCRED sees.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from banger.config.settings import Config, PrivilegeModeChoice
from banger.errors import (
    ERROR_CLASSES,
    BangerError,
    HelperUnavailable,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from banger.helper.connections import MAX_CONNECTIONS
from banger.host.runner import Runner
from banger.model.wire import StageState
from banger.net.helper_client import HelperPrivilegedOps
from banger.net.helper_wire import MAX_REQUEST_BYTES, decode_object, encode_frame, read_frame
from banger.net.privilege_mode import privileged_ops
from banger.net.privileged import RESOLVED_SOCKET
from banger.services.doctor_inputs import DoctorInputs
from banger.services.doctor_net import check_network
from tests.netns import Netns, netns

pytestmark = [
    pytest.mark.component,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None,
        reason="needs root, iproute2 and nftables (network namespaces)",
    ),
]

OWNER = 4242
STRANGER = 4243
NOGROUP = 65534
BRIDGE = "banger0"
ADDRESS = "10.213.7.1/24"
CIDR = "10.213.7.0/24"
T = TypeVar("T")
HELPER = (sys.executable, "-m", "banger.helper.main")


# -- a helper in a namespace, callers as other uids ------------------------------------------


def _become(uid: int, gid: int) -> None:
    """Worker initializer: this process is ``uid`` from now on (no way back)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    assert os.geteuid() == uid


@dataclass
class Helper:
    ns: Netns
    socket: Path
    proc: subprocess.Popen[bytes]
    log: Path
    _pools: list[ProcessPoolExecutor]

    def as_uid(self, uid: int, gid: int = NOGROUP) -> Caller:
        ctx = multiprocessing.get_context("fork")
        pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=_become, initargs=(uid, gid))
        self._pools.append(pool)
        return Caller(pool, self.socket)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def links(self) -> dict[str, dict[str, Any]]:
        out = json.loads(self.ns.ip("-d", "-j", "link").stdout)
        return {link["ifname"]: link for link in out}

    def inet(self, name: str) -> list[str]:
        out = json.loads(self.ns.ip("-j", "addr", "show", "dev", name).stdout)[0]
        return [f"{a['local']}/{a['prefixlen']}" for a in out["addr_info"] if a["family"] == "inet"]

    def summary(self) -> list[tuple[str, str | None, str | None, list[str]]]:
        """Each link's name, kind, master and IPv4 addresses (not its changing counters)."""
        return sorted(
            (name, link.get("linkinfo", {}).get("info_kind"), link.get("master"), self.inet(name))
            for name, link in self.links().items()
        )

    def nft(self) -> str:
        return str(self.ns.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout)


@dataclass
class Caller:
    pool: ProcessPoolExecutor
    socket: Path

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = self.pool.submit(fn, self.socket, *args).result(timeout=60)
        return result

    def ops(self, method: str, *args: Any, **kw: Any) -> Any:
        return self.call(_ops_call, method, args, kw)

    def raw(self, payload: bytes, *, pause_s: float = 0.0) -> dict[str, Any]:
        return self.call(_raw, payload, pause_s)


def _ops_call(sock: Path, method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    return getattr(HelperPrivilegedOps(sock), method)(*args, **kw)


def _hello(sock: Path) -> Any:
    return HelperPrivilegedOps(sock).hello()


def _raw(sock: Path, payload: bytes, pause_s: float) -> dict[str, Any]:
    """Send bytes as they are (optionally pausing mid-way); the helper's reply, decoded."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(sock))
        half = len(payload) // 2
        try:
            conn.sendall(payload[:half])
            time.sleep(pause_s)
            conn.sendall(payload[half:])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the helper answered early (too large, too slow): read what it said
        frame = read_frame(conn, limit=1 << 20, deadline=time.monotonic() + 30)
        return decode_object(frame)


def _root_net_state() -> tuple[list[str], bool, str]:
    """What of banger's the root namespace holds: links, its nft table, IPv4 forwarding."""
    links = json.loads(
        subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    )
    ours = sorted(
        link["ifname"] for link in links if link["ifname"].startswith(("banger", "bgtap"))
    )
    tables = subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, check=False
    ).stdout
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    return ours, "inet banger" in tables, forward


def _start(ns: Netns, base: Path, config: str, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    cfg = base / "helper.toml"
    cfg.write_text(config)
    cfg.chmod(0o644)
    sock = base / "run" / "helper.sock"
    log = base / "helper.log"
    with log.open("wb") as out:
        proc = ns.popen(
            [*HELPER, "--config", str(cfg), "--socket", str(sock), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"helper did not start: {log.read_text()}")
        time.sleep(0.05)
    return proc, log


@pytest.fixture
def helper() -> Iterator[Helper]:
    before = _root_net_state()
    base = Path(tempfile.mkdtemp(prefix="banger-helper-t-"))
    base.chmod(0o755)  # callers of other uids must reach base/run/helper.sock
    pools: list[ProcessPoolExecutor] = []
    try:
        with netns() as ns:
            proc, log = _start(ns, base, f'owners = [{OWNER}]\ngroup = "nogroup"\n')
            h = Helper(ns, base / "run" / "helper.sock", proc, log, pools)
            yield h
            for pool in pools:
                pool.shutdown(wait=True, cancel_futures=True)
            assert h.alive(), log.read_text()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert _root_net_state() == before  # the root namespace never changed


# -- the owner's daemon gets its network -----------------------------------------------------


def test_owner_gets_bridge_tap_and_nat_inside_the_namespace(helper: Helper) -> None:
    owner = helper.as_uid(OWNER)
    hello = owner.call(_hello)
    assert (hello.bridge_name, hello.bridge_address, hello.cidr) == (BRIDGE, ADDRESS, CIDR)

    owner.ops("ensure_bridge", BRIDGE, ADDRESS)
    owner.ops("create_tap", "bgtap0", bridge=BRIDGE, owner_uid=OWNER)
    owner.ops("enable_ip_forward")
    owner.ops("ensure_nat", BRIDGE, CIDR)
    owner.ops("ensure_nat", BRIDGE, CIDR)  # re-running does not duplicate the rules

    links = helper.links()
    assert links[BRIDGE]["linkinfo"]["info_kind"] == "bridge"
    assert helper.inet(BRIDGE) == [ADDRESS]
    tap = links["bgtap0"]
    assert tap["master"] == BRIDGE
    assert tap["linkinfo"]["info_data"]["user"] in (str(OWNER), OWNER)
    assert owner.ops("list_taps", owner_uid=OWNER) == ["bgtap0"]
    ruleset = helper.nft()
    assert ruleset.count("masquerade") == 1 and f"ip saddr {CIDR}" in ruleset
    forward = helper.ns.run(["cat", "/proc/sys/net/ipv4/ip_forward"], capture_output=True)
    assert forward.stdout.strip() == b"1"

    # Another owner's TAP (here: one root made) is not this owner's to delete.
    helper.ns.ip("tuntap", "add", "dev", "bgtap5", "mode", "tap", "user", "0")
    with pytest.raises(PermissionDenied):
        owner.ops("delete_tap", "bgtap5")
    owner.ops("delete_tap", "bgtap0")
    owner.ops("delete_tap", "bgtap0")  # already gone: not an error
    owner.ops("remove_nat")
    assert "bgtap0" not in helper.links() and "bgtap5" in helper.links()
    assert "banger" not in helper.nft()


TUNGETIFF = 0x800454D2  # _IOR('T', 210, unsigned int)


def _open_tap_and_describe(sock: Path, name: str) -> tuple[str, bool, bool]:
    """In the caller's process (an owner, who cannot open a 0600 /dev/net/tun): the
    helper's descriptor is attached to ``name`` (TUNGETIFF), close-on-exec, a char device."""
    fd = HelperPrivilegedOps(sock).open_tap(name, owner_uid=os.getuid())
    try:
        ifr = fcntl.ioctl(fd, TUNGETIFF, b"\0" * 40)
        attached = ifr[:16].rstrip(b"\0").decode()
        cloexec = bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
        return attached, cloexec, stat.S_ISCHR(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_open_tap_hands_the_owner_its_own_tap_and_nothing_else(helper: Helper) -> None:
    """Issue 11: a 0600 /dev/net/tun (this CI's) is no obstacle: the helper opens it."""
    owner = helper.as_uid(OWNER)
    owner.ops("ensure_bridge", BRIDGE, ADDRESS)
    owner.ops("create_tap", "bgtap0", bridge=BRIDGE, owner_uid=OWNER)
    assert owner.call(_open_tap_and_describe, "bgtap0") == ("bgtap0", True, True)
    before = helper.open_fds()
    assert owner.call(_open_tap_and_describe, "bgtap0")[0] == "bgtap0"  # again, once closed
    helper.ns.ip("tuntap", "add", "dev", "bgtap5", "mode", "tap", "user", "0")
    with pytest.raises(PermissionDenied, match="does not belong to uid"):
        owner.call(_open_tap_and_describe, "bgtap5")  # root's TAP
    with pytest.raises(NotFound):
        owner.call(_open_tap_and_describe, "bgtap7")  # no such TAP
    with pytest.raises(InvalidArgument):
        owner.call(_open_tap_and_describe, "eth0")  # not banger's naming
    for _ in range(5):
        with pytest.raises(PermissionDenied):
            owner.call(_open_tap_and_describe, "bgtap5")
    assert helper.open_fds() == before, "the helper keeps no descriptor it passed or refused"
    owner.ops("delete_tap", "bgtap0")


# -- who may call ------------------------------------------------------------------------------


def test_another_uid_in_the_group_is_refused_by_peercred(helper: Helper) -> None:
    stranger = helper.as_uid(STRANGER)  # gid nogroup: it reaches the socket
    with pytest.raises(PermissionDenied, match=f"uid {STRANGER} may not use this banger-helper"):
        stranger.ops("ensure_bridge", BRIDGE, ADDRESS)
    assert BRIDGE not in helper.links()


def test_another_uid_outside_the_group_cannot_even_connect(helper: Helper) -> None:
    outsider = helper.as_uid(STRANGER, gid=STRANGER)
    with pytest.raises(HelperUnavailable, match="Permission denied"):
        outsider.ops("ensure_bridge", BRIDGE, ADDRESS)


def test_root_is_not_an_owner(helper: Helper) -> None:
    with pytest.raises(PermissionDenied, match="uid 0 may not use"):
        HelperPrivilegedOps(helper.socket).hello()


# -- what the owner may ask ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "args", "kw", "error"),
    [
        ("ensure_bridge", ("banger1", ADDRESS), {}, PermissionDenied),  # another bridge
        ("ensure_bridge", ("eth0", ADDRESS), {}, PermissionDenied),
        ("ensure_bridge", (BRIDGE, "10.213.8.1/24"), {}, PermissionDenied),  # another CIDR
        ("ensure_nat", (BRIDGE, "10.0.0.0/8"), {}, InvalidArgument),  # a /8: never ours
        ("ensure_nat", (BRIDGE, "10.213.0.0/16"), {}, PermissionDenied),  # not the config's
        ("ensure_nat", ("lo", CIDR), {}, PermissionDenied),
        ("create_tap", ("tap0",), {"bridge": BRIDGE, "owner_uid": OWNER}, InvalidArgument),
        ("create_tap", ("bgtap%d",), {"bridge": BRIDGE, "owner_uid": OWNER}, InvalidArgument),
        ("create_tap", ("bgtap1",), {"bridge": "docker0", "owner_uid": OWNER}, PermissionDenied),
        ("create_tap", ("bgtap1",), {"bridge": BRIDGE, "owner_uid": STRANGER}, PermissionDenied),
        ("create_tap", ("bgtap1",), {"bridge": BRIDGE, "owner_uid": 0}, PermissionDenied),
        ("delete_tap", ("lo",), {}, InvalidArgument),
        ("list_taps", (), {"owner_uid": STRANGER}, PermissionDenied),
        ("route_vm_domain", ("eth0", 42069), {}, PermissionDenied),
        ("route_vm_domain", (BRIDGE, 53), {}, InvalidArgument),
    ],
)
def test_owner_requests_outside_the_config_are_refused(
    helper: Helper, method: str, args: tuple[Any, ...], kw: dict[str, Any], error: type[Exception]
) -> None:
    owner = helper.as_uid(OWNER)
    owner.ops("ensure_bridge", BRIDGE, ADDRESS)
    before = helper.summary()
    with pytest.raises(error):
        owner.ops(method, *args, **kw)
    assert helper.summary() == before
    assert "banger" not in helper.nft()


# -- malformed, oversized, slow ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x00\x00\x00\x05hello", "invalid_request"),  # not JSON
        (b"\x00\x00\x00\x02[]", "invalid_request"),  # not an object
        (encode_frame({"verb": "shell", "args": {"cmd": "id"}}), "invalid_request"),
        (encode_frame({"verb": "delete-tap", "args": {"name": "eth0"}}), "invalid_argument"),
        (b"\x00\x10\x00\x00" + b"x" * 8192, "payload_too_large"),  # 1 MiB announced
        ((MAX_REQUEST_BYTES + 1).to_bytes(4, "big") + b" " * 100, "payload_too_large"),
        (b"\x00\x00\x01\x00{", "invalid_request"),  # closes with bytes missing
        (b"\x00\x00", "invalid_request"),  # a partial header
    ],
)
def test_malformed_requests_get_an_error_and_the_helper_goes_on(
    helper: Helper, payload: bytes, code: str
) -> None:
    owner = helper.as_uid(OWNER)
    reply = owner.call(_raw_then_close, payload)
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert owner.ops("list_taps") == []  # still serving


def _raw_then_close(sock: Path, payload: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(sock))
        try:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)  # "that is all": a short message must not hang
        except (BrokenPipeError, ConnectionResetError):
            pass
        return decode_object(read_frame(conn, limit=1 << 20, deadline=time.monotonic() + 30))


def test_a_slow_request_times_out_without_holding_up_others(helper: Helper) -> None:
    slow, quick = helper.as_uid(OWNER), helper.as_uid(OWNER)
    frame = encode_frame({"verb": "hello", "args": {}})
    pending = slow.pool.submit(_raw, helper.socket, frame, 7.0)  # half now, half after 7 s
    time.sleep(0.5)
    started = time.monotonic()
    assert quick.ops("list_taps") == []
    assert time.monotonic() - started < 2.0
    reply = pending.result(timeout=30)
    assert reply["ok"] is False and reply["error"]["code"] == "timeout"


def _hold_all_slots_then_call(sock: Path) -> tuple[dict[str, Any], str]:
    held = []
    for _ in range(MAX_CONNECTIONS):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(sock))
        held.append(conn)
    time.sleep(0.5)  # let the helper accept them all
    try:
        extra = _raw(sock, encode_frame({"verb": "hello", "args": {}}), 0.0)
    finally:
        for conn in held:
            conn.close()  # their threads see EOF and end at once
    time.sleep(0.5)
    return extra, HelperPrivilegedOps(sock).hello().bridge_name


def test_idle_connections_cannot_pile_up(helper: Helper) -> None:
    """At most MAX_CONNECTIONS are served at once; one more is told so, not queued."""
    extra, after = helper.as_uid(OWNER).call(_hold_all_slots_then_call)
    assert extra["ok"] is False and extra["error"]["code"] == "in_use", extra
    assert after == BRIDGE


# -- the helper's own start-up checks ----------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "mode", "owner", "message"),
    [
        (f"owners = [{OWNER}]\n", 0o666, 0, "writable by root only"),
        (f"owners = [{OWNER}]\n", 0o644, OWNER, "must belong to root"),
        ("owners = [0]\n", 0o644, 0, "root cannot be an owner"),
        (f'owners = [{OWNER}]\ncidr = "0.0.0.0/0"\n', 0o644, 0, "RFC 1918"),
        (f'owners = [{OWNER}]\nrun = "/bin/sh"\n', 0o644, 0, "unknown key"),
    ],
)
def test_helper_refuses_to_start_on_a_bad_config(
    tmp_path: Path, config: str, mode: int, owner: int, message: str
) -> None:
    tmp_path.chmod(0o755)
    cfg = tmp_path / "helper.toml"
    cfg.write_text(config)
    os.chown(cfg, owner, 0)
    cfg.chmod(mode)
    out = subprocess.run(
        [*HELPER, "--config", str(cfg), "--socket", str(tmp_path / "run" / "helper.sock")],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (tmp_path / "run" / "helper.sock").exists()


@pytest.mark.parametrize("kind", ["symlink", "user-owned", "file"])
def test_helper_refuses_a_socket_directory_it_cannot_trust(tmp_path: Path, kind: str) -> None:
    """The socket's directory gets root:group 0750; never through a link or for a user's dir."""
    tmp_path.chmod(0o755)
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    run = tmp_path / "run"
    if kind == "symlink":
        run.symlink_to(victim)
    elif kind == "user-owned":
        run.mkdir(mode=0o755)
        os.chown(run, OWNER, OWNER)
    else:
        run.write_text("")
    out = subprocess.run(
        [*HELPER, "--owner", "nobody", "--socket", str(run / "helper.sock")],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "owned by root" in out.stderr, out.stderr
    assert victim.stat().st_mode & 0o777 == 0o755 and victim.stat().st_gid == 0
    assert not any(victim.iterdir())


def test_helper_refuses_to_run_as_a_normal_user(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            *("setpriv", f"--reuid={OWNER}", f"--regid={NOGROUP}", "--clear-groups"),
            *(*HELPER, "--owner", "4242", "--socket", str(tmp_path / "helper.sock")),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "must run as root" in out.stderr, out.stderr


def test_a_second_helper_on_the_same_socket_is_refused(helper: Helper) -> None:
    config = helper.socket.parent.parent / "helper.toml"
    out = helper.ns.run(
        [*HELPER, "--config", str(config), "--socket", str(helper.socket)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "already listens" in out.stderr, out.stderr
    assert helper.as_uid(OWNER).ops("list_taps") == []


# -- the daemon's side: mode selection and doctor ----------------------------------------------


def _doctor_network(
    sock: Path, setting: PrivilegeModeChoice = PrivilegeModeChoice.AUTO
) -> tuple[str, str, str | None]:
    config = Config(privilege_mode=setting)
    result = check_network(DoctorInputs(None, config, None, str, helper_socket=sock))  # type: ignore[arg-type]
    return result.state.value, result.detail, result.hint


def _can_open_tun(_: Path) -> bool:
    return os.access("/dev/net/tun", os.R_OK | os.W_OK)


def _doctor_network_without_helper(sock: Path) -> tuple[str, str, str | None]:
    """``privilege_mode = "helper"``: no helper means mode none, never rootless."""
    return _doctor_network(sock.parent / "absent.sock", PrivilegeModeChoice.HELPER)


def _doctor_network_rootless(sock: Path) -> tuple[str, str, str | None]:
    """``privilege_mode = "auto"`` (the default): no helper means rootless."""
    return _doctor_network(sock.parent / "absent.sock")


def _create_without_helper(sock: Path) -> tuple[str, str, str | None]:
    os.environ["BANGER_HELPER_SOCKET"] = str(sock.parent / "absent.sock")
    ops = privileged_ops(Runner(), bridge_name=BRIDGE)
    try:
        ops.ensure_bridge(BRIDGE, ADDRESS)
    except BangerError as exc:
        return type(ops).__name__, exc.brief, exc.hint
    raise AssertionError("ensure_bridge worked without a helper")


def test_modes_as_doctor_and_vm_creation_see_them(helper: Helper) -> None:
    owner = helper.as_uid(OWNER)
    state, detail, hint = owner.call(_doctor_network)
    assert detail.startswith("mode helper"), detail
    if owner.call(_can_open_tun) or shutil.which("firecracker") is None:
        # A 0600 /dev/net/tun (this CI's) no longer matters to QEMU: the helper opens it.
        assert state == StageState.OK.value, detail
    else:  # only Firecracker, which opens the TAP by name itself, still needs it
        assert state == StageState.WARN.value and "/dev/net/tun" in detail, detail
        assert hint is not None and "chmod 0666 /dev/net/tun" in hint

    name, brief, hint = owner.call(_create_without_helper)
    assert name == "HelperPrivilegedOps"
    assert "privilege mode: none" in brief and "uid 4242" in brief
    assert hint is not None and "sudo " in hint and "banger-helper --owner 4242" in hint
    assert "rootless mode" in hint and 'privilege_mode = "auto"' in hint

    state, detail, hint = owner.call(_doctor_network_without_helper)
    assert state == StageState.FAIL.value and detail.startswith("mode none"), detail
    assert hint is not None and "banger-helper --owner 4242" in hint

    state, detail, hint = owner.call(_doctor_network_rootless)
    assert state == StageState.OK.value and detail.startswith("mode rootless"), detail
    assert "no <vm>.vm address" in detail and "no Firecracker" in detail
    assert hint is not None and "system install" in hint

    state, detail, _ = _doctor_network(helper.socket)  # this test process is root
    assert state == StageState.OK.value and detail.startswith("mode root"), detail


# -- fuzz ----------------------------------------------------------------------------------------


def test_fuzzed_arguments_never_crash_the_helper_or_leave_the_namespace(helper: Helper) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    owner = helper.as_uid(OWNER)
    names = st.sampled_from(
        [
            *("banger0", "banger1", "eth0", "lo", "bgtap0", "bgtap1", "bgtap99999999999"),
            *("tap0", "bgtap%d", "x" * 16, "", "bgtap0 ", "a;b", "$(id)", "../x"),
            "\uff42\uff47\uff54\uff41\uff50" + "1",  # fullwidth "bgtap"
        ]
    )
    cidrs = st.sampled_from(
        [CIDR, ADDRESS, "10.213.8.0/24", "0.0.0.0/0", "10.0.0.0/8", "8.8.8.0/24", "1/2", ""]
    )
    anything = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=40),
        names,
        cidrs,
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    )
    uids = st.one_of(st.sampled_from([OWNER, STRANGER, 0, -1, 2**32, None]), anything)
    args_for = {
        "hello": st.fixed_dictionaries({}),
        "ensure-bridge": st.fixed_dictionaries({"name": names | anything, "address": cidrs}),
        "create-tap": st.fixed_dictionaries(
            {"name": names | anything, "bridge": names, "owner_uid": uids}
        ),
        "delete-tap": st.fixed_dictionaries({"name": names | anything}),
        "open-tap": st.fixed_dictionaries({"name": names | anything}),
        "list-taps": st.fixed_dictionaries({"owner_uid": uids}),
        "nat-on": st.fixed_dictionaries({"bridge": names | anything, "cidr": cidrs | anything}),
        "nat-off": st.fixed_dictionaries({}),
        "ip-forward": st.fixed_dictionaries({}),
        "route-vm-domain": st.fixed_dictionaries(
            {"bridge": names, "dns_port": st.integers(-5, 70000) | anything}
        ),
    }
    if RESOLVED_SOCKET.exists():
        # resolvectl would reach the root namespace's resolved with the netns's ifindex.
        del args_for["route-vm-domain"]
    requests = st.one_of(
        *(
            st.builds(lambda v, a: {"verb": v, "args": a}, st.just(verb), strategy)
            for verb, strategy in args_for.items()
        ),
        st.dictionaries(st.sampled_from(["verb", "args", "x"]), anything, max_size=3),
    )

    succeeded: set[str] = set()
    sent: list[dict[str, Any]] = []

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(message=requests)
    def fuzz(message: dict[str, Any]) -> None:
        reply = owner.raw(encode_frame(message))
        sent.append(message)
        if reply["ok"] is True:
            succeeded.add(message["verb"])
        else:
            code = reply["error"]["code"]
            assert code in ERROR_CLASSES and code != "internal", reply
            if code == "command_failed":  # only nft/resolvectl may fail, never on our input
                assert message["verb"] in ("nat-on", "nat-off", "route-vm-domain"), reply

    fuzz()
    # The fuzz reached the privileged code, not only the refusals.
    assert len(sent) >= 300, len(sent)
    assert {"hello", "list-taps", "nat-off", "ip-forward"} <= succeeded, succeeded
    assert helper.alive(), helper.log.read_text()
    assert "unexpected failure" not in helper.log.read_text()

    # Only banger's own things exist in the namespace, on banger's own terms.
    for name, link in helper.links().items():
        if name in ("lo", BRIDGE):
            continue
        assert name.startswith("bgtap") and name[5:].isdigit(), name
        assert link["linkinfo"]["info_data"]["user"] in (str(OWNER), OWNER), link
    if BRIDGE in helper.links():
        assert helper.inet(BRIDGE) == [ADDRESS]
    ruleset = helper.nft()
    assert ruleset.count("table ") <= 1
    if ruleset.strip():
        assert "table inet banger" in ruleset and f"ip saddr {CIDR}" in ruleset


def test_fuzzed_bytes_never_crash_the_helper(helper: Helper) -> None:
    """Arbitrary bodies behind a correct length, and arbitrary JSON values: error replies."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    owner = helper.as_uid(OWNER)
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=10,
    )
    bodies = st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
    )

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(body=bodies)
    def fuzz(body: bytes) -> None:
        if len(body) > MAX_REQUEST_BYTES:
            return
        reply = owner.raw(len(body).to_bytes(4, "big") + body)
        assert (
            reply["ok"] is False
            or reply["result"] is None
            or isinstance(reply["result"], dict | list | bool)
        )
        if reply["ok"] is False:
            assert reply["error"]["code"] in ERROR_CLASSES and reply["error"]["code"] != "internal"

    fuzz()
    assert helper.alive(), helper.log.read_text()
    assert "unexpected failure" not in helper.log.read_text()
    assert owner.ops("list_taps") == []
