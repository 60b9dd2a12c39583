"""A normal user runs the daemon and a VM through banger-helper (SPEC §9, issue 11).

In a network namespace the test made: a user the test creates (``useradd``, removed at
the end) runs ``bangerd`` and the CLI; ``banger-helper --owner USER`` runs as root in the
same namespace (tests/userenv.py). ``vm run --rm -- true`` on the tiny guest exits 0, the
QEMU process is the user's, its TAP is owned by the user, and no process in the namespace
but the helper runs as root (ADVERSARIAL 127: the root part is only the helper). This
host's ``/dev/net/tun`` is 0600: QEMU gets its TAP as a descriptor the helper opened.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.userenv import TOOLS, UserEnv, add_tiny_guest, user_env

STANDIN = Path(__file__).resolve().parents[1] / "fcstandin" / "firecracker"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root and " + ", ".join(TOOLS),
)

TINY = ("--image", "tiny", "--vcpu", "1", "--memory", "256", "--disk-size", "1G")


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # the real uid
    raise AssertionError(f"no Uid line for {pid}")


@pytest.fixture(scope="module")
def env() -> Iterator[UserEnv]:
    with user_env() as e:
        e.start_daemon()
        add_tiny_guest(e)
        yield e


def test_doctor_names_helper_mode(env: UserEnv) -> None:
    out = env.banger("doctor")
    network = next(line for line in out.stdout.splitlines() if "network:" in line)
    assert network.startswith("✓ network: mode helper"), out.stdout
    assert "✓ nat: through banger-helper" in out.stdout, out.stdout


def test_vm_run_rm_true_as_a_normal_user(env: UserEnv) -> None:
    out = env.banger("vm", "run", "--rm", *TINY, "--", "true")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(env.ok("vm", "list", "--json")) == []


def test_the_vmm_is_the_users_and_only_the_helper_is_root(env: UserEnv) -> None:
    env.ok("vm", "create", "--name", "mine", *TINY)
    vm = json.loads(env.ok("vm", "show", "mine", "--json"))
    assert _uid_of(vm["pid"]) == env.uid
    tap = json.loads(env.ns.ip("-d", "-j", "link", "show", "dev", vm["tap"]).stdout)[0]
    assert tap["linkinfo"]["info_data"]["user"] in (env.user, str(env.uid), env.uid)
    assert any(
        "tap,id=n0,fd=" in arg for arg in Path(f"/proc/{vm['pid']}/cmdline").read_text().split("\0")
    ), "QEMU was handed its TAP open"
    root = [pid for pid in env.ns.pids() if _uid_of(pid) == 0]
    assert root == [env.helper.pid], [Path(f"/proc/{p}/cmdline").read_bytes()[:100] for p in root]
    assert env.ok("vm", "ssh", "mine", "--", "hostname").strip() == "mine"
    env.ok("vm", "delete", "--force", "mine")


def test_without_a_helper_vm_creation_names_mode_none_and_the_fix() -> None:
    """``privilege_mode = "helper"`` (what an installed system wants: no silent fallback
    to rootless while the helper is down); the default ``auto`` is tests/e2e/
    test_rootless_mode.py."""
    with user_env(helper=False, privilege_mode="helper") as e:
        e.start_daemon()
        add_tiny_guest(e)
        doctor = e.banger("doctor")
        assert doctor.returncode != 0
        network = next(line for line in doctor.stdout.splitlines() if "network:" in line)
        assert network.startswith("✗ network: mode none"), doctor.stdout
        out = e.banger("vm", "run", "--rm", *TINY, "--", "true")
        assert out.returncode != 0
        assert "privilege mode: none" in out.stderr, out.stderr
        assert f"banger-helper --owner {e.user}`" in out.stderr
        assert "rootless mode" in out.stderr and 'privilege_mode = "auto"' in out.stderr
        assert json.loads(e.ok("vm", "list", "--json")) == []


def test_the_daemon_starts_without_its_helper_and_finds_it_when_it_is_back() -> None:
    """Warm TAPs outlive a stopped daemon; with the helper down they cannot be swept, and
    that must not keep the daemon from starting. The helper is asked again at each call."""
    with user_env(privilege_mode="helper") as e:
        e.start_daemon()
        add_tiny_guest(e)
        e.ok("vm", "run", "--rm", *TINY, "--", "true")
        e.ok("daemon", "stop")
        assert e.daemon is not None
        e.daemon.wait(timeout=30)
        e.stop_helper()
        left = [n for n in json.loads(e.ns.ip("-j", "link").stdout) if "bgtap" in n["ifname"]]
        assert left, "expected the warm TAP pool to outlive the daemon"

        e.start_daemon()
        out = e.banger("vm", "run", "--rm", *TINY, "--", "true")
        assert out.returncode != 0 and "privilege mode: none" in out.stderr, out.stderr

        e.start_helper()
        e.ok("vm", "run", "--rm", *TINY, "--", "true")  # same daemon, no restart


def _debian_tun(e: UserEnv) -> tuple[str, ...]:
    """A mount namespace of the test's own where ``/dev/net/tun`` is mode 0666, as on
    Debian and Ubuntu (this CI host's is 0600). Firecracker opens its TAP by name, so it
    needs that; the host's node is left as it is."""
    node = e.base / "tun"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(10, 200))
    node.chmod(0o666)
    script = f'mount --bind {node} /dev/net/tun && exec "$@"'
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh")


def _firecracker_config(e: UserEnv) -> None:
    config = e.base / "config" / "banger"
    config.mkdir(mode=0o700)
    (config / "config.toml").write_text(f'firecracker_bin = "{STANDIN}"\nvmm = "firecracker"\n')
    os.chown(config, e.uid, e.uid)


def test_firecracker_as_a_normal_user_through_the_helper() -> None:
    """Issue 11: the Firecracker path (the real FirecrackerVmm driving tests/fcstandin) as
    the user: the helper makes a TAP owned by the user, the VMM opens it by name and runs
    as the user, the guest answers SSH under its name."""
    with user_env() as e:
        _firecracker_config(e)
        e.start_daemon(prefix=_debian_tun(e))
        add_tiny_guest(e)
        e.ok("vm", "create", "--name", "fcu", *TINY)
        vm = json.loads(e.ok("vm", "show", "fcu", "--json"))
        assert vm["vmm"] == "firecracker" and vm["state"] == "running"
        assert _uid_of(vm["pid"]) == e.uid
        tap = json.loads(e.ns.ip("-d", "-j", "link", "show", "dev", vm["tap"]).stdout)[0]
        assert tap["linkinfo"]["info_data"]["user"] in (e.user, str(e.uid), e.uid)
        root = [pid for pid in e.ns.pids() if _uid_of(pid) == 0]
        assert e.helper is not None and root == [e.helper.pid]
        assert e.ok("vm", "ssh", "fcu", "--", "hostname").strip() == "fcu"
        e.ok("vm", "delete", "--force", "fcu")
        assert json.loads(e.ok("vm", "list", "--json")) == []


def test_firecracker_without_a_tun_node_the_user_may_open_is_refused_first() -> None:
    """This CI host's /dev/net/tun is 0600: Firecracker, asked for, is refused with the way
    out before anything is made (it used to fail at its PUT /network-interfaces)."""
    if stat.S_IMODE(os.stat("/dev/net/tun").st_mode) & 0o006 == 0o006:
        pytest.skip("/dev/net/tun is open to every user here")
    with user_env() as e:
        _firecracker_config(e)
        e.start_daemon()
        add_tiny_guest(e)
        out = e.banger("vm", "create", "--name", "fcu", *TINY)
        assert out.returncode != 0
        assert "cannot open /dev/net/tun" in out.stderr, out.stderr
        assert "--vmm qemu" in out.stderr and "chmod 0666 /dev/net/tun" in out.stderr
        assert json.loads(e.ok("vm", "list", "--json")) == []
        e.ok("vm", "run", "--rm", "--vmm", "qemu", *TINY, "--", "true")
