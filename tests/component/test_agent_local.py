"""The real agent file, run on this host, over every transport it has except the guest's own.

``banger_agent.py`` runs as a process (under this Python and, when one is found, under
Python 3.7 — ``$BANGER_TEST_PYTHON37`` or ``python3.7`` on PATH — the oldest it supports):

- ``--listen-unix``: the vsock shape (a connection per client, several at once), reached
  with the real ``AgentClient``; ``/ports`` shows listeners this test opens;
- ``--serial`` on a pty and ``--stream-fd`` on a socketpair: the serial shape (one byte
  stream, requests in sequence, garbage discarded until the host is quiet);
- ``--connect-unix``: a serial-like stream whose host side closes and comes back — the
  agent must survive every reconnect, including a close mid-request and mid-reply;
- QEMU's virtio-serial chardev with no guest behind it: the client times out, it does not
  hang. The guest side of virtio-serial is tests/e2e/test_agent.py.
No guest and no network traffic: Unix sockets, a pty, and listeners that nobody dials.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

import pytest

from banger.errors import BadResponse, Timeout
from banger.guest import banger_agent as agent
from banger.guest import ports
from banger.guest.agent_client import AgentClient
from banger.vmm.channels import AgentChannel, ChannelKind
from tests.localagent import AGENT, PYTHONS, run_agent, short_dir, wait_for_socket

__all__ = ["short_dir"]  # the fixture, imported for pytest
from tests.netns import netns

pytestmark = pytest.mark.component


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def request_bytes(path: str, rid: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nX-Banger-Request: {rid}\r\n\r\n".encode()


class FdStream:
    """Raw HTTP over one fd (a pty master or a socket): write requests, read replies."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def reply(self, within: float = 10) -> tuple[int, dict[str, str], bytes]:
        deadline = time.monotonic() + within
        while True:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if sep:
                lines = head.decode().split("\r\n")
                headers = {k.lower(): v for k, v in (x.split(": ", 1) for x in lines[1:])}
                length = int(headers["content-length"])
                if len(rest) >= length:
                    self.buf = rest[length:]
                    return int(lines[0].split()[1]), headers, rest[:length]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise TimeoutError("no reply")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def quiet(self, seconds: float) -> bool:
        """True when nothing arrives for ``seconds``."""
        return not select.select([self.fd], [], [], seconds)[0] and not self.buf


# -- the vsock shape: --listen-unix -----------------------------------------------------------


@pytest.mark.parametrize("python", PYTHONS)
def test_listen_unix_health_ports_and_parallel_connections(python: str, short_dir: Path) -> None:
    path = short_dir / "agent.sock"
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        run_agent(python, "--listen-unix", str(path)) as proc,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(1)
        udp.bind(("127.0.0.1", 0))
        wait_for_socket(path, proc)
        client = AgentClient.over_unix(path)

        health = client.health()
        assert health.ok and health.agent_version == agent.AGENT_VERSION
        assert health.hostname == socket.gethostname()
        assert health.uptime_s > 0

        report = client.ports()
        mine = {(x.proto, x.port): x for x in report.listeners if x.pid == os.getpid()}
        comm = Path("/proc/self/comm").read_text().strip()
        tcp_port, udp_port = tcp.getsockname()[1], udp.getsockname()[1]
        assert mine[("tcp", tcp_port)].address == "127.0.0.1"
        assert mine[("tcp", tcp_port)].process == comm
        assert mine[("udp", udp_port)].process == comm
        command = mine[("tcp", tcp_port)].command or ""
        assert Path(sys.argv[0]).name in command or "pytest" in command
        rows = {r[1]: r for r in ports.rows("dev", ports.merge(report.listeners))}
        assert rows[f"127.0.0.1:{tcp_port}"][:3] == ("tcp", f"127.0.0.1:{tcp_port}", comm)

        # Several connections at once, each answered (the vsock shape).
        conns = []
        for index in range(agent.MAX_CONNECTIONS):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(10)
            conn.connect(str(path))
            conn.sendall(request_bytes("/healthz", f"c{index}"))
            conns.append(conn)
        for index, conn in enumerate(conns):
            with conn:
                status, headers, _ = FdStream(conn.fileno()).reply()
                assert (status, headers["x-banger-request"]) == (200, f"c{index}")

        # An oversized head is refused and the connection closed; the agent carries on.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(path))
            with contextlib.suppress(OSError):
                conn.sendall(b"GET / HTTP/1.1\r\nX: " + b"a" * 20000)
            stream = FdStream(conn.fileno())
            assert stream.reply()[0] == 431
            assert conn.recv(10) == b""
        assert client.health().ok
        assert proc.poll() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root")
def test_dual_stack_listeners_merge_into_one_row(short_dir: Path) -> None:
    """0.0.0.0:8000 and [::]:8000 (v6-only) in a namespace of our own: one `vm ports` row."""
    path = short_dir / "agent.sock"
    listen = (
        "import socket, time\n"
        "a = socket.socket(socket.AF_INET); a.bind(('0.0.0.0', 8000)); a.listen(1)\n"
        "b = socket.socket(socket.AF_INET6)\n"
        "b.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n"
        "b.bind(('::', 8000)); b.listen(1)\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    with netns() as ns:
        server = ns.popen([sys.executable, "-c", listen], stdout=subprocess.PIPE)
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        proc = ns.popen([sys.executable, "-I", str(AGENT), "--listen-unix", str(path)])
        wait_for_socket(path, proc)
        report = AgentClient.over_unix(path).ports()
        found = [x for x in report.listeners if x.port == 8000]
        assert {x.address for x in found} == {"0.0.0.0", "::"}
        assert {x.pid for x in found} == {server.pid}
        (row,) = ports.rows("dev", ports.merge(found))
        assert row[:2] == ("tcp", "dev.vm:8000")
        assert "socket.socket" in row[3]  # the command line, as the guest reported it


# -- the serial shape: a pty, a socketpair ----------------------------------------------------


@pytest.mark.parametrize("python", PYTHONS)
def test_pty_as_the_serial_port(python: str) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        with run_agent(python, "--serial", os.ttyname(slave)) as proc:
            stream = FdStream(master)
            stream.send(request_bytes("/healthz", "one"))
            status, headers, body = stream.reply()
            assert (status, headers["x-banger-request"]) == (200, "one")
            assert b'"ok":true' in body

            # Pipelined requests are answered in order.
            stream.send(request_bytes("/ports", "two") + request_bytes("/healthz", "three"))
            assert stream.reply()[1]["x-banger-request"] == "two"
            assert stream.reply()[1]["x-banger-request"] == "three"

            # Junk gets no reply; the stream resynchronises on the next request.
            stream.send(b"\x00" * 9000 + b"\r\n\r\nGET /healthz HT")
            assert stream.quiet(0.3)
            stream.send(request_bytes("/healthz", "after-junk"))
            assert stream.reply()[1]["x-banger-request"] == "after-junk"
            assert stream.quiet(0.3)

            assert idle_cpu(proc.pid, 1.0) < 0.1  # waiting is sleeping
            os.close(master)
            master = -1
            assert idle_cpu(proc.pid, 1.5) < 0.15  # the host side gone: still no spinning
            assert proc.poll() is None
    finally:
        os.close(slave)
        if master >= 0:
            os.close(master)


@pytest.mark.parametrize("python", PYTHONS)
def test_socketpair_as_the_serial_port(python: str) -> None:
    ours, theirs = socket.socketpair()
    fd = theirs.fileno()
    with ours, run_agent(python, "--stream-fd", str(fd), pass_fds=(fd,)) as proc:
        theirs.close()
        ours.settimeout(10)
        stream = FdStream(ours.fileno())
        for rid in ("a", "b", "c"):
            stream.send(request_bytes("/healthz", rid))
            assert stream.reply()[1]["x-banger-request"] == rid
        # A reply the host never waited for comes first; the client skips it.
        stream.send(request_bytes("/ports", "abandoned"))
        client = AgentClient("test stream", lambda _deadline: (ours, b""), lock_key=None)
        assert client.health().ok  # …and then closes the stream: EOF ends this agent
        assert proc.wait(timeout=10) == 0


# -- the serial shape with a host that comes and goes: --connect-unix -------------------------


@pytest.mark.parametrize("python", PYTHONS)
def test_the_agent_survives_the_host_reconnecting(python: str, short_dir: Path) -> None:
    path = short_dir / "host.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(10)

    def session() -> socket.socket:
        conn, _ = listener.accept()
        return conn

    def client_on(conn: socket.socket) -> AgentClient:
        return AgentClient("reconnecting stream", lambda _d: (conn, b""), lock_key=None)

    with listener, run_agent(python, "--connect-unix", str(path)) as proc:
        for _ in range(3):
            assert client_on(session()).health().ok  # the client closes: the agent comes back

        half = session()
        half.sendall(request_bytes("/healthz", "half")[:20])  # cut mid-request
        half.close()
        conn = session()
        conn.settimeout(5)
        FdStream(conn.fileno()).send(request_bytes("/healthz", "whole"))
        status, headers, _ = FdStream(conn.fileno()).reply()
        assert (status, headers["x-banger-request"]) == (200, "whole")  # no leftover "half"
        conn.close()

        gone = session()
        gone.sendall(request_bytes("/ports", "gone"))
        gone.close()  # before the reply
        assert client_on(session()).ports().listeners is not None

        times = []
        for _ in range(20):
            conn = session()
            started = time.monotonic()
            client_on(conn).health()
            times.append(time.monotonic() - started)
        print(f"reconnect + /healthz: median {sorted(times)[10] * 1000:.2f} ms")

        listener.close()  # the host is away for good: the agent waits without spinning
        assert idle_cpu(proc.pid, 2.0) < 0.2
        assert proc.poll() is None


# -- QEMU's chardev with nobody behind it ---------------------------------------------------------


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
def test_qemu_agent_channel_without_a_guest_times_out(short_dir: Path) -> None:
    """The channel's QEMU arguments are accepted; a silent guest or a dead VMM cannot hang us."""
    channel = AgentChannel(ChannelKind.VIRTIO_SERIAL, short_dir / "agent.sock", None)
    argv = [
        "qemu-system-x86_64", "-M", "microvm", "-S", "-nodefaults", "-no-user-config",
        "-display", "none", "-monitor", "none", *channel.qemu_argv(),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert channel.socket_path is not None
        wait_for_socket(channel.socket_path, proc)
        client = channel.client(timeout_s=0.5)
        for _ in range(2):  # and again: QEMU takes the next connection
            started = time.monotonic()
            with pytest.raises(Timeout, match=r"did not answer within 0\.5s"):
                client.health()
            assert time.monotonic() - started < 1.0

        # ADVERSARIAL 99: the VMM dies during a call: it fails at once, not at the deadline.
        errors: list[BaseException] = []

        def call() -> None:
            try:
                channel.client(timeout_s=30).health()
            except BaseException as exc:
                errors.append(exc)

        waiter = threading.Thread(target=call)
        waiter.start()
        time.sleep(0.5)
        killed = time.monotonic()
        proc.kill()
        waiter.join(timeout=10)
        assert time.monotonic() - killed < 2.0
        assert len(errors) == 1 and isinstance(errors[0], BadResponse), errors
        assert "the connection" in errors[0].brief  # closed or reset
    finally:
        proc.kill()
        proc.wait(timeout=10)
