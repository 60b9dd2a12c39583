"""A stand-in for ``BangerClient`` for the SDK and MCP unit tests: VMs in a dict, exec
answered by a function of the argv, files in a dict; every call recorded.

The SDK takes its client through ``client=`` (and the MCP ``ToolBox`` through its
``connect``), so no test patches anything.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from banger.client.facade import Progress
from banger.errors import InvalidArgument, NotFound, VmNotFound
from banger.model.api_types import CreateVmRequest, PortsReply, SshInfo, VmInfo
from banger.model.record import as_dict


@dataclass(frozen=True)
class FakeExecResult:
    exit_code: int | None
    signal: int | None = None
    timed_out: bool = False


@dataclass
class Ran:
    """What one exec was asked to do."""

    vm: str
    argv: list[str]
    cwd: str | None
    env: Mapping[str, str] | None
    timeout_s: float | None
    stdin: bytes | None


#: argv -> (exit result, stdout chunks, stderr chunks)
Program = Callable[[Ran], tuple[FakeExecResult, list[bytes], list[bytes]]]


def echo_program(ran: Ran) -> tuple[FakeExecResult, list[bytes], list[bytes]]:
    """``sh -c 'exit N'`` exits N; anything else prints its argv and stdin and exits 0."""
    line = ran.argv[-1]
    if ran.argv[:2] == ["sh", "-c"] and line.startswith("exit "):
        return FakeExecResult(int(line.split()[1])), [], [b"bye\n"]
    return FakeExecResult(0), [" ".join(ran.argv).encode(), ran.stdin or b""], []


class FakeSession:
    def __init__(self, result: FakeExecResult, out: list[bytes], err: list[bytes]) -> None:
        self._result, self._out, self._err = result, out, err
        self.stdin = bytearray()
        self.signals: list[int] = []
        self.closed = False

    def events(self) -> Iterator[tuple[str, bytes]]:
        for chunk in self._out:
            yield "stdout", chunk
        for chunk in self._err:
            yield "stderr", chunk

    def write(self, data: bytes) -> None:
        self.stdin += data

    def close_stdin(self) -> None:
        pass

    def signal(self, sig: int) -> None:
        self.signals.append(sig)

    def wait(self) -> FakeExecResult:
        return self._result

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeVms:
    program: Program = echo_program
    vms: dict[str, VmInfo] = field(default_factory=dict)
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    ran: list[Ran] = field(default_factory=list)
    created: list[CreateVmRequest] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    sessions: list[FakeSession] = field(default_factory=list)
    #: Raised by ``create`` after its first event, as an interrupted create would.
    create_raises: BaseException | None = None
    #: Raised by ``create`` before any event: a refusal (nothing made) or, with
    #: ``create_made_it``, an interruption while the daemon goes on making the VM.
    create_refuses: BaseException | None = None
    create_made_it: bool = False

    def _vm(self, name: str) -> VmInfo:
        if name not in self.vms:
            raise VmNotFound(f"no VM named {name!r}")
        return self.vms[name]

    def create(self, request: CreateVmRequest) -> Progress[VmInfo]:
        self.created.append(request)
        assert request.name is not None
        if self.create_refuses is not None and not self.create_made_it:
            raise self.create_refuses
        info = VmInfo(
            name=request.name,
            image_id=1,
            state="running",
            vcpu=request.vcpu or 2,
            memory_mib=request.memory_mib or 1024,
            disk_size_bytes=1 << 30,
            created_at="now",
            updated_at="now",
            nat=request.nat,
            ip="172.30.0.2",
        )
        self.vms[request.name] = info
        if self.create_refuses is not None:
            raise self.create_refuses

        def events() -> Iterator[dict[str, Any]]:
            yield {"type": "stage", "stage": "reserve", "state": "ok"}
            if self.create_raises is not None:
                raise self.create_raises
            yield {"type": "result", "data": as_dict(info)}

        return Progress(events(), VmInfo)

    def get(self, name: str) -> VmInfo:
        return self._vm(name)

    def list(self) -> list[VmInfo]:
        return list(self.vms.values())

    def delete(self, name: str, *, force: bool = False) -> None:
        self._vm(name)
        assert force
        del self.vms[name]
        self.deleted.append(name)

    def ports(self, name: str) -> PortsReply:
        self._vm(name)
        return PortsReply(vm=name, truncated=False, ports=[{"proto": "tcp", "port": 8000}])

    def ssh_info(self, name: str) -> SshInfo:
        vm = self._vm(name)
        return SshInfo(
            name=name, state=vm.state, ip=vm.ip, user="root", key="/k", known_hosts="/kh"
        )

    def exec(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        stdin: bytes | IO[bytes] | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
    ) -> FakeExecResult:
        self._vm(name)
        data = stdin.read() if isinstance(stdin, io.IOBase) else stdin
        assert data is None or isinstance(data, bytes)
        ran = Ran(name, list(argv), cwd, env, timeout_s, data)
        self.ran.append(ran)
        result, out, err = self.program(ran)
        for chunk in out:
            assert on_stdout is not None
            on_stdout(chunk)
        for chunk in err:
            assert on_stderr is not None
            on_stderr(chunk)
        return result

    def exec_start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> FakeSession:
        self._vm(name)
        ran = Ran(name, list(argv), cwd, env, timeout_s, None)
        self.ran.append(ran)
        session = FakeSession(*self.program(ran))
        self.sessions.append(session)
        return session

    def _path(self, path: str) -> str:
        if not path.startswith("/"):
            raise InvalidArgument(f"guest path {path!r} is not absolute")
        return path

    def read_file(self, name: str, path: str, *, max_bytes: int | None = None) -> bytes:
        self._vm(name)
        try:
            return self.files[name, self._path(path)]
        except KeyError:
            raise NotFound(f"{path}: no such file in the guest") from None

    def read_file_to(
        self, name: str, path: str, dest: IO[bytes], *, max_bytes: int | None = None
    ) -> int:
        data = self.read_file(name, path)
        for i in range(0, len(data), 1000):
            dest.write(data[i : i + 1000])
        return len(data)

    def write_file(
        self,
        name: str,
        path: str,
        data: bytes | IO[bytes],
        *,
        mode: int = 0o644,
        parents: bool = True,
    ) -> None:
        self._vm(name)
        assert isinstance(data, bytes)
        self.files[name, self._path(path)] = data

    def list_files(self, name: str, path: str) -> list[dict[str, Any]]:
        self._vm(name)
        prefix = self._path(path).rstrip("/") + "/"
        return [
            {"name": p[len(prefix) :], "path": p, "kind": "file", "size": len(d)}
            for (vm, p), d in sorted(self.files.items())
            if vm == name and p.startswith(prefix)
        ]

    def remove_file(self, name: str, path: str, *, recursive: bool = False) -> None:
        self._vm(name)
        self.files.pop((name, self._path(path)), None)


class FakeClient:
    def __init__(self, program: Program = echo_program) -> None:
        self.vms = FakeVms(program)
