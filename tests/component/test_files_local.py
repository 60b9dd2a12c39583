"""File operations through the real agent file, run on this host, over the real exec client.

``banger_agent.py`` serves exec on ``--exec-listen-unix`` (this Python and 3.7 when
found); ``banger.guest.file_ops.GuestFiles`` runs each operation as
``python -I -S banger_agent.py --file …`` through it, as the daemon does in a guest. The
"guest" is a private temporary directory; the tests create every path they touch.
Hostile cases: symlinks where a write or remove would follow them, bad paths, sizes over
the limit or lying, a guest whose ``python3`` is a script that answers with lies
(ADVERSARIAL 64, 100: the host bounds and validates what the guest says).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from banger.errors import (
    AgentUnavailable,
    BadResponse,
    CommandFailed,
    GuestPathNotFound,
    GuestPathRefused,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    PayloadTooLarge,
)
from banger.guest.exec_client import ExecConnection
from banger.guest.file_archive import extract_archive, pack_directory
from banger.guest.file_ops import GuestFiles
from tests.localagent import AGENT, PYTHONS, run_agent, short_dir, wait_for_socket

pytestmark = pytest.mark.component
__all__ = ["short_dir"]


PYTHON = sys.executable


@pytest.fixture(params=PYTHONS)
def agent_sock(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[Path]:
    """The agent under each Python; its file operations run under the same one."""
    global PYTHON  # noqa: PLW0603 - read by files_on in the same test
    PYTHON = request.param
    path = short_dir / "exec.sock"
    with run_agent(request.param, "--exec-listen-unix", str(path)) as proc:
        wait_for_socket(path, proc)
        yield path


def files_on(conn: ExecConnection) -> GuestFiles:
    return GuestFiles(conn, agent_argv=[PYTHON, "-I", "-S", str(AGENT)])


async def read_all(files: GuestFiles, path: str, max_bytes: int = 1 << 30) -> bytes:
    stream = await files.open_read(path, max_bytes=max_bytes)
    return b"".join([chunk async for chunk in stream.chunks()])


async def chunks_of(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_write_read_stat_list_remove(agent_sock: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with await ExecConnection.over_unix(agent_sock) as conn:
            files = files_on(conn)
            target = f"{tmp_path}/a/b/c.bin"
            data = os.urandom(3 * 1024 * 1024 + 17)  # over a dozen exec windows
            await files.write(target, chunks_of(data), size=len(data), mode=0o640)
            assert Path(target).read_bytes() == data
            assert stat.S_IMODE(Path(target).stat().st_mode) == 0o640
            assert await read_all(files, target) == data
            info = await files.stat(target)
            assert (info.kind, info.size, info.mode, info.name) == (
                "file",
                len(data),
                0o640,
                "c.bin",
            )
            Path(f"{tmp_path}/a/b/link").symlink_to("/etc/hostname")
            (tmp_path / "a" / "b" / "name with\nnewline").write_text("x")
            listing, truncated = await files.list(f"{tmp_path}/a/b")
            assert not truncated
            assert [(f.name, f.kind) for f in listing] == [
                ("c.bin", "file"),
                ("link", "symlink"),
                ("name with\nnewline", "file"),
            ]
            assert listing[0].path == target
            _, truncated = await files.list(f"{tmp_path}/a/b", limit=2)
            assert truncated
            with pytest.raises(GuestPathRefused, match="not empty"):
                await files.remove(f"{tmp_path}/a")
            await files.remove(f"{tmp_path}/a", recursive=True)
            assert not (tmp_path / "a").exists()
            assert Path("/etc/hostname").exists()

    asyncio.run(scenario())


def test_errors_are_typed(agent_sock: Path, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"x" * 100)
    os.mkfifo(tmp_path / "fifo")

    async def scenario() -> None:
        async with await ExecConnection.over_unix(agent_sock) as conn:
            files = files_on(conn)
            with pytest.raises(GuestPathNotFound):
                await read_all(files, f"{tmp_path}/missing")
            with pytest.raises(IsADirectory):
                await read_all(files, f"{tmp_path}/dir")
            with pytest.raises(GuestPathRefused, match="regular"):
                await read_all(files, f"{tmp_path}/fifo")  # would block forever
            with pytest.raises(NotADirectory):
                await files.list(f"{tmp_path}/file")
            with pytest.raises(PayloadTooLarge):
                await read_all(files, f"{tmp_path}/file", max_bytes=99)
            assert await read_all(files, f"{tmp_path}/file", max_bytes=100) == b"x" * 100
            with pytest.raises(IsADirectory):
                await files.write(f"{tmp_path}/dir", b"", size=0)
            for bad in ("relative", f"{tmp_path}/../etc", f"{tmp_path}//x", f"{tmp_path}/x/"):
                with pytest.raises(InvalidArgument):
                    await files.stat(bad)
            with pytest.raises(InvalidArgument):
                await files.remove("/")

    asyncio.run(scenario())


def test_symlinks_are_not_followed_by_write_or_remove(agent_sock: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep")
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "link").symlink_to(outside / "secret")
    (inside / "dirlink").symlink_to(outside)

    async def scenario() -> None:
        async with await ExecConnection.over_unix(agent_sock) as conn:
            files = files_on(conn)
            with pytest.raises(GuestPathRefused, match="symlink"):
                await files.write(f"{inside}/link", b"pwned", size=5)
            assert (outside / "secret").read_text() == "keep"
            # remove takes the link itself, never what it points to
            await files.remove(f"{inside}/dirlink", recursive=True)
            assert (outside / "secret").read_text() == "keep"
            assert not (inside / "dirlink").is_symlink()
            # a recursive remove does not descend through a link inside the tree
            (inside / "sub").mkdir()
            (inside / "sub" / "out").symlink_to(outside)
            await files.remove(f"{inside}/sub", recursive=True)
            assert (outside / "secret").read_text() == "keep"

    asyncio.run(scenario())


def test_a_cut_or_lying_write_leaves_the_old_file(agent_sock: Path, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("old")

    async def scenario() -> None:
        async with await ExecConnection.over_unix(agent_sock) as conn:
            files = files_on(conn)
            with pytest.raises(InvalidArgument, match="short"):
                await files.write(str(target), b"new", size=10)
            with pytest.raises(InvalidArgument, match="more data"):
                await files.write(str(target), b"0123456789", size=3)
            assert target.read_text() == "old"
            assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no temporary left

    asyncio.run(scenario())


def test_directory_archive_round_trip(agent_sock: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_bytes(os.urandom(300_000))
    (src / "sub" / "deeper" / "b.bin").write_bytes(os.urandom(70_000))
    (src / "sub" / "exec.sh").write_text("#!/bin/sh\n")
    (src / "sub" / "exec.sh").chmod(0o755)
    (src / "link").symlink_to("sub/exec.sh")
    (src / "empty").mkdir()

    def digest(root: Path) -> dict[str, str]:
        out = {}
        for path in sorted(root.rglob("*")):
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                mode = stat.S_IMODE(path.stat().st_mode)
                out[rel] = f"{mode:o} " + hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
        return out

    async def scenario() -> None:
        async with await ExecConnection.over_unix(agent_sock) as conn:
            files = files_on(conn)
            # host -> guest: the host's writer, the agent's reader
            archive = tmp_path / "up.arc"
            with archive.open("wb") as out:
                pack_directory(src, out)
            data = archive.read_bytes()
            await files.unpack(f"{tmp_path}/guest", chunks_of(data))
            assert digest(tmp_path / "guest") == digest(src)
            # guest -> host: the agent's writer, the host's reader
            stream = await files.open_pack(f"{tmp_path}/guest", max_bytes=1 << 30)
            down = b"".join([c async for c in stream.chunks()])
            dest = tmp_path / "back"
            dest.mkdir()
            import io

            summary = extract_archive(io.BytesIO(down), dest, max_bytes=1 << 30)
            assert digest(dest) == digest(src)
            assert summary.files == 3 and summary.symlinks == 1

    asyncio.run(scenario())


def test_a_guest_that_lies_is_refused(short_dir: Path, tmp_path: Path) -> None:
    """A "python3" in the guest that answers with garbage, huge records or wrong sizes."""
    liar = tmp_path / "liar.py"
    liar.write_text(
        "import os, sys\n"
        "op, mode = sys.argv[2], os.environ.get('LIE', '')\n"
        "lie = open(sys.argv[1].replace('agent', 'lie')).read().strip()\n"
        "if lie == 'garbage': os.write(1, b'\\xff' * 5000)\n"
        "elif lie == 'huge-size': os.write(1, b'f 99999999999 644 0.000000000 x\\0' + b'y' * 10)\n"
        "elif lie == 'more-than-said': os.write(1, b'f 3 644 0.000000000 x\\0' + b'y' * 5000)\n"
        "elif lie == 'bad-names': os.write(1, b'f 1 644 0.000000000 ..\\0')\n"
        "elif lie == 'slash-name': os.write(1, b'f 1 644 0.000000000 a/b\\0')\n"
        "elif lie == 'dup-names': os.write(1, b'f 1 644 0.000000000 a\\0' * 2)\n"
        "elif lie == 'bad-mode': os.write(1, b'f 1 777777 0.000000000 a\\0')\n"
        "elif lie == 'exit-99': sys.exit(99)\n"
    )
    lie_file = tmp_path / "lie"
    path = short_dir / "exec.sock"

    async def attempt(lie: str, op: str) -> None:
        lie_file.write_text(lie)
        async with await ExecConnection.over_unix(path) as conn:
            files = GuestFiles(
                conn, agent_argv=[sys.executable, str(liar), str(tmp_path / "agent")]
            )
            if op == "read":
                await read_all(files, "/x", max_bytes=1000)
            elif op == "list":
                await files.list("/x")
            else:
                await files.stat("/x")

    with run_agent(sys.executable, "--exec-listen-unix", str(path)) as proc:
        wait_for_socket(path, proc)
        for lie, op, error in [
            ("garbage", "read", BadResponse),
            ("garbage", "list", BadResponse),
            ("huge-size", "read", PayloadTooLarge),
            ("more-than-said", "read", PayloadTooLarge),
            ("bad-names", "list", BadResponse),
            ("slash-name", "list", BadResponse),
            ("dup-names", "list", BadResponse),
            ("bad-mode", "stat", BadResponse),
            ("exit-99", "stat", CommandFailed),
        ]:
            with pytest.raises(error):
                asyncio.run(attempt(lie, op))


def test_a_guest_without_the_agent(agent_sock: Path) -> None:
    async def scenario() -> None:
        async with await ExecConnection.over_unix(agent_sock) as conn:
            files = GuestFiles(conn, agent_argv=["/nonexistent/python3", str(AGENT)])
            with pytest.raises(AgentUnavailable):
                await files.stat("/")

    asyncio.run(scenario())
