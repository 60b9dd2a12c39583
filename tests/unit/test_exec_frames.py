"""The exec channel's codec: the host's module and the agent's copy agree, and both are bounded.

``banger.guest.exec_frames`` (host) and the codec inside ``banger_agent.py`` (which must stay
one stdlib-only file) must write and read the same bytes; the decoders are fuzzed: they
never crash on anything but their own ``ProtocolError``/``FrameError`` and never hold more
than one frame plus one feed (ADVERSARIAL 100: megabyte lines, garbage, cut messages).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banger.guest import banger_agent as agent
from banger.guest import exec_frames as ef
from banger.guest.exec_frames import ExitStatus, Kind

KINDS = sorted(ef.KINDS)


def _agent_decode(chunks: list[bytes]) -> tuple[list[tuple[int, int, bytes]], bool]:
    buf = bytearray()
    frames: list[tuple[int, int, bytes]] = []
    for chunk in chunks:
        buf += chunk
        try:
            frames += agent.take_frames(buf)
        except agent.FrameError:
            return frames, True
        assert len(buf) < agent.X_HEADER.size + agent.X_MAX_PAYLOAD + len(chunk) + 1
    return frames, False


def _host_decode(chunks: list[bytes]) -> tuple[list[tuple[int, int, bytes]], bool]:
    decoder = ef.FrameDecoder()
    frames: list[tuple[int, int, bytes]] = []
    for chunk in chunks:
        try:
            frames += [(f.kind, f.channel, f.payload) for f in decoder.feed(chunk)]
        except ef.ProtocolError:
            return frames, True
        # Never more than one incomplete frame (and its header) left behind.
        assert len(decoder.buf) < ef.HEADER.size + ef.MAX_PAYLOAD
    return frames, False


def test_constants_agree() -> None:
    assert agent.X_HEADER.format == ef.HEADER.format
    assert agent.X_MAX_PAYLOAD == ef.MAX_PAYLOAD
    assert agent.X_MAGIC == ef.MAGIC
    assert agent.X_NONCE_BYTES == ef.NONCE_BYTES
    assert agent.X_WINDOW == ef.WINDOW
    assert agent.X_MAX_CHANNELS == ef.MAX_CHANNELS
    assert agent.X_SIGNALS == ef.SIGNALS
    assert agent.X_KINDS == ef.KINDS
    assert ef.hello_prefix() == agent.X_HELLO_PREFIX
    assert (agent.K_HELLO, agent.K_OPEN, agent.K_STDIN, agent.K_STDIN_EOF) == (1, 2, 3, 4)
    for name in ("SIGNAL", "CREDIT", "HELLO_ACK", "STARTED", "FAILED", "STDOUT", "STDERR"):
        assert getattr(agent, "K_" + name) == Kind[name]
    assert (agent.K_STDIN_CREDIT, agent.K_EXIT) == (Kind.STDIN_CREDIT, Kind.EXIT)
    for name in ("BAD_REQUEST", "NOT_FOUND", "PERMISSION", "NO_CWD", "TOO_MANY", "IN_USE"):
        assert getattr(agent, "F_" + name) == ef.Failure[name]
    assert agent.EXEC_VSOCK_PORT == 53 and agent.EXEC_PORT_NAME == "org.banger.exec"


@given(
    st.sampled_from(KINDS),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=300),
)
def test_both_encode_the_same_bytes(kind: int, channel: int, payload: bytes) -> None:
    assert agent.encode_frame(kind, channel, payload) == ef.encode(kind, channel, payload)


def test_oversized_payloads_are_refused_by_both() -> None:
    big = bytes(ef.MAX_PAYLOAD + 1)
    with pytest.raises(ValueError, match="payload"):
        ef.encode(Kind.STDOUT, 1, big)
    with pytest.raises(ValueError, match="payload"):
        agent.encode_frame(agent.K_STDOUT, 1, big)


frames_strategy = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 2**32 - 1), st.binary(max_size=200)),
    max_size=8,
)


@given(frames_strategy, st.integers(1, 50), st.integers(0, 5))
def test_both_decode_valid_streams_in_any_split(
    frames: list[tuple[int, int, bytes]], step: int, pads: int
) -> None:
    stream = b"".join(bytes(pads) + ef.encode(*f) for f in frames)
    chunks = [stream[i : i + step] for i in range(0, len(stream), step)]
    assert _host_decode(chunks) == (frames, False)
    assert _agent_decode(chunks) == (frames, False)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=400), max_size=12))
def test_both_decoders_agree_on_garbage_and_stay_bounded(chunks: list[bytes]) -> None:
    host = _host_decode(chunks)
    guest = _agent_decode(chunks)
    assert host == guest


def test_a_huge_length_is_refused_before_anything_is_buffered() -> None:
    header = ef.HEADER.pack(Kind.STDOUT, 1, 2**32 - 1)
    with pytest.raises(ef.ProtocolError, match="at most"):
        ef.FrameDecoder().feed(header)
    with pytest.raises(agent.FrameError):
        agent.take_frames(bytearray(header))
    with pytest.raises(ef.ProtocolError, match="unknown frame kind 9"):
        ef.FrameDecoder().feed(bytes([9]) + bytes(8))


@given(
    st.lists(st.text(min_size=1, max_size=20).filter(lambda s: "\0" not in s), min_size=1),
    st.text(max_size=20).filter(lambda s: "\0" not in s),
    st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda s: "\0" not in s and "=" not in s),
        st.text(max_size=8).filter(lambda s: "\0" not in s),
        max_size=5,
    ),
    st.integers(0, 2**32 - 1),
)
def test_open_round_trips_through_both(
    argv: list[str], cwd: str, env: dict[str, str], timeout_ms: int
) -> None:
    payload = ef.encode_open(argv, cwd=cwd, env=env, timeout_ms=timeout_ms)
    want_argv = [a.encode("utf-8", "surrogateescape") for a in argv]
    want_env = [f"{k}={v}".encode("utf-8", "surrogateescape") for k, v in env.items()]
    host = ef.decode_open(payload)
    assert (host.argv, host.cwd, host.env, host.timeout_ms) == (
        want_argv,
        cwd.encode("utf-8", "surrogateescape"),
        want_env,
        timeout_ms,
    )
    assert agent.decode_open(payload) == (host.argv, host.cwd, host.env, host.timeout_ms)


@given(st.binary(max_size=64))
def test_both_refuse_the_same_malformed_opens(payload: bytes) -> None:
    try:
        host = ef.decode_open(payload)
    except ValueError:
        with pytest.raises(ValueError):
            agent.decode_open(payload)
        return
    assert agent.decode_open(payload) == (host.argv, host.cwd, host.env, host.timeout_ms)


def test_open_refuses_what_cannot_be_encoded() -> None:
    for argv, env in (([], None), (["a\0b"], None), (["x"], {"A=B": "c"}), (["x"], {"": "c"})):
        with pytest.raises(ValueError):
            ef.encode_open(argv, env=env)
    with pytest.raises(ValueError, match="exceed"):
        ef.encode_open(["echo", "x" * ef.MAX_PAYLOAD])


def test_exit_status_both_ways() -> None:
    assert agent.encode_exit(3, False) == ef.encode_exit(ExitStatus(3, None, False))
    assert agent.encode_exit(-9, True) == ef.encode_exit(ExitStatus(None, 9, True))
    assert ef.decode_exit(agent.encode_exit(-2, False)) == ExitStatus(None, 2, False)
    assert ef.decode_exit(agent.encode_exit(0, False)) == ExitStatus(0, None, False)
    for bad in (b"", b"\x02\x00\x00", b"\x00\x00\x02", b"\x00\x00\x00\x00"):
        with pytest.raises(ValueError):
            ef.decode_exit(bad)


def test_prefixes() -> None:
    nonce = bytes(range(16))
    hello = ef.encode(Kind.HELLO, 0, ef.MAGIC + nonce)
    assert hello.startswith(ef.hello_prefix())
    ack = ef.encode(Kind.HELLO_ACK, 0, ef.MAGIC + nonce + b"1")
    assert ack.startswith(ef.ack_prefix(nonce))
    assert ef.HEADER.size + ef.MAX_PAYLOAD <= ef.SYNC_PADDING
