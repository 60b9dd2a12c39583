"""The SDK's own logic against a stand-in client (tests/sdkfakes.py): commands and their
results, output capping, what `create` asks the daemon for, and above all the end of a
sandbox — deleted on leaving its `with` block whatever the way out (issue 14 item 6).
The same calls against real guests are tests/e2e/test_sdk.py."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

import banger
from banger.client.facade import BangerClient
from banger.errors import CommandExitError, InvalidArgument, VmNotFound, error_from_payload
from banger.sdk import AsyncSandbox, CommandResult, Sandbox
from banger.sdk import commands as sdk_commands
from banger.sdk.commands import Collector, exit_status, to_argv
from banger.sdk.sandbox import NAME_PREFIX, _owned
from tests.gitrepos import make_repo
from tests.sdkfakes import FakeClient, FakeExecResult


def _client(fake: FakeClient) -> BangerClient:
    return cast(BangerClient, fake)


def _make(fake: FakeClient, **options: Any) -> Sandbox:
    return Sandbox.create(client=_client(fake), **options)


# -- commands ---------------------------------------------------------------------------


def test_a_string_runs_through_sh_and_a_list_is_the_exact_argv() -> None:
    assert to_argv("make test && echo ok") == ["sh", "-c", "make test && echo ok"]
    assert to_argv(["printf", "%s", "a b"]) == ["printf", "%s", "a b"]
    for bad in ("", "  ", [], ["ok", 3]):
        with pytest.raises(InvalidArgument):
            to_argv(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (FakeExecResult(0), 0),
        (FakeExecResult(3), 3),
        (FakeExecResult(None, signal=9), 137),
        (FakeExecResult(None, signal=15), 143),
        (FakeExecResult(None, timed_out=True), 124),
    ],
)
def test_exit_status_is_what_a_shell_would_say(result: FakeExecResult, status: int) -> None:
    assert exit_status(result) == status  # type: ignore[arg-type]


def test_check_raises_a_typed_error_with_the_stderr() -> None:
    ok = CommandResult(0, "out", "")
    assert ok.check() is ok
    with pytest.raises(CommandExitError) as caught:
        CommandResult(2, "", "make: *** [test] Error 1\n").check()
    assert caught.value.code == "command_exit"
    assert "status 2" in caught.value.brief
    assert caught.value.details == "make: *** [test] Error 1\n"
    with pytest.raises(CommandExitError, match="timed out"):
        CommandResult(124, "", "", timed_out=True).check()


def test_a_capped_collector_keeps_both_ends_and_says_what_it_cut() -> None:
    seen: list[bytes] = []
    col = Collector(seen.append, limit=10)
    for chunk in (b"abc", b"defgh", b"ijklmnop", b"qrstuvwxyz"):
        col(chunk)
    assert b"".join(seen) == b"abcdefghijklmnopqrstuvwxyz"  # the callback saw everything
    assert col.value() == b"abcde" + b"vwxyz"
    assert col.cut == 16
    assert col.text() == "abcde\n[... 16 bytes of output cut ...]\nvwxyz"
    whole = Collector(None)
    whole(b"x" * 100_000)
    assert whole.cut == 0 and len(whole.value()) == 100_000


# -- a sandbox's life ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "brief"),
    [
        ({"memory_mib": 100}, "memory_mib: must be at least 128 MiB (got 100)"),
        ({"memory_mib": 2 << 20}, "memory_mib: must be at most 1 TiB (got 2097152)"),
        ({"vcpu": 0}, "vcpu: must be at least 1 vCPU (got 0)"),
        ({"disk_size_bytes": 1024}, "disk_size_bytes: must be at least 256 MiB (got 1024)"),
        ({"boot_timeout_s": 0}, "boot_timeout_s: must be at least 1 second (got 0)"),
    ],
)
def test_a_bad_size_is_refused_in_units_before_any_request(
    options: dict[str, int], brief: str
) -> None:
    """Issue 14 item 15: the parameter and the bound in its unit, and nothing asked."""
    fake = FakeClient()
    with pytest.raises(InvalidArgument) as caught:
        _make(fake, **options)
    assert caught.value.brief == brief
    assert fake.vms.created == [] and fake.vms.deleted == []


def test_create_names_the_vm_and_asks_for_no_network_by_default() -> None:
    fake = FakeClient()
    with _make(fake, image="deb", vcpu=1, memory_mib=512) as sb:
        assert sb.name.startswith(NAME_PREFIX)
        assert sb.state == "running" and sb.ip == "172.30.0.2"
    (request,) = fake.vms.created
    assert (request.name, request.image, request.vcpu, request.memory_mib) == (
        sb.name,
        "deb",
        1,
        512,
    )
    assert request.nat is False
    assert fake.vms.deleted == [sb.name]


def test_the_with_block_deletes_on_an_error_and_on_ctrl_c() -> None:
    fake = FakeClient()
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), _make(fake) as sb:
            raise exc
        assert fake.vms.deleted[-1] == sb.name
    assert fake.vms.vms == {}


def test_keep_and_get_leave_the_vm_alone() -> None:
    fake = FakeClient()
    with _make(fake, keep=True) as kept:
        pass
    with Sandbox.get(kept.name, client=_client(fake)) as found:
        assert found.name == kept.name
    assert fake.vms.deleted == []
    assert [s.name for s in Sandbox.list(client=_client(fake))] == [kept.name]
    with pytest.raises(VmNotFound) as caught:
        Sandbox.get("nope", client=_client(fake))
    assert caught.value.hint  # the class's own hint: `banger vm list`


def test_an_interrupted_create_deletes_what_the_daemon_goes_on_making() -> None:
    fake = FakeClient()
    fake.vms.create_raises = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        _make(fake)
    (request,) = fake.vms.created
    assert fake.vms.deleted == [request.name]


def test_a_refused_create_never_deletes_the_vm_that_has_the_name() -> None:
    from banger.errors import AlreadyExists

    fake = FakeClient()
    users = _make(fake, name="users-vm", keep=True)
    fake.vms.create_refuses = AlreadyExists("a VM named 'users-vm' exists")
    with pytest.raises(AlreadyExists):
        _make(fake, name="users-vm")
    fake.vms.create_refuses = KeyboardInterrupt()  # no answer yet: the name may be theirs
    with pytest.raises(KeyboardInterrupt):
        _make(fake, name="users-vm")
    assert fake.vms.deleted == [] and users.name in fake.vms.vms


def test_a_create_interrupted_before_any_answer_deletes_its_own_named_vm() -> None:
    fake = FakeClient()
    fake.vms.create_refuses, fake.vms.create_made_it = KeyboardInterrupt(), True
    with pytest.raises(KeyboardInterrupt):
        _make(fake)  # the SDK chose the name: whatever has it is this create's
    (request,) = fake.vms.created
    assert fake.vms.deleted == [request.name]


def test_a_sandbox_never_deleted_goes_at_interpreter_exit() -> None:
    fake = FakeClient()
    sb = _make(fake)
    _make(fake, keep=True)
    _owned.delete_all()  # what atexit runs
    assert fake.vms.deleted == [sb.name]
    sb.delete()  # again: fine
    assert fake.vms.deleted == [sb.name]


def test_delete_of_a_vm_already_gone_is_fine() -> None:
    fake = FakeClient()
    sb = _make(fake)
    fake.vms.vms.clear()
    sb.delete()


# -- what runs in it ----------------------------------------------------------------------


def test_run_streams_and_keeps_output_and_never_raises_for_the_exit() -> None:
    fake = FakeClient()
    seen: list[bytes] = []
    with _make(fake) as sb:
        result = sb.run("exit 3", on_stderr=seen.append, timeout=5)
        assert (result.exit_code, result.stderr, result.ok) == (3, "bye\n", False)
        assert seen == [b"bye\n"]
        echoed = sb.run(["cat"], stdin="hello", cwd="/tmp", env={"A": "1"})
    assert echoed.stdout == "cathello"
    last = fake.vms.ran[-1]
    assert (last.cwd, last.env, last.stdin) == ("/tmp", {"A": "1"}, b"hello")
    assert fake.vms.ran[0].timeout_s == 5


def test_start_gives_a_handle_that_collects_and_signals() -> None:
    fake = FakeClient()
    with _make(fake) as sb:
        handle = sb.start("sleep 100", open_stdin=True)
        handle.write("in")
        handle.kill()
        result = handle.wait(timeout=5)
        assert result.stdout == "sh -c sleep 100" == handle.stdout
        handle.close()
    (session,) = fake.vms.sessions
    assert session.signals == [signal.SIGKILL] and bytes(session.stdin) == b"in"
    assert session.closed


def test_files_and_ports_go_through_the_client() -> None:
    fake = FakeClient()
    with _make(fake) as sb:
        sb.files.write("/root/a.txt", "héllo")
        assert sb.files.read("/root/a.txt") == "héllo".encode()
        assert sb.files.read_text("/root/a.txt") == "héllo"
        assert [f["name"] for f in sb.files.list("/root")] == ["a.txt"]  # type: ignore[index]
        sb.files.remove("/root/a.txt")
        assert sb.files.list("/root") == []
        assert sb.ports() == [{"proto": "tcp", "port": 8000}]


def test_a_repository_that_cannot_be_copied_is_refused_before_any_vm(tmp_path: Path) -> None:
    fake = FakeClient()
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match=r"not a git|git repository|no commits"):
        _make(fake, repo=tmp_path / "empty")
    assert fake.vms.created == []
    make_repo(tmp_path / "ok", {b"a": b"1\n"})  # a repository that can: planned fine


def test_errors_are_the_typed_classes_rebuilt_from_daemon_codes() -> None:
    err = error_from_payload(
        {"error": {"code": "vm_not_found", "message": "no VM named 'x'", "hint": "h"}},
        status=404,
    )
    import banger.sdk

    assert isinstance(err, banger.sdk.VmNotFound) and isinstance(err, banger.sdk.NotFound)
    assert (err.code, err.hint) == ("vm_not_found", "h")


# -- asyncio ------------------------------------------------------------------------------


def test_async_sandbox_has_the_same_calls() -> None:
    fake = FakeClient()

    async def main() -> tuple[str, str]:
        async with AsyncSandbox.create(client=_client(fake)) as sb:
            result = await sb.run("echo hi")
            await sb.files.write("/f", b"x")
            data = await sb.files.read("/f")
            assert data == b"x"
            assert await sb.ports()
        other = await AsyncSandbox.create(client=_client(fake))
        await other.delete()
        return sb.name, result.stdout

    name, out = asyncio.run(main())
    assert out == "sh -c echo hi"
    assert fake.vms.deleted[0] == name and len(fake.vms.deleted) == 2


def test_a_cancelled_async_create_still_deletes_its_vm() -> None:
    fake = FakeClient()
    started, release = threading.Event(), threading.Event()
    real_create = fake.vms.create

    def create(request: Any) -> Any:
        started.set()
        release.wait(5)  # the awaiting task is cancelled meanwhile
        return real_create(request)

    fake.vms.create = create  # type: ignore[method-assign]

    async def main() -> None:
        async def make() -> AsyncSandbox:
            return await AsyncSandbox.create(client=_client(fake))

        task = asyncio.create_task(make())
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    deadline = time.monotonic() + 5
    while not fake.vms.deleted and time.monotonic() < deadline:
        time.sleep(0.02)
    (request,) = fake.vms.created
    assert fake.vms.deleted == [request.name]


# -- the package root ---------------------------------------------------------------------


def test_import_banger_stays_cheap_and_the_sdk_loads_on_first_use() -> None:
    code = (
        "import sys, banger; assert 'banger.sdk' not in sys.modules;"
        "from banger import Sandbox, AsyncSandbox, CommandResult;"
        "import banger.sdk; assert Sandbox is banger.sdk.Sandbox; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ok", out.stderr
    assert banger.Sandbox is Sandbox
    with pytest.raises(AttributeError):
        _ = banger.NoSuchThing  # type: ignore[attr-defined]
    assert sdk_commands.EXIT_TIMED_OUT == 124


# -- the ssh shell the SDK, the MCP server and the CLI copy workspaces through -------------


def test_ssh_shell_is_banger_s_batch_ssh_to_a_running_vm_only() -> None:
    from banger.errors import InvalidState
    from banger.model.api_types import SshInfo
    from banger.workspace import ssh_shell

    info = {"name": "dev", "user": "root", "key": "/k", "known_hosts": "/kh"}
    shell = ssh_shell(SshInfo(state="running", ip="10.0.0.2", **info))
    argv = shell.argv("true")
    assert argv[0] == "ssh" and argv[-4:] == ["-T", "10.0.0.2", "--", "sh -c true"]
    joined = " ".join(argv)
    for option in ("-i /k", "BatchMode=yes", "UserKnownHostsFile=/kh", "-l root"):
        assert option in joined
    with pytest.raises(InvalidState, match="stopped, not running"):
        ssh_shell(SshInfo(state="stopped", ip=None, **info))
    # Issue 14 item 19: "is in state error", and where to read the error.
    with pytest.raises(InvalidState) as failed:
        ssh_shell(SshInfo(state="error", ip=None, **info))
    assert failed.value.brief == "VM 'dev' is in state error, not running"
    assert failed.value.hint is not None and "`banger vm show dev`" in failed.value.hint
    # A rootless VM: ssh goes to a forwarded port on loopback, the key filed under an alias.
    rootless = ssh_shell(
        SshInfo(
            state="running", ip=None, host="127.0.0.1", port=2201, host_key_alias="dev.vm", **info
        )
    ).argv("true")
    assert rootless[-4:-2] == ["-T", "127.0.0.1"]
    assert "-p 2201" in " ".join(rootless) and "HostKeyAlias=dev.vm" in " ".join(rootless)
