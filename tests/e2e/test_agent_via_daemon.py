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

from pathlib import Path

import pytest

from tests import guests
from tests.guestweb import check_health_and_web_port
from tests.vmenv import VmEnv, vm_env

STANDIN = Path(__file__).resolve().parents[1] / "fcstandin" / "firecracker"
DEBIAN = ["--vcpu", "2", "--memory", "1024", "--disk-size", "1G"]


def _register_debian_with_agent(env: VmEnv) -> None:
    env.add_test_guests(tiny=False)
    rootfs = str(guests.debian_agent_rootfs())
    env.ok("image", "register", "deb-agent", "--rootfs", rootfs, "--kernel-ref", "cloud")


def _create_ready_via_agent(env: VmEnv, name: str) -> None:
    out = env.ok("vm", "create", "--name", name, "--image", "deb-agent", *DEBIAN)
    ready = [line for line in out.splitlines() if "wait-ready:" in line]
    assert ready and "guest agent answered" in ready[0], out


@pytest.mark.timeout(900)
def test_agent_readiness_health_and_ports_over_virtio_serial() -> None:
    with vm_env() as env:
        _register_debian_with_agent(env)
        _create_ready_via_agent(env, "web")
        assert env.json("vm", "show", "web")["vmm"] == "qemu"
        check_health_and_web_port(env, "web")
        env.ok("vm", "delete", "--force", "web")


@pytest.mark.timeout(900)
def test_agent_readiness_health_and_ports_over_firecracker_vsock() -> None:
    with vm_env(f'firecracker_bin = "{STANDIN}"\nvmm = "firecracker"\n') as env:
        _register_debian_with_agent(env)
        _create_ready_via_agent(env, "fcweb")
        vm = env.json("vm", "show", "fcweb")
        assert vm["vmm"] == "firecracker"
        check_health_and_web_port(env, "fcweb")
        # a stop and start comes back up the same way (the vsock socket is made anew)
        assert env.ok("vm", "stop", "fcweb").strip() == "fcweb: stopped"
        out = env.ok("vm", "start", "fcweb")
        assert "guest agent answered" in out, out
        assert env.json("vm", "health", "fcweb")["health"]["hostname"] == "fcweb"
        env.ok("vm", "delete", "--force", "fcweb")
