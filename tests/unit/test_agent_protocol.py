"""The agent's wire protocol, both sides, without a guest.

Guest side: the agent module's own functions (HTTP subset, hand-written JSON, /proc
parsing over a fake /proc tree, Python 3.7 syntax and python3-minimal imports only).
Host side: ``AgentClient`` against deliberately hostile peers on real Unix sockets
(ADVERSARIAL 100: garbage instead of ``OK <port>\\n``, megabyte lines, no reply, a close
mid-message, many connections closed with data in flight; 64: nothing the guest says is
a path), the Firecracker ``CONNECT``/``OK`` handshake edge cases, the per-channel lock, and
``banger.vmm.channels``.
"""

from __future__ import annotations

import ast
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from banger.errors import BadResponse, BangerError, CommandFailed, Timeout
from banger.guest import agent_client
from banger.guest import banger_agent as agent
from banger.guest.agent_client import AgentClient
from banger.vmm.base import Backend, MachineSpec
from banger.vmm.channels import AgentChannel, ChannelKind
from banger.vmm.table import agent_channel, agent_channel_at

AGENT_FILE = Path(agent.__file__)

# -- guest side: JSON ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -7,
        2**70,
        1.5,
        1e300,
        "",
        "plain",
        'quote " backslash \\ slash /',
        "\x00\x01\x1f\x7f control \n\r\t\b\f",
        "é ü 中文 \u2028 \u2029",
        "emoji 😀 outside the BMP",
        [1, "two", [3.0, None]],
        {"nested": {"list": [], "dict": {}}, "k": "v"},
    ],
)
def test_json_round_trips_through_the_stdlib_decoder(value: object) -> None:
    text = agent.to_json(value)
    assert text.isascii()
    assert json.loads(text) == value


def test_json_edge_cases() -> None:
    assert agent.to_json(math.nan) == "null"
    assert agent.to_json(math.inf) == "null"
    assert agent.to_json((1, 2)) == "[1,2]"
    with pytest.raises(TypeError):
        agent.to_json({1: "int key"})
    with pytest.raises(TypeError):
        agent.to_json(b"bytes")


# -- guest side: HTTP ------------------------------------------------------------------------


def _req(path: str = "/healthz", *, extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: a\r\n{extra}\r\n".encode()


def test_take_request_waits_for_a_complete_head_and_body() -> None:
    buf = bytearray(_req()[:10])
    assert agent.take_request(buf) is None
    buf += _req()[10:]
    request = agent.take_request(buf)
    assert request is not None and request.method == "GET" and request.target == "/healthz"
    assert buf == b""
    buf += _req(extra="Content-Length: 5\r\n") + b"ab"
    assert agent.take_request(buf) is None  # body still incomplete
    buf += b"cde" + _req("/ports")
    first = agent.take_request(buf)
    second = agent.take_request(buf)
    assert first is not None and second is not None and second.target == "/ports"
    assert buf == b""


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /x HTTP/2.0\r\n\r\n", 505),
        (b"GET x HTTP/1.1\r\n\r\n", 400),
        (b"GET /a b HTTP/1.1\r\n\r\n", 400),
        (b"G\x01T / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 65 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000, 431),  # no end in sight: refused early
    ],
)
def test_malformed_or_oversized_requests_are_refused(raw: bytes, status: int) -> None:
    with pytest.raises(agent.HttpError) as info:
        agent.take_request(bytearray(raw))
    assert info.value.status == status


def _reply(raw: bytes) -> tuple[int, dict[str, str], object]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_routes_and_the_request_id_echo() -> None:
    session = agent.Session(can_close=True)
    replies = session.feed(
        _req("/healthz", extra="X-Banger-Request: abc-123\r\n")
        + _req("/nope", extra="X-Banger-Request: bad id!\r\n")
        + _req("/healthz", method="POST")
    )
    status, headers, body = _reply(replies[0])
    assert status == 200 and headers["X-Banger-Request"] == "abc-123"
    assert isinstance(body, dict) and body["ok"] is True and body["agent_version"] == "1"
    assert {"uptime_s", "hostname"} <= body.keys()
    status, headers, _ = _reply(replies[1])
    assert status == 404 and "X-Banger-Request" not in headers  # a bad id is not echoed
    assert _reply(replies[2])[0] == 405


def test_a_socket_session_closes_after_an_error_or_on_request() -> None:
    session = agent.Session(can_close=True)
    replies = session.feed(_req(extra="Connection: close\r\n") + _req())
    assert len(replies) == 1 and session.closing
    assert _reply(replies[0])[1]["Connection"] == "close"
    session = agent.Session(can_close=True)
    assert _reply(session.feed(b"NONSENSE\r\n\r\n" + _req())[0])[0] == 400
    assert session.closing and session.feed(_req()) == []


def test_a_serial_session_resynchronises_on_get() -> None:
    session = agent.Session(can_close=False)
    assert session.feed(b"\x00" * 9000) == []  # junk gets no reply on the serial stream
    assert len(session.buf) < agent.MAX_HEAD_BYTES  # nor does it pile up
    (reply,) = session.feed(_req(extra="X-Banger-Request: r1\r\n"))
    assert _reply(reply)[:2] == (200, {**_reply(reply)[1], "X-Banger-Request": "r1"})
    # A host left mid-request, the next one's request follows the leftover directly.
    (reply,) = session.feed(b"GET /ports HTT" + _req(extra="X-Banger-Request: r2\r\n"))
    assert _reply(reply)[1]["X-Banger-Request"] == "r2"
    (reply,) = session.feed(b"GE" + _req(extra="X-Banger-Request: r3\r\n"))
    assert _reply(reply)[1]["X-Banger-Request"] == "r3"
    assert session.feed(b"junk with a blank line\r\n\r\n") == []
    # Malformed after GET /: an error to the host that asked (its id), else nothing.
    (reply,) = session.feed(b"GET /a b HTTP/1.1\r\nX-Banger-Request: r4\r\n\r\n")
    assert _reply(reply)[0] == 400 and _reply(reply)[1]["X-Banger-Request"] == "r4"
    assert session.feed(b"GET /a b HTTP/1.1\r\n\r\n") == []
    # An oversized head is dropped; a request right behind it is still found.
    assert session.feed(b"GET /" + b"a" * 20000) == []
    (reply,) = session.feed(_req(extra="X-Banger-Request: r5\r\n"))
    assert _reply(reply)[1]["X-Banger-Request"] == "r5"
    # Pipelined requests, and a partial one kept for the next read.
    replies = session.feed(_req("/healthz") + _req("/ports") + _req("/healthz")[:9])
    assert len(replies) == 2 and session.buf == _req("/healthz")[:9]
    assert len(session.feed(_req("/healthz")[9:])) == 1
    assert not session.closing  # the serial stream cannot be closed
    session.feed(b"GET /part")
    session.reset()  # EOF: the host left
    assert session.buf == b""


def test_a_failing_endpoint_answers_500_and_the_agent_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken() -> object:
        raise RuntimeError("boom")

    monkeypatch.setitem(agent.ENDPOINTS, "/ports", broken)
    session = agent.Session(can_close=False)
    replies = session.feed(_req("/ports") + _req("/healthz"))
    assert [_reply(r)[0] for r in replies] == [500, 200]


# -- guest side: /proc -----------------------------------------------------------------------

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1
   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1
   2: 0200A8C0:0016 0100A8C0:D431 01 00000000:00000000 02:00000000 00000000     0        0 1003 4
   3: garbage line
"""
_ANY6, _LO6 = "0" * 32, "0" * 24 + "01000000"
TCP6 = f"""\
  sl  local_address                         remote_address                        st tx_queue
   0: {_ANY6}:1F40 {_ANY6}:0000 0A 0:0 0:0 0 0 0 2001
   1: {_LO6}:0277 {_ANY6}:0000 0A 0:0 0:0 0 0 0 2002
"""
UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
  100: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 3001 2
  101: 0200A8C0:9C40 0101A8C0:0035 01 00000000:00000000 00:00000000 00000000     0        0 3002 2
"""


def test_proc_net_tables_yield_listeners_only() -> None:
    assert agent.parse_proc_net(TCP, "tcp") == [("0.0.0.0", 8000, 1001), ("127.0.0.1", 3306, 1002)]
    assert agent.parse_proc_net(TCP6, "tcp") == [("::", 8000, 2001), ("::1", 631, 2002)]
    assert agent.parse_proc_net(UDP, "udp") == [("127.0.0.53", 53, 3001)]
    assert agent.decode_address("0100007F") == "127.0.0.1"
    with pytest.raises(ValueError):
        agent.decode_address("0100")


def _fake_proc(root: Path) -> None:
    (root / "net").mkdir(parents=True)
    (root / "net" / "tcp").write_text(TCP)
    (root / "net" / "tcp6").write_text(TCP6)
    (root / "net" / "udp").write_text(UDP)  # no udp6: an IPv6-less kernel, say
    (root / "uptime").write_text("123.45 67.89\n")
    procs = {
        42: ("python3", b"python3\0-m\0http.server\x008000\0", [1001, 2001, 9999]),
        7: ("cupsd", b"/usr/sbin/cupsd\0-l\0", [2002]),
        55: ("\x1b[31mevil", b"\x1b]0;pwned\x07\xff\0", [3001]),
    }
    for pid, (comm, cmdline, inodes) in procs.items():
        fd_dir = root / str(pid) / "fd"
        fd_dir.mkdir(parents=True)
        (root / str(pid) / "comm").write_text(comm + "\n")
        (root / str(pid) / "cmdline").write_bytes(cmdline)
        (fd_dir / "0").symlink_to("/dev/null")
        for index, inode in enumerate(inodes, start=3):
            (fd_dir / str(index)).symlink_to(f"socket:[{inode}]")
    (root / "self").mkdir()  # not a pid


def test_listeners_join_sockets_with_their_processes(tmp_path: Path) -> None:
    _fake_proc(tmp_path)
    report = agent.listeners(str(tmp_path))
    assert report["truncated"] is False
    entries = report["ports"]
    assert isinstance(entries, list)
    by_key = {(e["proto"], e["address"], e["port"]): e for e in entries}
    assert set(by_key) == {
        ("tcp", "0.0.0.0", 8000),
        ("tcp", "::", 8000),
        ("tcp", "127.0.0.1", 3306),
        ("tcp", "::1", 631),
        ("udp", "127.0.0.53", 53),
    }
    web = by_key[("tcp", "::", 8000)]
    assert (web["pid"], web["process"], web["command"]) == (
        42,
        "python3",
        "python3 -m http.server 8000",
    )
    assert web["family"] == 6
    assert by_key[("tcp", "127.0.0.1", 3306)]["pid"] is None  # nobody we can see holds it
    assert by_key[("udp", "127.0.0.53", 53)]["process"] == "\x1b[31mevil"  # the host cleans it
    assert agent.uptime_s(str(tmp_path)) == 123.45
    json.loads(agent.to_json(report))


def test_listeners_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_proc(tmp_path)
    monkeypatch.setattr(agent, "MAX_LISTENERS", 2)
    report = agent.listeners(str(tmp_path))
    assert report["truncated"] is True and len(report["ports"]) == 2  # type: ignore[arg-type]


def test_find_port_reads_sysfs_names(tmp_path: Path) -> None:
    for entry, name in (("vport0p0", "org.qemu.guest_agent.0"), ("vport0p1", agent.PORT_NAME)):
        (tmp_path / entry).mkdir()
        (tmp_path / entry / "name").write_text(name + "\n")
    assert agent.find_port(sysfs=str(tmp_path)) == "/dev/vport0p1"
    assert agent.find_port("other", sysfs=str(tmp_path)) is None
    assert agent.find_port(sysfs=str(tmp_path / "missing")) is None


# -- guest side: what the file may use ------------------------------------------------------

#: What Debian's python3-minimal (the guest's python3) provides, plus optional extras.
MINIMAL_MODULES = {
    "__future__", "argparse", "contextlib", "errno", "math", "os", "re", "select", "socket",
    "sys", "threading", "time", "typing", "collections.abc", "collections", "signal", "struct",
    "stat",
}  # fmt: skip
#: Imported under try/except ImportError. subprocess (exec) is in python3.11-minimal
#: (the Debian test rootfs has it); without it the agent still serves /healthz and /ports.
OPTIONAL_MODULES = {"termios", "tty", "subprocess"}


def test_the_agent_is_python37_and_python3_minimal_compatible() -> None:
    source = AGENT_FILE.read_text()
    tree = ast.parse(source, feature_version=(3, 7))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert imported <= MINIMAL_MODULES | OPTIONAL_MODULES, imported - MINIMAL_MODULES
    # python3-minimal has no json, http, socketserver or dataclasses
    for absent in ("json", "http", "socketserver", "dataclasses"):
        assert absent not in imported
    assert source.startswith("#!/usr/bin/env python3\n")


def test_the_unit_file_starts_the_installed_agent() -> None:
    unit = (AGENT_FILE.parent / "banger-agent.service").read_text()
    assert "ExecStart=/usr/bin/env python3 -I /usr/local/lib/banger/banger-agent" in unit
    assert "After=local-fs.target" in unit and "Restart=always" in unit
    assert "WantedBy=multi-user.target" in unit


# -- host side: hostile peers -------------------------------------------------------------------

Script = Callable[[socket.socket], None]


class Peer:
    """A Unix socket whose accepted connections run ``script`` (one thread each)."""

    def __init__(self, path: Path, script: Script) -> None:
        self.path = path
        self.script = script
        self.received: list[bytes] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(64)
        self.errors: list[BaseException] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.script(conn)
            except OSError:
                pass  # the client gave up: that is the point of most scripts
            except BaseException as exc:  # reported by the test
                self.errors.append(exc)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Callable[[Script], Peer]]:
    made: list[Peer] = []

    def make(script: Script) -> Peer:
        made.append(Peer(tmp_path / f"p{len(made)}.sock", script))
        return made[-1]

    yield make
    for p in made:
        p.close()
        assert not p.errors


def read_request(conn: socket.socket) -> tuple[bytes, str]:
    """The client's request head and its request id."""
    data = b""
    conn.settimeout(5)
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    rid = ""
    for line in data.decode().split("\r\n"):
        if line.lower().startswith("x-banger-request:"):
            rid = line.split(":", 1)[1].strip()
    return data, rid


def http(body: bytes | str, *, rid: str | None, status: int = 200, extra: str = "") -> bytes:
    raw = body.encode() if isinstance(body, str) else body
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(raw)}\r\n{extra}"
    if rid is not None:
        head += f"X-Banger-Request: {rid}\r\n"
    return head.encode() + b"\r\n" + raw


HEALTH = json.dumps({"ok": True, "uptime_s": 12.5, "hostname": "vm1", "agent_version": "1"})


def answering(*replies: Callable[[str], bytes], then: Callable[[], None] | None = None) -> Script:
    def script(conn: socket.socket) -> None:
        _, rid = read_request(conn)
        for reply in replies:
            conn.sendall(reply(rid))
        if then is not None:
            then()

    return script


def client(p: Peer, timeout_s: float = 2.0) -> AgentClient:
    return AgentClient.over_unix(p.path, timeout_s=timeout_s)


def test_a_good_reply_and_the_request_sent(peer: Callable[[Script], Peer]) -> None:
    seen: list[bytes] = []

    def script(conn: socket.socket) -> None:
        head, rid = read_request(conn)
        seen.append(head)
        conn.sendall(http(HEALTH, rid=rid))

    health = client(peer(script)).health()
    assert (health.ok, health.uptime_s, health.hostname, health.agent_version) == (
        True,
        12.5,
        "vm1",
        "1",
    )
    assert seen[0].startswith(b"GET /healthz HTTP/1.1\r\n")
    assert b"X-Banger-Request: " in seen[0]


def test_stale_replies_are_skipped_and_unlabelled_ones_accepted(
    peer: Callable[[Script], Peer],
) -> None:
    stale = answering(
        lambda rid: http('{"old": 1}', rid="0123456789abcdef"),
        lambda rid: http(HEALTH, rid=rid),
    )
    assert client(peer(stale)).health().hostname == "vm1"
    assert client(peer(answering(lambda rid: http(HEALTH, rid=None)))).health().ok
    endless = answering(*[lambda rid: http("{}", rid="ffffffffffffffff")] * 10)
    with pytest.raises(BadResponse, match="other requests"):
        client(peer(endless)).health()


def _hang() -> None:
    time.sleep(5)


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", BadResponse, "did not answer with HTTP"),
        (b"x" * (1 << 20), BadResponse, "longer than 16384 bytes"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * (1 << 20), BadResponse, "longer than"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2097152\r\n\r\n", BadResponse, "announced a body"),
        (b"HTTP/1.1 200 OK\r\n\r\n{}", BadResponse, "no valid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n", BadResponse, "Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}",
            BadResponse,
            "Transfer-Encoding",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            BadResponse,
            "twice",
        ),
        (b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", BadResponse, "malformed header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", BadResponse, "middle of a reply"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", BadResponse, "middle of a reply header"),
        (b"", BadResponse, "without answering"),
    ],
)
def test_hostile_replies_are_clear_errors(
    peer: Callable[[Script], Peer], reply: bytes, error: type[BangerError], message: str
) -> None:
    p = peer(answering(lambda rid: reply))
    started = time.monotonic()
    with pytest.raises(error, match=message):
        client(p).health()
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "not JSON"),
        ("[" * 100_000 + "]" * 100_000, "not JSON"),  # RecursionError, not a crash
        ("[1, 2]", "no object"),
        ('{"ok": "yes", "uptime_s": 1, "hostname": "h", "agent_version": "1"}', "'ok'"),
        ('{"ok": true, "uptime_s": -1, "hostname": "h", "agent_version": "1"}', "uptime_s"),
        ('{"ok": true, "uptime_s": 1e999, "hostname": "h", "agent_version": "1"}', "uptime_s"),
        ('{"ok": true, "uptime_s": 1, "hostname": 5, "agent_version": "1"}', "hostname"),
        ('{"ok": true, "uptime_s": 1, "agent_version": "1", "hostname": "' + "h" * 300 + '"}',
         "longer"),
        ('{"ok": true, "uptime_s": true, "hostname": "h", "agent_version": "1"}', "uptime_s"),
    ],
)  # fmt: skip
def test_malformed_health_is_a_bad_response(
    peer: Callable[[Script], Peer], body: str, message: str
) -> None:
    with pytest.raises(BadResponse, match=message):
        client(peer(answering(lambda rid: http(body, rid=rid)))).health()


def test_an_error_status_is_a_bad_response(peer: Callable[[Script], Peer]) -> None:
    p = peer(
        answering(lambda rid: http('{"error": "\x1b[2Jno such endpoint"}', rid=rid, status=404))
    )
    with pytest.raises(BadResponse, match="HTTP 404") as info:
        client(p).ports()
    assert "\x1b" not in (info.value.details or "")


def _ports_body(*items: dict[str, object], truncated: bool = False) -> str:
    return json.dumps({"ports": list(items), "truncated": truncated})


GOOD = {
    "proto": "tcp", "family": 4, "address": "0.0.0.0", "port": 80, "pid": 1,
    "process": "a", "command": "a -x",
}  # fmt: skip


def test_ports_are_validated_and_made_printable(peer: Callable[[Script], Peer]) -> None:
    evil = {
        **GOOD,
        "address": "::ffff:10.0.0.1",
        "process": "\x1b[31mred",
        "command": "/etc/shadow\r\x1b]0;title\x07 \u202e",
    }
    body = _ports_body(GOOD, evil, {**GOOD, "pid": None, "process": None, "command": None})
    report = client(peer(answering(lambda rid: http(body, rid=rid)))).ports()
    first, second, third = report.listeners
    assert (first.proto, first.address, first.port, first.pid) == ("tcp", "0.0.0.0", 80, 1)
    assert second.process == "?[31mred"
    assert second.command == "/etc/shadow??]0;title? ?"
    assert (third.pid, third.process, third.command) == (None, None, None)
    assert not report.truncated


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({**GOOD, "proto": "sctp"}, "proto"),
        ({**GOOD, "address": "../../etc/passwd"}, "not an IP address"),
        ({**GOOD, "port": 0}, "port"),
        ({**GOOD, "port": 65536}, "port"),
        ({**GOOD, "port": "80"}, "port"),
        ({**GOOD, "port": True}, "port"),
        ({**GOOD, "pid": -1}, "pid"),
        ({**GOOD, "command": ["a"]}, "command"),
        ({**GOOD, "command": "x" * 5000}, "command"),
        ("not an object", "not an object"),
    ],
)
def test_malformed_ports_are_a_bad_response(
    peer: Callable[[Script], Peer], item: object, message: str
) -> None:
    body = json.dumps({"ports": [item]})
    with pytest.raises(BadResponse, match=message):
        client(peer(answering(lambda rid: http(body, rid=rid)))).ports()


def test_too_many_listeners_is_a_bad_response(peer: Callable[[Script], Peer]) -> None:
    body = json.dumps({"ports": [GOOD] * 4097})
    with pytest.raises(BadResponse, match="more than 4096"):
        client(peer(answering(lambda rid: http(body, rid=rid)))).ports()


def test_no_reply_and_a_trickle_both_end_at_the_deadline(peer: Callable[[Script], Peer]) -> None:
    def silence(conn: socket.socket) -> None:
        read_request(conn)
        _hang()

    silent = peer(silence)

    def trickle(conn: socket.socket) -> None:
        read_request(conn)
        for _ in range(100):
            conn.sendall(b"H")
            time.sleep(0.05)

    for p in (silent, peer(trickle)):
        started = time.monotonic()
        with pytest.raises(Timeout, match=r"did not answer within 0\.6s"):
            client(p, timeout_s=0.6).health()
        assert 0.55 < time.monotonic() - started < 1.2


def test_unreachable_channel_is_command_failed(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match="cannot reach"):
        AgentClient.over_unix(tmp_path / "absent.sock").health()
    refused = tmp_path / "refused.sock"
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).bind(str(refused))  # bound, no listen
    with pytest.raises(CommandFailed, match="cannot reach"):
        AgentClient.over_unix(refused).health()


def test_paths_are_checked_before_anything_is_sent(peer: Callable[[Script], Peer]) -> None:
    c = client(peer(answering(lambda rid: http(HEALTH, rid=rid))))
    for bad in ("healthz", "/a b", "/x\r\nEvil: 1", "/" + "a" * 300):
        with pytest.raises(ValueError):
            c.request(bad)


def test_many_connections_closed_with_data_in_flight(peer: Callable[[Script], Peer]) -> None:
    """ADVERSARIAL 100: every cut is a clear error; nothing hangs; the next call works."""
    full = http(HEALTH, rid="RID")
    cuts = list(range(0, len(full), 7))
    count = {"n": 0}

    def script(conn: socket.socket) -> None:
        _, rid = read_request(conn)
        cut = cuts[count["n"] % len(cuts)]
        count["n"] += 1
        conn.sendall(full.replace(b"RID", rid.encode())[:cut])

    p = peer(script)
    started = time.monotonic()
    for _ in cuts:
        with pytest.raises(BadResponse):
            client(p).health()
    assert time.monotonic() - started < 10
    assert client(peer(answering(lambda rid: http(HEALTH, rid=rid)))).health().ok


def test_one_request_at_a_time_on_the_serial_channel(peer: Callable[[Script], Peer]) -> None:
    active = {"now": 0, "max": 0}
    guard = threading.Lock()

    def script(conn: socket.socket) -> None:
        _, rid = read_request(conn)
        with guard:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        time.sleep(0.05)
        with guard:
            active["now"] -= 1
        conn.sendall(http(HEALTH, rid=rid))

    p = peer(script)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client(p).health()  # a new client each time: the lock belongs to the path
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and active["max"] == 1


def test_waiting_for_the_lock_counts_against_the_deadline(peer: Callable[[Script], Peer]) -> None:
    p = peer(answering(lambda rid: http(HEALTH, rid=rid), then=lambda: None))
    lock = agent_client._channel_lock(str(p.path))
    with lock:
        started = time.monotonic()
        with pytest.raises(Timeout, match="busy"):
            client(p, timeout_s=0.3).health()
        assert time.monotonic() - started < 0.6
    assert client(p).health().ok


# -- host side: Firecracker's CONNECT/OK handshake -------------------------------------------


def fc_peer(handshake: bytes | None, *, reply: bool = True) -> Script:
    def script(conn: socket.socket) -> None:
        conn.settimeout(5)
        line = b""
        while not line.endswith(b"\n"):
            line += conn.recv(1)
        assert line == b"CONNECT 52\n"
        if handshake is None:
            _hang()
            return
        conn.sendall(handshake)
        if reply:
            _, rid = read_request(conn)
            conn.sendall(http(HEALTH, rid=rid))

    return script


def fc_client(p: Peer, timeout_s: float = 2.0) -> AgentClient:
    return AgentClient.over_firecracker_vsock(p.path, timeout_s=timeout_s)


def test_firecracker_handshake_then_http(peer: Callable[[Script], Peer]) -> None:
    assert fc_client(peer(fc_peer(b"OK 1073741824\n"))).health().hostname == "vm1"
    # The OK line and the start of the reply may arrive in one read: nothing is lost.
    early = b"OK 1073741825\n" + http(HEALTH, rid=None)
    assert fc_client(peer(fc_peer(early, reply=False))).health().hostname == "vm1"


@pytest.mark.parametrize(
    "line",
    [
        b"HELLO\n",
        b"OK\n",
        b"OK abc\n",
        b"OK 12345678901\n",
        b"ok 5\n",
        b"OK 5\r\n",
        b"OK  5\n",
        b"OK -5\n",
        b"\x00\xff\n",
    ],
)
def test_garbage_instead_of_ok_is_a_bad_response(
    peer: Callable[[Script], Peer], line: bytes
) -> None:
    with pytest.raises(BadResponse, match="not OK <port>"):
        fc_client(peer(fc_peer(line, reply=False))).health()


def test_handshake_edge_cases(peer: Callable[[Script], Peer]) -> None:
    with pytest.raises(BadResponse, match="longer than 32 bytes"):
        fc_client(peer(fc_peer(b"O" * (1 << 20), reply=False))).health()
    with pytest.raises(BadResponse, match="middle of its CONNECT answer"):
        fc_client(peer(fc_peer(b"OK 5", reply=False))).health()
    with pytest.raises(CommandFailed, match="nothing listens on vsock port 52"):
        fc_client(peer(fc_peer(b"", reply=False))).health()
    started = time.monotonic()
    with pytest.raises(Timeout):
        fc_client(peer(fc_peer(None)), timeout_s=0.5).health()
    assert time.monotonic() - started < 1.0


def test_firecracker_vsock_allows_parallel_requests(peer: Callable[[Script], Peer]) -> None:
    active = {"now": 0, "max": 0}
    guard = threading.Lock()
    gate = threading.Barrier(3, timeout=5)

    def script(conn: socket.socket) -> None:
        with guard:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        gate.wait()
        fc_peer(b"OK 1\n")(conn)

    p = peer(script)
    threads = [threading.Thread(target=lambda: fc_client(p).health()) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert active["max"] == 3


# -- channels ---------------------------------------------------------------------------------


def _spec(run_dir: Path) -> MachineSpec:
    return MachineSpec(
        name="vm",
        vcpu=1,
        memory_mib=256,
        kernel=Path("/k"),
        initrd=None,
        cmdline="console=ttyS0",
        drives=(),
        net=None,
        vm_dir=run_dir.parent,
        run_dir=run_dir,
    )


def test_channels_per_backend(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "run")
    serial = agent_channel(spec, Backend.QEMU)
    assert serial == AgentChannel(ChannelKind.VIRTIO_SERIAL, tmp_path / "run" / "agent.sock", None)
    assert serial.qemu_argv() == [
        "-chardev",
        f"socket,id=agent,path={tmp_path}/run/agent.sock,server=on,wait=off",
        "-device",
        "virtio-serial-device",
        "-device",
        "virtserialport,chardev=agent,name=org.banger.agent",
        "-chardev",
        f"socket,id=exec,path={tmp_path}/run/exec.sock,server=on,wait=off",
        "-device",
        "virtserialport,chardev=exec,name=org.banger.exec",
    ]
    assert serial.exec_socket_path == tmp_path / "run" / "exec.sock"
    assert "virtio-serial-pci" in serial.qemu_argv("pc")
    assert serial.client().describe == "the guest agent (virtio-serial)"

    fc = agent_channel(spec, Backend.FIRECRACKER)
    assert (fc.kind, fc.socket_path, fc.guest_cid, fc.port) == (
        ChannelKind.FIRECRACKER_VSOCK,
        tmp_path / "run" / "vsock.sock",
        3,
        52,
    )
    assert fc.qemu_argv() == []
    assert fc.exec_socket_path == tmp_path / "run" / "vsock.sock"  # then CONNECT 53
    assert "Firecracker vsock port 52" in fc.client().describe

    for backend in Backend:
        assert agent_channel_at(spec.run_dir, backend) == agent_channel(spec, backend)
