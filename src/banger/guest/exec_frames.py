"""The exec channel's wire format: frames, their payloads, and a bounded decoder (pure).

A frame is ``[kind u8][channel u32 BE][length u32 BE][payload]``; a lone zero byte at a
frame boundary is padding (kind 0 has no header), which lets a host resynchronise the
serial stream (docs/explanation/guest-exec.md). The guest agent (``banger_agent.py``,
one stdlib-only file) carries its own copy of this codec; ``tests/unit/test_exec_frames.py``
checks that both write and read the same bytes.

Owns: frame kinds, limits, encoding and decoding frames and the OPEN / EXIT / FAILED
payloads. Must not: do I/O, or hold more than one frame plus one read of bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

HEADER = struct.Struct(">BII")
#: The largest payload in either direction (an OPEN, a chunk of stdin or output).
MAX_PAYLOAD = 64 * 1024
#: What the host sends before its HELLO: more zeros than any cut frame can swallow.
SYNC_PADDING = HEADER.size + MAX_PAYLOAD
MAGIC = b"BANGER-EXEC/1"
NONCE_BYTES = 16
#: Output (stdout + stderr) a channel may send before the host grants more; the same
#: for stdin the other way.
WINDOW = 256 * 1024
MAX_CHANNELS = 64
MAX_ARGS = 4096
MAX_ENV = 1024
MAX_MESSAGE = 1024
#: ``vm exec``'s link between the daemon and a client (after HTTP 101) reuses these
#: frames and credits on this one channel: STDIN, STDIN_EOF, SIGNAL and CREDIT from the
#: client; STDOUT, STDERR, STDIN_CREDIT and EXIT from the daemon, and FAILED carrying a
#: banger error as JSON (``{"error": {...}}``) instead of a reason byte.
LINK_CHANNEL = 1
#: Signals the host may forward to a command's process group.
SIGNALS = frozenset({1, 2, 3, 9, 15})  # HUP INT QUIT KILL TERM


class Kind(IntEnum):
    PAD = 0
    # host -> guest
    HELLO = 1
    OPEN = 2
    STDIN = 3
    STDIN_EOF = 4
    SIGNAL = 5
    CREDIT = 6
    # guest -> host
    HELLO_ACK = 0x81
    STARTED = 0x82
    FAILED = 0x83
    STDOUT = 0x84
    STDERR = 0x85
    STDIN_CREDIT = 0x86
    EXIT = 0x87


KINDS = frozenset(int(k) for k in Kind) - {Kind.PAD}


class Failure(IntEnum):
    """Why an OPEN did not start a process (FAILED's first byte)."""

    BAD_REQUEST = 1
    NOT_FOUND = 2
    PERMISSION = 3
    NO_CWD = 4
    TOO_MANY = 5
    IN_USE = 6
    OTHER = 7


class ProtocolError(ValueError):
    """The peer broke the framing: the stream cannot be trusted past this point."""


@dataclass(frozen=True)
class Frame:
    kind: int
    channel: int
    payload: bytes


def encode(kind: int, channel: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes (at most {MAX_PAYLOAD})")
    return HEADER.pack(kind, channel, len(payload)) + payload


def hello_prefix() -> bytes:
    """The bytes every HELLO starts with: what a guest hunts for in a confused stream."""
    return HEADER.pack(Kind.HELLO, 0, len(MAGIC) + NONCE_BYTES) + MAGIC


def ack_prefix(nonce: bytes) -> bytes:
    """The bytes the guest's answer to a HELLO starts with: what the host hunts for."""
    return HEADER.pack(Kind.HELLO_ACK, 0, len(MAGIC) + NONCE_BYTES + 1) + MAGIC + nonce


class FrameDecoder:
    """Frames out of a byte stream; holds at most one frame's bytes plus one feed."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Append ``data`` and take every complete frame; ProtocolError on a bad one."""
        self.buf += data
        frames: list[Frame] = []
        pos = 0
        buf = self.buf
        try:
            while True:
                while pos < len(buf) and buf[pos] == 0:
                    pos += 1
                if len(buf) - pos < HEADER.size:
                    break
                kind, channel, length = HEADER.unpack_from(buf, pos)
                if kind not in KINDS:
                    raise ProtocolError(f"unknown frame kind {kind}")
                if length > self.max_payload:
                    raise ProtocolError(f"frame of {length} bytes (at most {self.max_payload})")
                end = pos + HEADER.size + length
                if len(buf) < end:
                    break
                frames.append(Frame(kind, channel, bytes(buf[pos + HEADER.size : end])))
                pos = end
        except ProtocolError:
            del buf[:]
            raise
        del buf[:pos]
        return frames


# -- payloads -------------------------------------------------------------------------------

_OPEN_HEAD = struct.Struct(">IHH")


def encode_open(
    argv: list[str], *, cwd: str = "", env: dict[str, str] | None = None, timeout_ms: int = 0
) -> bytes:
    """OPEN: ``[timeout_ms u32][argc u16][envc u16]`` then cwd, argv, ``K=V`` NUL-separated."""
    pairs = [f"{k}={v}" for k, v in (env or {}).items()]
    if not argv or len(argv) > MAX_ARGS or len(pairs) > MAX_ENV:
        raise ValueError(f"1 to {MAX_ARGS} arguments and at most {MAX_ENV} variables")
    if any(not k or "=" in k for k in (env or {})):
        raise ValueError("an environment variable name is empty or holds '='")
    if not 0 <= timeout_ms < 2**32:
        raise ValueError("timeout out of range")
    fields = [cwd, *argv, *pairs]
    if any("\0" in f for f in fields):
        raise ValueError("arguments, variables and the directory cannot hold NUL")
    payload = _OPEN_HEAD.pack(timeout_ms, len(argv), len(pairs)) + b"\0".join(
        f.encode("utf-8", "surrogateescape") for f in fields
    )
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"command, directory and environment exceed {MAX_PAYLOAD} bytes")
    return payload


@dataclass(frozen=True)
class OpenRequest:
    argv: list[bytes]
    cwd: bytes
    env: list[bytes]
    timeout_ms: int


def decode_open(payload: bytes) -> OpenRequest:
    if len(payload) < _OPEN_HEAD.size:
        raise ValueError("OPEN too short")
    timeout_ms, argc, envc = _OPEN_HEAD.unpack_from(payload)
    fields = payload[_OPEN_HEAD.size :].split(b"\0")
    if argc < 1 or argc > MAX_ARGS or envc > MAX_ENV or len(fields) != 1 + argc + envc:
        raise ValueError("OPEN field counts do not match")
    env = fields[1 + argc :]
    if any(b"=" not in e or e.startswith(b"=") for e in env):
        raise ValueError("an environment entry is not NAME=VALUE")
    if not fields[1]:
        raise ValueError("empty program name")
    return OpenRequest(fields[1 : 1 + argc], fields[0], env, timeout_ms)


@dataclass(frozen=True)
class ExitStatus:
    #: The exit code, or None when a signal ended the process.
    code: int | None
    signal: int | None
    timed_out: bool


def encode_exit(status: ExitStatus) -> bytes:
    if status.signal is not None:
        return bytes([1, status.signal & 0xFF, int(status.timed_out)])
    return bytes([0, (status.code or 0) & 0xFF, int(status.timed_out)])


def decode_exit(payload: bytes) -> ExitStatus:
    if len(payload) != 3 or payload[0] > 1 or payload[2] > 1:
        raise ValueError("malformed EXIT")
    if payload[0] == 1:
        return ExitStatus(None, payload[1], bool(payload[2]))
    return ExitStatus(payload[1], None, bool(payload[2]))


def decode_u32(payload: bytes) -> int:
    if len(payload) != 4:
        raise ValueError("not a u32")
    return int.from_bytes(payload, "big")


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")
