"""Workspaces and file_sync against real guests (tiny busybox/dropbear guest, no git in
it) through the daemon and the CLI, in a netns of the test's own (SPEC §7; ADVERSARIAL
59, 63, 66, 67)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.host.runner import Runner
from banger.workspace import GuestShell
from tests.conftest import BIN
from tests.gitrepos import GIT_ENV, git, make_repo
from tests.vmenv import VmEnv, vm_env

TINY = ("--image", "tiny", "--vcpu", "1", "--memory", "256", "--disk-size", "1G")
SECRET = b"HOST-SECRET-NEVER-IN-A-GUEST"
# Until `vm workspace` is registered in `banger vm`, run the CLI with it added.
_SHIM = (
    "from banger.cli import cmd_vm, cmd_workspace\n"
    "cmd_vm.vm.commands.setdefault('workspace', cmd_workspace.workspace)\n"
    "from banger.cli.main import main\n"
    "main()\n"
)


def _wired() -> bool:
    from banger.cli import cmd_vm

    return "workspace" in cmd_vm.vm.commands


def _run_takes_a_path() -> bool:
    from banger.cli.cmd_run import run

    return any("--include-untracked" in p.opts for p in run.params)


def cli(
    env: VmEnv, *args: str, stdin: bytes = b"", timeout: float = 600
) -> subprocess.CompletedProcess[bytes]:
    """The banger CLI inside the netns, bytes out (patches and tars are binary)."""
    argv = [str(BIN / "banger")] if _wired() else [sys.executable, "-c", _SHIM]
    return env.ns.run(
        [*argv, *args], env=env.env, input=stdin, capture_output=True, timeout=timeout
    )


def ok(env: VmEnv, *args: str) -> bytes:
    out = cli(env, *args)
    assert out.returncode == 0, f"banger {' '.join(args)}:\n{out.stdout!r}\n{out.stderr.decode()}"
    return out.stdout


def guest_tree(env: VmEnv, vm: str, path: str) -> dict[bytes, tarfile.TarInfo]:
    """Every entry below ``path`` in the guest, names as exact bytes (busybox tar)."""
    data = ok(env, "vm", "ssh", vm, "--", f"cd {path} && tar -c -f - .")
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as t:
        members = {os.fsencode(m.name).removeprefix(b"./"): m for m in t.getmembers()}
    return {(b"" if name == b"." else name): m for name, m in members.items()}


def work_files(tree: dict[bytes, tarfile.TarInfo]) -> set[bytes]:
    return {n for n in tree if n and n != b".git" and not n.startswith(b".git/")}


@pytest.fixture(scope="module")
def secret_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("host-secrets")
    (path / "id_ed25519").write_bytes(SECRET)
    return path


@pytest.fixture(scope="module")
def sync_source(tmp_path_factory: pytest.TempPathFactory, secret_dir: Path) -> Path:
    """A directory for [[file_sync]] with a nested symlink to the secret."""
    src = tmp_path_factory.mktemp("sync-src")
    (src / "config").write_text("[default]\nregion = moon\n")
    (src / "sub").mkdir()
    (src / "sub" / "token").write_text("t")
    (src / "leak").symlink_to(secret_dir / "id_ed25519")
    return src


@pytest.fixture(scope="module")
def env(sync_source: Path) -> Iterator[VmEnv]:
    config = f'tap_pool_size = 2\n[[file_sync]]\nhost = "{sync_source}"\nguest = "~/.cfg"\n'
    with vm_env(config) as e:
        e.add_test_guests()
        e.extra_env.update(GIT_ENV)
        yield e


@pytest.fixture(scope="module")
def vm(env: VmEnv) -> str:
    env.ok("vm", "create", "--name", "ws", *TINY)
    return "ws"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, secret_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("repo") / "project"
    files = {
        b".gitignore": b"*.log\n",
        b"tracked": b"tracked\n",
        b"src/main.c": b"int main(void) { return 0; }\n",
        b"odd\nname 'q' \xc3\xbc": b"odd\n",
        b"-leading": b"dash\n",
    }
    make_repo(root, files)
    (root / "key").symlink_to(secret_dir / "id_ed25519")
    git(root, "add", "key")
    git(root, "commit", "-qm", "a link to a host secret")
    (root / "untracked").write_text("not copied by default\n")
    (root / "debug.log").write_text("ignored, never copied\n")
    (root / "tracked").write_text("tracked, edited on the host\n")
    return root


EXPECTED = {b".gitignore", b"tracked", b"src", b"src/main.c", b"odd\nname 'q' \xc3\xbc"}
EXPECTED |= {b"-leading", b"key"}


def test_prepare_copies_exactly_the_tracked_files_and_no_secret_e66_e67(
    env: VmEnv, vm: str, repo: Path, secret_dir: Path
) -> None:
    out = cli(env, "vm", "workspace", "prepare", vm, str(repo))
    assert out.returncode == 0, out.stderr.decode()
    assert b"1 untracked file not copied" in out.stderr and b"--include-untracked" in out.stderr
    tree = guest_tree(env, vm, "/root/repo")
    assert work_files(tree) == EXPECTED
    assert tree[b"key"].issym() and tree[b"key"].linkname == str(secret_dir / "id_ed25519")
    assert b".git/HEAD" in tree and b".git/banger-base" in tree
    found = cli(env, "vm", "ssh", vm, "--", f"grep -r -l {SECRET.decode()} /root")
    assert found.returncode == 1 and found.stdout == b""  # the bytes are nowhere in /root
    edited = ok(env, "vm", "ssh", vm, "--", "cat /root/repo/tracked")
    assert edited == b"tracked, edited on the host\n"


def test_dry_run_lists_and_creates_nothing(env: VmEnv, vm: str, repo: Path) -> None:
    out = ok(env, "vm", "workspace", "prepare", vm, str(repo), "--guest-path", "/root/dry",
             "--include-untracked", "--dry-run")  # fmt: skip
    text = out.decode()
    assert "mode: tracked + untracked (ignored files never)" in text
    assert "  untracked\n" in text and "debug.log" not in text
    assert cli(env, "vm", "ssh", vm, "--", "test -e /root/dry").returncode == 1


def test_existing_path_is_refused_then_replaced_readonly(env: VmEnv, vm: str, repo: Path) -> None:
    ok(env, "vm", "workspace", "prepare", vm, str(repo), "--guest-path", "/root/ro")
    again = cli(env, "vm", "workspace", "prepare", vm, str(repo), "--guest-path", "/root/ro")
    assert again.returncode == 1 and b"already exists" in again.stderr
    assert b"--replace" in again.stderr
    ok(env, "vm", "workspace", "prepare", vm, str(repo), "--guest-path", "/root/ro",
       "--replace", "--readonly", "--include-untracked")  # fmt: skip
    write = cli(env, "vm", "ssh", vm, "--", "touch /root/ro/new")
    assert write.returncode != 0 and b"Read-only" in write.stderr
    assert ok(env, "vm", "ssh", vm, "--", "cat /root/ro/untracked") == b"not copied by default\n"


def test_guest_changes_come_back_as_a_patch_git_apply_accepts(
    env: VmEnv, vm: str, repo: Path, tmp_path: Path
) -> None:
    ok(env, "vm", "workspace", "prepare", vm, str(repo), "--guest-path", "/root/exp")
    ok(env, "vm", "ssh", vm, "--",
       "cd /root/exp && echo made in the guest > guest-file && echo more >> src/main.c "
       "&& rm -- -leading && echo junk > build.log")  # fmt: skip
    patch = tmp_path / "guest.patch"
    out = cli(env, "vm", "workspace", "export", vm, "--guest-path", "/root/exp",
              "--repo", str(repo), "-o", str(patch))  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()
    assert b"diff made on the host" in out.stderr  # the tiny guest has no git
    text = patch.read_bytes()
    assert b"b/guest-file" in text and b"b/src/main.c" in text and b"build.log" not in text
    # Relative to the base commit: the host's edit that was uncommitted at prepare time
    # is in it too, so it applies to a clean checkout of the base.
    assert b"b/tracked" in text
    clean = tmp_path / "clean"
    subprocess.run(["git", "clone", "-q", str(repo), str(clean)], check=True)
    check = subprocess.run(
        ["git", "-C", str(clean), "apply", "--check", str(patch)], capture_output=True, check=False
    )
    assert check.returncode == 0, check.stderr


@pytest.mark.skipif(not _run_takes_a_path(), reason="vm run PATH is not wired in yet")
def test_vm_run_with_a_path_runs_the_command_in_the_copy(env: VmEnv, repo: Path) -> None:
    check = "pwd && test -f tracked && test -L key && ! test -e untracked"
    out = cli(env, "vm", "run", "--rm", *TINY, str(repo), "--", "sh", "-c", check)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.splitlines()[-1] == b"/root/repo"
    dry = cli(env, "vm", "run", *TINY, str(repo), "--dry-run")
    assert dry.returncode == 0 and b"  tracked\n" in dry.stdout and b"spec:" not in dry.stdout
    # No command: the shell starts in the copy (here it reads its commands from stdin).
    lines = b"pwd\ntest -L key && echo key\n"
    shell = cli(env, "vm", "run", "--rm", *TINY, str(repo), stdin=lines)
    assert shell.returncode == 0, shell.stderr.decode()
    assert shell.stdout.splitlines()[-2:] == [b"/root/repo", b"key"]
    bare = cli(env, "vm", "run", *TINY, str(repo / ".git"))
    assert bare.returncode == 1 and b"inside a .git directory" in bare.stderr
    assert b"spec:" not in bare.stdout  # refused before any VM was made


def test_file_sync_skips_a_nested_symlink_e59(env: VmEnv, vm: str, sync_source: Path) -> None:
    """Through `banger vm ssh` (the same transport the daemon's start step uses)."""
    from banger.config.settings import FileSyncEntry
    from banger.workspace.filesync import sync_files_blocking

    shell = GuestShell(
        tuple(env.ns.argv([str(BIN / "banger"), "vm", "ssh", vm])),
        runner=Runner(extra_env={k: v for k, v in env.env.items() if k.startswith("XDG_")}),
    )
    entry = FileSyncEntry(host=str(sync_source), guest="~/.synced")
    report = sync_files_blocking([entry], shell, home=Path.home())
    assert report.copied == ["~/.synced"]
    assert len(report.warnings) == 1 and "leak: skipped, a symlink" in report.warnings[0]
    tree = guest_tree(env, vm, "/root/.synced")
    assert set(tree) == {b"", b"config", b"sub", b"sub/token"}
    assert tree[b"config"].mode == 0o600 and tree[b""].mode == 0o700
    found = cli(env, "vm", "ssh", vm, "--", f"grep -r -l {SECRET.decode()} /root")
    assert found.returncode == 1


def test_file_sync_runs_when_a_vm_starts(env: VmEnv, vm: str) -> None:
    """[[file_sync]] in config is applied by the daemon at start (once that is wired)."""
    probe = cli(env, "vm", "ssh", vm, "--", "test -f /root/.cfg/config")
    if probe.returncode != 0:
        pytest.skip("the daemon does not run [[file_sync]] at VM start yet")
    tree = guest_tree(env, vm, "/root/.cfg")
    assert set(tree) == {b"", b"config", b"sub", b"sub/token"}
