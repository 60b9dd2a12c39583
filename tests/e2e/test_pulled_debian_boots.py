"""A debootstrap'd Debian pushed as an OCI image to a local registry (Debian's
docker-registry on 127.0.0.1), pulled by banger and booted under QEMU/TCG in a netns,
reaches SSH (issue 4).

The registry listens on the host's loopback, which a daemon inside the test's namespace
cannot reach; so one daemon pulls in the host namespace (no VM network involved), and a
second daemon of the same banger home, inside the namespace, boots the pulled image.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from bench.image_pull import debian_layout, push_layout

from tests import guests
from tests.conftest import BIN, make_home
from tests.netns import netns
from tests.registry import running_registry
from tests.vmenv import VmEnv


def test_debian_from_the_local_registry_boots_and_accepts_ssh() -> None:
    layout = debian_layout()
    with tempfile.TemporaryDirectory(prefix="bgr-reg-") as tmp:
        home = make_home(Path(tmp) / "home")
        with running_registry(Path(tmp) / "registry") as registry:
            push_layout(layout, registry)
            ref = f"{registry.host}/debian:bench"

            def host_banger(*args: str) -> str:
                out = subprocess.run(
                    [str(BIN / "banger"), *args],
                    env=home.env,
                    capture_output=True,
                    text=True,
                    timeout=900,
                    check=False,
                )
                assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
                return out.stdout

            host_banger(
                "kernel", "import", "cloud", "--from", str(guests.cloud_kernel().import_dir)
            )
            host_banger("image", "pull", ref, "--name", "pulled", "--kernel-ref", "cloud")
            host_banger("daemon", "stop")
        with netns() as ns:
            env = VmEnv(home=home, ns=ns)
            try:
                env.start_daemon()
                env.ok(
                    "vm",
                    "create",
                    "--name",
                    "pulled",
                    "--image",
                    "pulled",
                    "--vcpu",
                    "2",
                    "--memory",
                    "1024",
                    "--disk-size",
                    "1G",
                )
                out = env.ok("vm", "ssh", "pulled", "--", "cat", "/etc/os-release")
                assert "ID=debian" in out
                assert env.ok("vm", "ssh", "pulled", "--", "hostname").strip() == "pulled"
            finally:
                env.cleanup()
