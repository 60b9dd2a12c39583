"""The Python SDK against real guests (issue 13): the examples of docs/sdk.md run as
written — sync and async — in a project whose ``test.sh`` stands in for ``make test``,
inside the netns of a daemon of the test's own (tests/vmenv.py), with the Debian test
guest carrying banger's agent. The patch each writes must ``git apply --check`` on the
host, and no VM is left. A program interrupted with Ctrl-C in the middle of a command
leaves no VM either (issue 14 item 6).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docexamples import example
from tests.gitrepos import git, project_with_tests
from tests.vmenv import VmEnv, agent_guest_env


@pytest.fixture(scope="module")
def env() -> Iterator[VmEnv]:
    with agent_guest_env(tap_pool_size=1) as env:
        yield env


def python(
    env: VmEnv, code: str, cwd: Path, timeout: float = 1100
) -> subprocess.CompletedProcess[str]:
    return env.ns.run(
        [sys.executable, "-c", code],
        cwd=str(cwd),
        env=env.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("variant", ["sync", "async"])
def test_the_documented_example_runs_as_written(env: VmEnv, tmp_path: Path, variant: str) -> None:
    repo = project_with_tests(tmp_path)
    out = python(env, example("sdk.md", variant), repo)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "0 tests passed\n"
    patch = (repo / "sandbox.patch").read_bytes()
    assert b"NOTES.md" in patch
    if variant == "sync":
        assert b"+fixed in the sandbox" in patch
    checked = git(repo, "apply", "--check", "sandbox.patch", check=False)
    assert checked.returncode == 0, checked.stderr
    git(repo, "apply", "sandbox.patch")
    assert (repo / "NOTES.md").read_text().startswith("written through the")
    assert env.json("vm", "list") == []


INTERRUPTED = """
import sys
from banger import Sandbox
from banger.sdk import VmNotFound
try:
    Sandbox.get("no-such-vm")
except VmNotFound as err:
    print(err.code, bool(err.hint), flush=True)
with Sandbox.create(boot_timeout_s=900) as sb:
    handle = sb.start("echo started; sleep 1; echo more", open_stdin=False)
    assert handle.wait(timeout=120).stdout == "started\\nmore\\n"
    print(sb.name, flush=True)
    sb.run("sleep 600")
"""


@pytest.mark.timeout(900)
def test_ctrl_c_in_the_middle_of_a_command_leaves_no_vm(env: VmEnv, tmp_path: Path) -> None:
    proc = env.ns.popen(
        [sys.executable, "-c", INTERRUPTED],
        env=env.env,
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "vm_not_found True\n"
    name = proc.stdout.readline().strip()
    assert name.startswith("sdk-"), proc.stderr.read() if proc.stderr else ""
    assert [vm["name"] for vm in env.json("vm", "list")] == [name]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert env.json("vm", "list") == []
