"""The headline on a fresh host (issue 4): `banger vm run -- cat /etc/os-release` obtains
the default image (`debian-bookworm`) and its kernel by itself, boots it, and prints
Debian's os-release — inside a network namespace of the test's own. Docker Hub is not
reachable from these machines, so the catalog's local build from the host's Debian archive
takes over after the OCI source fails fast. The daemon's only way out of the namespace
is an HTTP proxy to the hosts of the host's apt sources (tests/netproxy.py)."""

from __future__ import annotations

import time

from tests.guestweb import check_health_and_web_port
from tests.vmenv import vm_env


def test_vm_run_obtains_the_default_image_and_runs_a_command() -> None:
    with vm_env(apt_proxy=True) as env:
        started = time.monotonic()
        first = env.banger(
            "vm",
            "run",
            "--rm",
            "--vcpu",
            "2",
            "--memory",
            "1024",
            "--",
            "cat",
            "/etc/os-release",
            timeout=2400,
        )
        first_s = time.monotonic() - started
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "ID=debian" in first.stdout and "VERSION_CODENAME=bookworm" in first.stdout
        images = env.json("image", "list")
        assert [i["name"] for i in images] == ["debian-bookworm"]
        assert images[0]["init_path"] and images[0]["kernel_name"]
        assert env.json("vm", "list") == []  # --rm

        started = time.monotonic()
        again = env.banger(
            "vm", "run", "--rm", "--vcpu", "2", "--memory", "1024", "--", "uname", "-r", timeout=900
        )
        again_s = time.monotonic() - started
        assert again.returncode == 0, again.stderr[-3000:]
        assert again_s < first_s
        print(f"default image: first vm run {first_s:.1f}s, second {again_s:.1f}s")

        # The default image carries banger's guest agent: it is what says the VM is up,
        # and health and ports answer through virtio-serial (no vhost-vsock here).
        out = env.ok("vm", "create", "--name", "agent", "--vcpu", "2", "--memory", "1024")
        assert "wait-ready: guest agent answered" in out, out
        check_health_and_web_port(env, "agent")
        env.ok("vm", "delete", "--force", "agent")
