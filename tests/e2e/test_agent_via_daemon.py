"""The guest agent through the daemon and the CLI (issue 5, SPEC §3 readiness and §8):
`vm create` counts the VM up when the agent answers, `vm health` and `vm ports` reach it —
over virtio-serial with QEMU, and over Firecracker's host-side vsock protocol
(``CONNECT 52`` → ``OK <port>``) with the stand-in of tests/fcstandin.

The guest is the Debian test rootfs with the agent installed the way banger's images carry
it (``tests.guests.debian_agent_rootfs``); the web listener is a few lines of python3
answering HTTP/1.0 (the image has python3-minimal, which lacks ``http.server``). Each test
runs a daemon in a namespace of its own (tests/vmenv.py).
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from tests import guests
from tests.vmenv import VmEnv, vm_env

STANDIN = Path(__file__).resolve().parents[1] / "fcstandin" / "firecracker"
DEBIAN = ["--vcpu", "2", "--memory", "1024", "--disk-size", "1G"]

# Answers every connection with a small HTTP/1.0 page: what `vm ports` probes for.
WEB_SERVER = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET6)\n"
    "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('::', 8000)); s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept(); c.settimeout(5)\n"
    "    try:\n"
    "        c.recv(4096)\n"
    "        c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')\n"
    "    except OSError:\n"
    "        pass\n"
    "    c.close()\n"
)


def _register_debian_with_agent(env: VmEnv) -> None:
    env.add_test_guests(tiny=False)
    rootfs = str(guests.debian_agent_rootfs())
    env.ok("image", "register", "deb-agent", "--rootfs", rootfs, "--kernel-ref", "cloud")


def _create_ready_via_agent(env: VmEnv, name: str) -> None:
    out = env.ok("vm", "create", "--name", name, "--image", "deb-agent", *DEBIAN)
    ready = [line for line in out.splitlines() if "wait-ready:" in line]
    assert ready and "guest agent answered" in ready[0], out


def _health_and_web_port(env: VmEnv, name: str) -> None:
    health = env.json("vm", "health", name)["health"]
    assert health["ok"] is True and health["hostname"] == name
    assert health["uptime_s"] > 0 and health["agent_version"]

    # `vm ssh NAME -- ARGS` joins ARGS into one remote command line, as ssh does
    script = base64.b64encode(WEB_SERVER.encode()).decode()
    env.ok(
        "vm", "ssh", name, "--",
        f"echo {script} | base64 -d > /tmp/web.py && (nohup python3 /tmp/web.py >/dev/null 2>&1 &)",
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while f"http://{name}.vm:8000" not in (listing := env.ok("vm", "ports", name)):
        assert time.monotonic() < deadline, listing
        time.sleep(1)
    rows = [line.split() for line in listing.splitlines()]
    assert rows[0] == ["PROTO", "ENDPOINT", "PROCESS", "COMMAND"], listing
    web = [row for row in rows if row[1] == f"http://{name}.vm:8000/"]
    # one row for the dual-stack socket; sshd is a plain endpoint (not a web port)
    assert len(web) == 1 and web[0][0] == "tcp" and web[0][2] == "python3", listing
    assert any(row[1] == f"{name}.vm:22" and row[2] == "sshd" for row in rows), listing
    ports = env.json("vm", "ports", name)["ports"]
    assert any(p["port"] == 8000 and p.get("scheme") == "http" for p in ports), json.dumps(ports)


@pytest.mark.timeout(900)
def test_agent_readiness_health_and_ports_over_virtio_serial() -> None:
    with vm_env() as env:
        _register_debian_with_agent(env)
        _create_ready_via_agent(env, "web")
        assert env.json("vm", "show", "web")["vmm"] == "qemu"
        _health_and_web_port(env, "web")
        env.ok("vm", "delete", "--force", "web")


@pytest.mark.timeout(900)
def test_agent_readiness_health_and_ports_over_firecracker_vsock() -> None:
    with vm_env(f'firecracker_bin = "{STANDIN}"\nvmm = "firecracker"\n') as env:
        _register_debian_with_agent(env)
        _create_ready_via_agent(env, "fcweb")
        vm = env.json("vm", "show", "fcweb")
        assert vm["vmm"] == "firecracker"
        _health_and_web_port(env, "fcweb")
        # a stop and start comes back up the same way (the vsock socket is made anew)
        assert env.ok("vm", "stop", "fcweb").strip() == "fcweb: stopped"
        out = env.ok("vm", "start", "fcweb")
        assert "guest agent answered" in out, out
        assert env.json("vm", "health", "fcweb")["health"]["hostname"] == "fcweb"
        env.ok("vm", "delete", "--force", "fcweb")
