"""The guest agent in a real guest (SPEC §8): Debian under QEMU/TCG, and Firecracker's vsock.

The Debian test rootfs (it has python3-minimal) with the agent and its systemd unit the way
an image carries them (``tests.guests.debian_agent_rootfs``: written with ``debugfs -w``,
the unit enabled). Then:

- QEMU, with the command line banger builds (``banger.vmm.qemu.build_argv``), which has the
  agent channel's arguments (``banger.vmm.channels``): ``/healthz`` answers through
  virtio-serial (``wait_for_agent``, the readiness call); a web server started over SSH
  shows in ``/ports``, the host-side probe (inside the namespace) finds HTTP and HTTPS,
  and ``vm ports`` rows carry the links; the host reconnecting many times — also cutting
  a request or a reply short — still works; the agent does not spin while no host is
  connected.
- The Firecracker stand-in with a vsock device: the real ``CONNECT 52`` / ``OK <port>``
  protocol (the stand-in bridges it to the guest's virtio-serial port), a port nobody
  listens on, reconnects, and exec through ``CONNECT 53`` (bridged to ``org.banger.exec``).

Everything runs inside a ``banger-t-<random>`` namespace; at most one guest at a time.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.errors import CommandFailed
from banger.guest import ports
from banger.guest.agent_client import AgentClient
from banger.host.runner import Runner
from banger.kernels.vmlinux import extract_vmlinux
from banger.services.readiness import wait_for_agent
from banger.vmm.base import Backend, DriveSpec, MachineSpec
from banger.vmm.channels import AgentChannel
from banger.vmm.fc_api import FirecrackerApi
from banger.vmm.table import agent_channel
from tests import guests
from tests.agentguest import (
    BOOT_TIMEOUT_S,
    HOSTNAME,
    NEEDS_QEMU_GUEST,
    STANDIN,
    Booted,
    booted_debian,
)
from tests.netns import netns
from tests.qemuboot import (
    GUEST_IP,
    prepare,
    tail,
)

pytestmark = NEEDS_QEMU_GUEST


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    with booted_debian(tmp_path_factory.mktemp("agent-deb")) as booted:
        yield booted


def test_healthz_answers_through_virtio_serial(debian: Booted) -> None:
    client = debian.channel.client()
    took, health = asyncio.run(
        wait_for_agent(
            client,
            timeout_s=BOOT_TIMEOUT_S,
            alive=None,
            console_log=debian.spec.console_log,
        )
    )
    agent_at = time.monotonic() - debian.started
    ssh_at = debian.wait_ssh(within=BOOT_TIMEOUT_S)
    print(
        f"agent answered {agent_at:.1f}s after QEMU started (waited {took:.1f}s), ssh {ssh_at:.1f}s"
    )
    assert health.ok and health.hostname == HOSTNAME and health.agent_version == "1"
    assert 0 < health.uptime_s < BOOT_TIMEOUT_S
    out = debian.ssh(
        "systemctl is-active banger-agent; ls -l /dev/virtio-ports/; "
        "python3 -c 'import http.server' 2>&1 | tail -1"
    )
    assert out.splitlines()[0] == "active"
    assert "org.banger.agent" in out
    assert "No module named 'http'" in out  # python3-minimal: why the agent is stdlib-lean

    times = []
    for _ in range(20):
        started = time.monotonic()
        client.health()
        times.append(time.monotonic() - started)
    times.sort()
    print(
        f"/healthz round trip over virtio-serial (connect included): "
        f"median {times[10] * 1000:.1f} ms, min {times[0] * 1000:.1f} ms"
    )
    # The same on one connection: what the agent itself costs (no reconnect).
    assert debian.channel.socket_path is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(debian.channel.socket_path))
        times = []
        for index in range(20):
            started = time.monotonic()
            conn.sendall(f"GET /healthz HTTP/1.1\r\nX-Banger-Request: k{index}\r\n\r\n".encode())
            data = b""
            while not data.endswith(b"}"):
                data += conn.recv(4096)
            times.append(time.monotonic() - started)
            assert f"X-Banger-Request: k{index}".encode() in data
    times.sort()
    print(f"/healthz on a kept connection: median {times[10] * 1000:.1f} ms")


WEB = textwrap.dedent(
    """\
    import socket, ssl, sys, threading
    def serve(sock, wrap=None):
        while True:
            conn, _ = sock.accept()
            try:
                if wrap is not None:
                    conn = wrap.wrap_socket(conn, server_side=True)
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
            except (OSError, ssl.SSLError):
                pass
            conn.close()
    def listen(family, port):
        sock = socket.socket(family)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        sock.listen(8)
        return sock
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain("/root/cert.pem", "/root/key.pem")
    jobs = [(listen(socket.AF_INET, 8000), None), (listen(socket.AF_INET6, 8000), None),
            (listen(socket.AF_INET, 8443), tls)]
    for sock, wrap in jobs:
        threading.Thread(target=serve, args=(sock, wrap)).start()
    """
)

PROBE = textwrap.dedent(
    """\
    import asyncio, json, sys
    from banger.guest.webprobe import probe_web
    ports = [int(p) for p in sys.argv[2].split(",")]
    print(json.dumps(asyncio.run(probe_web(sys.argv[1], ports))))
    """
)


def test_ports_lists_a_web_server_and_the_rows_link_it(debian: Booted, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl makes the guest's throwaway certificate")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=guest",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    debian.wait_ssh(within=BOOT_TIMEOUT_S)
    for name in ("key.pem", "cert.pem"):
        debian.ssh(f"cat > /root/{name}", stdin=(tmp_path / name).read_text())
    debian.ssh("cat > /root/web.py", stdin=WEB)
    debian.ssh("nohup python3 /root/web.py >/root/web.log 2>&1 </dev/null &")
    client = debian.channel.client()
    deadline = time.monotonic() + 60
    while True:
        listeners = client.ports().listeners
        if {(x.port, x.address) for x in listeners} >= {(8000, "0.0.0.0"), (8000, "::")}:
            break
        assert time.monotonic() < deadline, debian.ssh("cat /root/web.log")
        time.sleep(0.5)

    web = [x for x in listeners if x.port in (8000, 8443)]
    assert {x.process for x in web} == {"python3"}
    assert all(x.command == "python3 /root/web.py" for x in web)
    entries = ports.merge(listeners)
    targets = ports.probe_targets(entries)
    assert {22, 8000, 8443} <= set(targets)

    # The probe runs where the guest is routed: inside the namespace.
    out = debian.ns.run(
        [sys.executable, "-c", PROBE, GUEST_IP, ",".join(map(str, targets))],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    schemes = {int(port): scheme for port, scheme in json.loads(out.stdout).items()}
    assert schemes == {8000: "http", 8443: "https"}

    table = ports.format_table(HOSTNAME, ports.with_schemes(entries, schemes))
    print(table)
    by_endpoint = {r[1]: r for r in ports.rows(HOSTNAME, ports.with_schemes(entries, schemes))}
    assert by_endpoint[f"http://{HOSTNAME}.vm:8000/"] == (
        "tcp",
        f"http://{HOSTNAME}.vm:8000/",
        "python3",
        "python3 /root/web.py",
    )  # 0.0.0.0 and :: merged into one row
    assert f"https://{HOSTNAME}.vm:8443/" in by_endpoint
    assert by_endpoint[f"{HOSTNAME}.vm:22"][2] == "sshd"


def test_the_agent_survives_the_host_reconnecting(debian: Booted) -> None:
    assert debian.channel.socket_path is not None
    path = debian.channel.socket_path
    client = debian.channel.client()
    asyncio.run(
        wait_for_agent(
            client, timeout_s=BOOT_TIMEOUT_S, alive=None, console_log=debian.spec.console_log
        )
    )
    for _ in range(5):  # every call is a new host connection
        assert client.health().hostname == HOSTNAME

    def raw(data: bytes, *, read: bool = False) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(path))
            conn.sendall(data)
            return conn.recv(65536) if read else b""

    head = b"GET /ports HTTP/1.1\r\nX-Banger-Request: cut\r\n\r\n"
    raw(head[:15])  # the host leaves mid-request
    assert client.health().ok
    raw(head)  # the host leaves before the reply
    assert client.ports().listeners
    raw(b"\x00garbage" * 2000)  # a confused host
    assert client.health().ok
    assert raw(b"GET /healthz HTTP/1.1\r\n\r\n", read=True).startswith(b"HTTP/1.1 200 ")
    for _ in range(3):
        assert client.health().ok


def test_no_busy_loop_while_no_host_is_connected(debian: Booted) -> None:
    debian.wait_ssh(within=BOOT_TIMEOUT_S)
    out = debian.ssh(
        "pid=$(systemctl show -p MainPID --value banger-agent); "
        "t() { awk '{print $14 + $15}' /proc/$pid/stat; }; "
        "a=$(t); sleep 5; b=$(t); echo $a $b $(getconf CLK_TCK); "
        "systemctl show -p NRestarts --value banger-agent"
    )
    first, restarts = out.splitlines()
    before, after, hz = (int(x) for x in first.split())
    cpu = (after - before) / hz
    print(f"agent CPU over 5 s with no host connected: {cpu:.2f} s")
    assert cpu < 0.5  # a spinning agent would burn ~5 s here
    assert restarts == "0"


# -- Firecracker's vsock, through the stand-in -------------------------------------------


@pytest.mark.timeout(900)
def test_firecracker_vsock_connect_reaches_the_agent(tmp_path: Path) -> None:
    kernel = guests.cloud_kernel()
    vmlinux = tmp_path / "vmlinux"
    extract_vmlinux(kernel.vmlinuz, vmlinux, Runner())
    prepared = prepare(tmp_path, guests.debian_agent_rootfs(), "agent-fc")
    run_dir = Path(tempfile.mkdtemp(prefix="bgfc-"))
    spec = MachineSpec(
        name="agent-fc", vcpu=2, memory_mib=512, kernel=vmlinux, initrd=guests.mini_initrd(),
        cmdline="console=ttyS0 reboot=k panic=-1 net.ifnames=0",
        drives=(DriveSpec("rootfs", prepared.rootfs), DriveSpec("work", prepared.workdisk)),
        net=None, vm_dir=tmp_path, run_dir=run_dir,
    )  # fmt: skip
    channel = agent_channel(spec, Backend.FIRECRACKER)
    assert channel.socket_path is not None and channel.guest_cid is not None
    api_sock = run_dir / "fc.sock"
    console = tmp_path / "console.log"
    try:
        with netns() as ns, console.open("wb") as out:
            proc = ns.popen(
                [str(STANDIN), "--api-sock", str(api_sock), "--id", "agent-fc"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                _boot_standin(api_sock, spec, channel, proc)
                client = channel.client()
                took, health = asyncio.run(
                    wait_for_agent(
                        client, timeout_s=BOOT_TIMEOUT_S, alive=None, console_log=console
                    )
                )
                print(f"agent over Firecracker vsock after {took:.1f}s")
                assert health.hostname == "agent-fc"
                for _ in range(3):
                    assert client.health().ok
                with pytest.raises(CommandFailed, match="nothing listens on vsock port 54"):
                    AgentClient.over_firecracker_vsock(channel.socket_path, 54).health()
                assert asyncio.run(_exec_over_vsock(channel)) == (3, b"agent-fc\n", b"e\n")
                deadline = time.monotonic() + 120  # the agent starts before sshd
                while not any(x.port == 22 for x in client.ports().listeners):
                    assert time.monotonic() < deadline, "sshd never listened"
                    time.sleep(0.5)
                FirecrackerApi(api_sock).send_ctrl_alt_del()
                assert proc.wait(timeout=120) == 0
            except BaseException:
                print(f"--- console\n{tail(console)}")
                raise
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


async def _exec_over_vsock(channel: AgentChannel) -> tuple[int | None, bytes, bytes]:
    """Exec through ``CONNECT 53`` (guest-exec.md): status, stdout and stderr apart."""
    out, err = bytearray(), bytearray()
    async with await channel.exec_connect() as conn:
        status = await conn.run(
            ["sh", "-c", "hostname; echo e >&2; exit 3"], on_stdout=out.extend, on_stderr=err.extend
        )
    return status.code, bytes(out), bytes(err)


def _boot_standin(
    api_sock: Path, spec: MachineSpec, channel: AgentChannel, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 20
    while not api_sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the stand-in did not start"
        time.sleep(0.05)
    time.sleep(0.2)
    api = FirecrackerApi(api_sock)
    api.put_machine_config(spec.vcpu, spec.memory_mib)
    assert spec.initrd is not None
    api.put_boot_source(spec.kernel, spec.cmdline, spec.initrd)
    for index, drive in enumerate(spec.drives):
        api.put_drive(drive.drive_id, drive.path, is_root_device=index == 0, is_read_only=False)
    assert channel.socket_path is not None and channel.guest_cid is not None
    api.put_vsock(channel.guest_cid, channel.socket_path)
    api.instance_start()
