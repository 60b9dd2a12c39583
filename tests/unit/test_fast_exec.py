"""The fast ``vm exec`` (banger.cli.fast_exec): which argv it takes and which it hands to
the click CLI, that its copies of the wire constants, request bytes, socket path and
command rule agree with the originals, and what it loads. End to end (a real daemon and
guest) it runs under tests/e2e/test_vm_exec.py, whose calls all take this path."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from banger.cli import fast_exec
from banger.cli.cmd_exec import KILL_AFTER_S, command_argv
from banger.client import exec_session
from banger.client.http import _request_bytes
from banger.guest import exec_frames
from banger.guest.exec_frames import Kind
from banger.host import buildinfo
from banger.host.paths import Layout
from banger.host.runtime_dir import socket_path
from banger.model import api_types
from banger.model.api_types import ExecRequest, to_body


def test_the_plain_form_becomes_the_request_the_click_command_sends() -> None:
    got = fast_exec.parse(
        [
            *["box", "--cwd", "/tmp", "--env", "A=1 2", "--env", "B=x=y", "--timeout", "2.5"],
            *["--", "sh", "-c", "echo hi"],
        ]
    )
    assert got is not None
    assert got.pop("name") == "box"
    want = to_body(
        ExecRequest(
            argv=["sh", "-c", "echo hi"], cwd="/tmp", env={"A": "1 2", "B": "x=y"}, timeout_s=2.5
        )
    )
    assert got == want
    assert fast_exec.parse(["box", "--", "true"]) == {"name": "box", "argv": ["true"], "env": {}}


@pytest.mark.parametrize(
    "words",
    [["true"], ["ls | wc -l"], ["echo $HOME"], ["a b"], ["x=1"], ["é"], ["/bin/ls", "-l"], [""]],
)
def test_one_word_is_a_shell_line_exactly_when_cmd_exec_says_so(words: list[str]) -> None:
    got = fast_exec.parse(["box", "--", *words])
    assert got is not None and got["argv"] == command_argv(words)


def test_the_build_token_is_the_stamps() -> None:
    assert fast_exec.own_build() == buildinfo.current().token()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["box"],  # no command
        ["box", "true"],  # no `--`: click's form
        ["box", "--"],
        ["--help"],
        ["box", "--help", "--", "true"],
        ["box", "--debug", "--", "true"],
        ["box", "--cwd=/tmp", "--", "true"],  # the = form is click's
        ["box", "--cwd", "--", "true"],
        ["box", "--cwd", "/a", "--cwd", "/b", "--", "true"],
        ["box", "--env", "NOEQUALS", "--", "true"],
        ["box", "--env", "=v", "--", "true"],
        ["box", "--timeout", "1e3", "--", "true"],
        ["box", "--timeout", "-1", "--", "true"],
        ["box", "--timeout", "nan", "--", "true"],
        ["box", "--timeout", "٣", "--", "true"],
        ["box", "--bogus", "x", "--", "true"],
        ["-box", "--", "true"],
        ["a/b", "--", "true"],
        ["x" * 64, "--", "true"],
    ],
)
def test_anything_else_goes_to_the_click_cli(args: list[str]) -> None:
    assert fast_exec.parse(args) is None


def test_request_bytes_are_the_clients() -> None:
    body = json.dumps({"argv": ["true"], "env": {}}).encode()
    assert fast_exec.request_bytes(
        "POST", "/v1/vms/box/exec", body, upgrade=True
    ) == _request_bytes("POST", "/v1/vms/box/exec", body, upgrade=exec_session.PROTOCOL)
    assert fast_exec.request_bytes("GET", "/v1/ping", None, upgrade=False) == _request_bytes(
        "GET", "/v1/ping", None
    )
    with_build = fast_exec.request_bytes("POST", "/v1/x", b"{}", upgrade=True, build="1 c t")
    head = with_build.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert b"Banger-Build: 1 c t" in head


def test_wire_constants_are_exec_frames() -> None:
    assert fast_exec.HEADER.format == exec_frames.HEADER.format
    assert fast_exec.CHANNEL == exec_frames.LINK_CHANNEL
    assert (fast_exec.WINDOW, fast_exec.MAX_PAYLOAD) == (
        exec_frames.WINDOW,
        exec_frames.MAX_PAYLOAD,
    )
    assert fast_exec.PROTOCOL == exec_session.PROTOCOL
    assert fast_exec.KILL_AFTER_S == KILL_AFTER_S
    assert fast_exec.EXIT_TIMED_OUT == api_types.EXIT_TIMED_OUT
    pairs = {
        fast_exec.STDIN: Kind.STDIN,
        fast_exec.STDIN_EOF: Kind.STDIN_EOF,
        fast_exec.SIGNAL: Kind.SIGNAL,
        fast_exec.CREDIT: Kind.CREDIT,
        fast_exec.FAILED: Kind.FAILED,
        fast_exec.STDOUT: Kind.STDOUT,
        fast_exec.STDERR: Kind.STDERR,
        fast_exec.STDIN_CREDIT: Kind.STDIN_CREDIT,
        fast_exec.EXIT: Kind.EXIT,
    }
    assert all(int(mine) == int(theirs) for mine, theirs in pairs.items())


@pytest.mark.parametrize(
    "env",
    [
        {"XDG_RUNTIME_DIR": "/run/x"},
        {"XDG_RUNTIME_DIR": "relative", "XDG_STATE_HOME": "/s"},
        {"XDG_STATE_HOME": "rel"},
        {},
    ],
)
def test_the_socket_path_is_the_layouts(env: dict[str, str], tmp_path: Path) -> None:
    home = str(tmp_path)
    uid = 4_000_000  # no /run/user/<uid> on any test host
    full = {"HOME": home, **env}
    assert socket_path(full, uid, home) == str(Layout.from_env(full, uid=uid).socket_path)


def test_no_daemon_hands_back_without_starting_one(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    code = "import sys; from banger.cli import fast_exec; print(fast_exec.run(sys.argv[1:]))"
    out = subprocess.run(
        [sys.executable, "-c", code, "box", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "None\n"
    assert not (tmp_path / "run").exists()


def test_json_is_what_json_reads_back() -> None:
    body = {
        "argv": ['a"b\\c', "tab\there", "\x00\x1f\x7f", "é€😀", "\udcff"],
        "env": {"K=": "v\n"},
        "timeout_s": 2.5,
    }
    text = fast_exec._json(body)
    assert text.isascii()
    assert json.loads(text) == body


def test_it_loads_no_click_typing_pathlib_re_or_enum() -> None:
    code = (
        "import sys; from banger.cli import fast_exec; fast_exec.parse(['b', '--', 'x']);"
        "fast_exec._json({'a': ['b']}); from banger.host.runtime_dir import socket_path;"
        "print(' '.join(sorted(m for m in ('click', 'typing', 'pathlib', 're', 'dataclasses',"
        " 'enum', 'json', 'socket', 'signal') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -- the link, with the test as the daemon (a socketpair) ----------------------------------


def _link_against(frames: list[bytes], *, close: bool = False) -> tuple[object, bytes]:
    """Run a link whose daemon already sent ``frames``; what run() gave (its status or
    the LinkError) and every byte the link sent back."""
    ours, theirs = socket.socketpair()
    saved = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # stdin at EOF, whatever stdin the test run was given
    os.close(null)
    with ours, theirs:
        theirs.sendall(b"".join(frames))
        if close:
            theirs.shutdown(socket.SHUT_WR)
        try:
            outcome: object = fast_exec._Link(ours, b"").run()
        except fast_exec.LinkError as exc:
            outcome = exc
        finally:
            os.dup2(saved, 0)
            os.close(saved)
        ours.shutdown(socket.SHUT_WR)
        sent = b""
        while chunk := theirs.recv(65536):
            sent += chunk
    return outcome, sent


def _frame(kind: int, payload: bytes = b"", channel: int = exec_frames.LINK_CHANNEL) -> bytes:
    return exec_frames.encode(kind, channel, payload)


def _kinds(sent: bytes) -> list[tuple[int, bytes]]:
    decoder = exec_frames.FrameDecoder()
    return [(f.kind, f.payload) for f in decoder.feed(sent)]


def test_output_goes_to_fds_1_and_2_and_is_granted_back(capfd: pytest.CaptureFixture[str]) -> None:
    outcome, sent = _link_against(
        [
            _frame(Kind.STDOUT, b"out\n"),
            _frame(Kind.STDERR, b"err!\n"),
            _frame(Kind.EXIT, bytes([0, 3, 0])),
        ]
    )
    assert outcome == 3
    assert capfd.readouterr() == ("out\n", "err!\n")
    got = _kinds(sent)
    assert (Kind.CREDIT, exec_frames.u32(4)) in got and (Kind.CREDIT, exec_frames.u32(5)) in got
    assert (Kind.STDIN_EOF, b"") in got  # stdin was /dev/null


@pytest.mark.parametrize(
    ("payload", "status"), [(bytes([1, 9, 0]), 137), (bytes([0, 0, 1]), 124), (b"\x00\x00", None)]
)
def test_the_exit_status_is_cmd_execs(payload: bytes, status: int | None) -> None:
    outcome, _ = _link_against([_frame(Kind.EXIT, payload)])
    if status is None:  # a malformed EXIT breaks the protocol
        assert isinstance(outcome, fast_exec.LinkError)
    else:
        assert outcome == status


def test_a_failed_frame_is_rendered_as_the_daemons_error(
    capfd: pytest.CaptureFixture[str],
) -> None:
    error = {"error": {"code": "agent_unavailable", "message": "gone", "hint": "try again"}}
    outcome, _ = _link_against([_frame(Kind.FAILED, json.dumps(error).encode())])
    assert isinstance(outcome, fast_exec.LinkError)
    assert fast_exec._failed(outcome) == 1
    err = capfd.readouterr().err
    assert err.startswith("error: gone\n") and "hint: try again" in err, err


@pytest.mark.parametrize(
    ("frames", "close", "words"),
    [
        ([], True, "without an exit"),
        ([_frame(Kind.STDOUT, b"x", channel=2)], False, "protocol"),
        ([_frame(Kind.STDIN_CREDIT, exec_frames.u32(1))], False, "more stdin than the window"),
        ([_frame(Kind.HELLO_ACK)], False, "kind"),
    ],
)
def test_a_daemon_breaking_the_link_is_an_error(
    frames: list[bytes], close: bool, words: str
) -> None:
    outcome, _ = _link_against(frames, close=close)
    assert isinstance(outcome, fast_exec.LinkError) and words in str(outcome), outcome
