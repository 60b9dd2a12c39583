"""The wire protocol between the owner daemon and ``banger-helper`` (SPEC §9).

Owns: the verbs and the argument names each one takes, the framing (a 4-byte big-endian
length, then one UTF-8 JSON object), the size limits, reading one frame under a deadline,
strict JSON decoding, and the shapes of requests and replies. Both ends import it: the
helper (``banger.helper``) and its client (``banger.net.helper_client``).

Must not: act on a request or trust one. Decoding checks only the shape (an object, known
verb, exactly the expected argument names); the helper re-validates every value
(ADVERSARIAL 127). Stdlib only: the helper is a root program with few dependencies.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from banger.errors import BangerError, InvalidRequest, PayloadTooLarge, Timeout

#: Bumped when a verb's arguments or reply change; ``hello`` reports it.
PROTOCOL_VERSION = 2  # 2: open-tap
#: Every request fits easily: the largest is create-tap with three short values.
MAX_REQUEST_BYTES = 4096
#: list-taps is the largest reply (a few hundred names at most).
MAX_REPLY_BYTES = 1 << 20
_HEADER = struct.Struct(">I")
_FD = struct.Struct("i")


class Verb(StrEnum):
    HELLO = "hello"
    ENSURE_BRIDGE = "ensure-bridge"
    CREATE_TAP = "create-tap"
    DELETE_TAP = "delete-tap"
    LIST_TAPS = "list-taps"
    NAT_ON = "nat-on"
    NAT_OFF = "nat-off"
    IP_FORWARD = "ip-forward"
    ROUTE_VM_DOMAIN = "route-vm-domain"
    OPEN_TAP = "open-tap"


#: The argument names of each verb: a request must carry exactly these.
VERB_ARGS: dict[Verb, frozenset[str]] = {
    Verb.HELLO: frozenset(),
    Verb.ENSURE_BRIDGE: frozenset({"name", "address"}),
    Verb.CREATE_TAP: frozenset({"name", "bridge", "owner_uid"}),
    Verb.DELETE_TAP: frozenset({"name"}),
    Verb.LIST_TAPS: frozenset({"owner_uid"}),
    Verb.NAT_ON: frozenset({"bridge", "cidr"}),
    Verb.NAT_OFF: frozenset(),
    Verb.IP_FORWARD: frozenset(),
    Verb.ROUTE_VM_DOMAIN: frozenset({"bridge", "dns_port"}),
    Verb.OPEN_TAP: frozenset({"name"}),
}


@dataclass(frozen=True)
class PassFd:
    """A verb's result that is a descriptor: sent with the (null-result) reply as
    SCM_RIGHTS, then closed by the sender."""

    fd: int


def encode_frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    return _HEADER.pack(len(body)) + body


def request(verb: Verb, args: dict[str, Any]) -> dict[str, Any]:
    return {"verb": verb.value, "args": args}


def ok_reply(result: object) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error_reply(err: BangerError) -> dict[str, Any]:
    return {"ok": False, **err.to_payload()}


def read_frame(sock: socket.socket, *, limit: int, deadline: float) -> bytes:
    """One frame's body, refusing a length over ``limit`` before reading it.

    ``deadline`` (``time.monotonic()``) bounds the whole frame, not each recv, so a peer
    that trickles one byte a second is cut off all the same.
    """
    header = _read_exactly(sock, _HEADER.size, deadline)
    (length,) = _HEADER.unpack(header)
    if length > limit:
        raise PayloadTooLarge(f"a {length}-byte message is over the {limit}-byte limit")
    return _read_exactly(sock, length, deadline)


def read_frame_and_fd(sock: socket.socket, *, limit: int, deadline: float) -> tuple[bytes, int]:
    """A reply frame that carries one file descriptor (SCM_RIGHTS, ``open-tap``): the
    body and the descriptor (close-on-exec), or -1 when none came. Extra descriptors are
    closed, so that a confused peer cannot leak them into this process."""
    data = b""
    fd = -1
    try:
        while len(data) < _HEADER.size or len(data) < _HEADER.size + _length(data, limit):
            data, fd = _more(sock, data, fd, deadline)
    except BaseException:
        if fd != -1:
            os.close(fd)
        raise
    return data[_HEADER.size : _HEADER.size + _length(data, limit)], fd


def _more(sock: socket.socket, data: bytes, fd: int, deadline: float) -> tuple[bytes, int]:
    """One more chunk of a frame, keeping the first descriptor that came with any."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Timeout("the message did not arrive in time")
    sock.settimeout(remaining)
    try:
        # Not socket.recv_fds: before Python 3.12 it drops its flags argument.
        chunk, ancillary, _, _ = sock.recvmsg(
            65536, socket.CMSG_SPACE(4 * _FD.size), socket.MSG_CMSG_CLOEXEC
        )
    except TimeoutError:
        raise Timeout("the message did not arrive in time") from None
    fds = _received_fds(ancillary)
    kept = fd
    for extra in fds[1:] if fd == -1 else fds:
        os.close(extra)
    if fd == -1 and fds:
        kept = fds[0]
    if not chunk:
        if kept != fd:  # the caller closes the one it already had
            os.close(kept)
        raise InvalidRequest("connection closed before the whole message arrived")
    return data + chunk, kept


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            whole = len(data) - len(data) % _FD.size
            fds.extend(n for (n,) in _FD.iter_unpack(data[:whole]))
    return fds


def _length(data: bytes, limit: int) -> int:
    (length,) = _HEADER.unpack(data[: _HEADER.size])
    if length > limit:
        raise PayloadTooLarge(f"a {length}-byte message is over the {limit}-byte limit")
    return int(length)


def _read_exactly(sock: socket.socket, count: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    missing = count
    while missing:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout("the message did not arrive in time")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(min(missing, 65536))
        except TimeoutError:
            raise Timeout("the message did not arrive in time") from None
        if not chunk:
            raise InvalidRequest(f"connection closed with {missing} of {count} bytes missing")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def decode_object(data: bytes) -> dict[str, Any]:
    """A JSON object, strictly: UTF-8, no duplicate keys, no NaN/Infinity."""
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(f"not a JSON message: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"a message must be a JSON object, not {type(value).__name__}")
    return value


def parse_request(message: dict[str, Any]) -> tuple[Verb, dict[str, Any]]:
    """The verb and arguments of a request, with exactly the argument names it takes."""
    if set(message) != {"verb", "args"}:
        raise InvalidRequest("a request has exactly the keys 'verb' and 'args'")
    raw_verb, args = message["verb"], message["args"]
    try:
        verb = Verb(raw_verb)
    except ValueError:
        known = ", ".join(v.value for v in Verb)
        raise InvalidRequest(f"unknown verb {str(raw_verb)[:40]!r} (known: {known})") from None
    if not isinstance(args, dict):
        raise InvalidRequest(f"{verb}: 'args' must be an object")
    expected = VERB_ARGS[verb]
    if set(args) != expected:
        unknown = sorted(set(args) - expected)
        missing = sorted(expected - set(args))
        raise InvalidRequest(
            f"{verb}: wrong arguments (unknown: {[k[:40] for k in unknown]}, missing: {missing})"
        )
    return verb, args


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")
