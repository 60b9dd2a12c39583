"""Files in a real guest through the real daemon, the typed client and `banger vm cp`
(issue 13, files part; docs/explanation/guest-files.md).

The Debian test guest with the agent (``tests.guests.debian_agent_rootfs``) under
QEMU/TCG (virtio-serial exec port) and under the Firecracker stand-in (vsock
``CONNECT 53``), a daemon in a network namespace of the test's own (tests/vmenv.py). The
client talks to the daemon's Unix socket from the test process; `vm cp` runs as the CLI.
Hostile cases: a guest symlink where a write would follow it, a guest directory whose
links point out of it (copied as links, never followed on the host: ADVERSARIAL 3, 64),
sizes over the limit, bad paths, a stopped VM.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from banger.client.facade import BangerClient
from banger.client.http import Client
from banger.errors import (
    GuestPathNotFound,
    GuestPathRefused,
    InvalidArgument,
    InvalidState,
    IsADirectory,
    PayloadTooLarge,
)
from tests import guests
from tests.vmenv import VmEnv, vm_env

STANDIN = Path(__file__).resolve().parents[1] / "fcstandin" / "firecracker"
DEBIAN = ["--vcpu", "2", "--memory", "1024", "--disk-size", "1G"]


def _boot(env: VmEnv, name: str) -> BangerClient:
    env.add_test_guests(tiny=False)
    rootfs = str(guests.debian_agent_rootfs())
    env.ok("image", "register", "deb-agent", "--rootfs", rootfs, "--kernel-ref", "cloud")
    env.ok("vm", "create", "--name", name, "--image", "deb-agent", *DEBIAN)
    return BangerClient(Client(env.home.socket, timeout_s=120))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = f"{path.stat().st_mode & 0o777:o} {sha(path.read_bytes())}"
        else:
            out[rel] = "dir"
    return out


@pytest.mark.timeout(1200)
def test_files_through_the_client_and_vm_cp(tmp_path: Path) -> None:
    with vm_env() as env:
        client = _boot(env, "files")
        _client_round_trips_with_ssh(env, client, "files")
        _vm_cp_both_ways(env, tmp_path, "files")
        # a stopped VM: a clear error with a hint
        env.ok("vm", "stop", "files")
        with pytest.raises(InvalidState) as stopped:
            client.vms.read_file("files", "/etc/hostname")
        assert stopped.value.hint and "vm start" in stopped.value.hint
        out = env.banger("vm", "cp", "files:/etc/hostname", str(tmp_path / "h"))
        assert out.returncode != 0 and "not running" in out.stderr
        env.ok("vm", "delete", "--force", "files")


def _client_round_trips_with_ssh(env: VmEnv, client: BangerClient, name: str) -> None:
    env.ok("vm", "ssh", name, "--", "mkdir -p /root/pre && ln -s /root/target /root/link")
    small = os.urandom(1000)
    client.vms.write_file(name, "/root/new/dir/small.bin", small, mode=0o600)
    assert client.vms.read_file(name, "/root/new/dir/small.bin") == small
    # what the agent wrote is what a login shell sees (no private /tmp, no read-only /root)
    seen = env.ok("vm", "ssh", name, "--", "sha256sum /root/new/dir/small.bin").split()[0]
    assert seen == sha(small)
    info = client.vms.stat_file(name, "/root/new/dir/small.bin")
    assert (info.kind, info.size, info.mode) == ("file", 1000, 0o600)
    big = os.urandom(5 * 1024 * 1024 + 3)
    client.vms.write_file(name, "/root/big.bin", io.BytesIO(big))
    out = io.BytesIO()
    assert client.vms.read_file_to(name, "/root/big.bin", out) == len(big)
    assert sha(out.getvalue()) == sha(big)
    names = {f.name: f for f in client.vms.list_files(name, "/root")}
    assert names["big.bin"].size == len(big) and names["new"].kind == "dir"
    assert names["link"].kind == "symlink"
    with pytest.raises(GuestPathNotFound):
        client.vms.read_file(name, "/root/missing")
    with pytest.raises(IsADirectory):
        client.vms.read_file(name, "/root")
    with pytest.raises(PayloadTooLarge):
        client.vms.read_file(name, "/root/big.bin", max_bytes=1024)
    with pytest.raises(InvalidArgument):
        client.vms.read_file(name, "root/relative")
    with pytest.raises(InvalidArgument):
        client.vms.write_file(name, "/root/../etc/x", b"x")
    client.vms.write_file(name, "/root/target", b"keep")
    with pytest.raises(GuestPathRefused, match="symlink"):
        client.vms.write_file(name, "/root/link", b"pwned")
    assert client.vms.read_file(name, "/root/target") == b"keep"
    client.vms.remove_file(name, "/root/new", recursive=True)
    with pytest.raises(GuestPathNotFound):
        client.vms.stat_file(name, "/root/new")


def _vm_cp_both_ways(env: VmEnv, tmp_path: Path, name: str) -> None:
    # a file, host -> guest -> host
    data = os.urandom(2 * 1024 * 1024 + 5)
    (tmp_path / "up.bin").write_bytes(data)
    env.ok("vm", "cp", str(tmp_path / "up.bin"), f"{name}:/root/")
    assert env.ok("vm", "ssh", name, "--", "sha256sum /root/up.bin").split()[0] == sha(data)
    summary = json.loads(
        env.ok("vm", "cp", "--json", f"{name}:/root/up.bin", str(tmp_path / "down.bin"))
    )
    assert summary["kind"] == "file" and summary["bytes"] == len(data)
    assert sha((tmp_path / "down.bin").read_bytes()) == sha(data)
    # a directory with a symlink inside (relative and absolute, one pointing out)
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.bin").write_bytes(os.urandom(300_000))
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    (src / "rel").symlink_to("sub/a.bin")
    (src / "out").symlink_to("/etc/passwd")
    env.ok("vm", "cp", str(src), f"{name}:/root/copied")
    listing = env.ok("vm", "ssh", name, "--", "cd /root/copied && readlink out rel && ./run.sh")
    assert listing.split() == ["/etc/passwd", "sub/a.bin", "hi"]
    back = tmp_path / "back"
    back.mkdir()
    summary = json.loads(env.ok("vm", "cp", "--json", f"{name}:/root/copied", str(back)))
    assert summary["kind"] == "dir" and summary["files"] == 2
    assert tree_digest(back / "copied") == tree_digest(src)
    # the guest's link pointing out of the tree is a link on the host, not followed
    assert os.readlink(back / "copied" / "out") == "/etc/passwd"
    # errors
    out = env.banger("vm", "cp", str(tmp_path / "up.bin"), str(tmp_path / "x"))
    assert out.returncode != 0 and "NAME:/path" in out.stderr
    out = env.banger("vm", "cp", f"{name}:/root/copied", str(tmp_path / "down.bin"))
    assert out.returncode != 0 and "onto the file" in out.stderr
    out = env.banger("vm", "cp", "--max-size", "1K", f"{name}:/root/up.bin", str(tmp_path / "y"))
    assert out.returncode != 0 and "larger than" in out.stderr
    assert not (tmp_path / "y").exists()


@pytest.mark.timeout(1200)
def test_files_over_the_firecracker_stand_in(tmp_path: Path) -> None:
    with vm_env(f'firecracker_bin = "{STANDIN}"\nvmm = "firecracker"\n') as env:
        client = _boot(env, "fcfiles")
        data = os.urandom(1024 * 1024 + 1)
        client.vms.write_file("fcfiles", "/root/f.bin", data)
        assert sha(client.vms.read_file("fcfiles", "/root/f.bin")) == sha(data)
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "x").write_text("x")
        env.ok("vm", "cp", str(tmp_path / "d"), "fcfiles:/root/d")
        assert [f.name for f in client.vms.list_files("fcfiles", "/root/d")] == ["x"]
        env.ok("vm", "delete", "--force", "fcfiles")
