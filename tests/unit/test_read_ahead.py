"""The layer read-ahead thread (banger.oci.tarwalk._ReadAhead): bytes and digest exact,
errors raised where the reader reaches them, bounded lead, and a thread that stops."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from banger.oci import tarwalk


class Source:
    """``total`` bytes in reads of at most ``size``, then ``error`` if given."""

    def __init__(self, total: int, error: Exception | None = None) -> None:
        self.data = bytes(range(256)) * (total // 256)
        self.pos = 0
        self.error = error
        self.reads = 0

    def read(self, size: int, /) -> bytes:
        self.reads += 1
        out = self.data[self.pos : self.pos + size]
        self.pos += len(out)
        if not out and self.error is not None:
            raise self.error
        return out


def test_bytes_and_digest_are_the_sources() -> None:
    source = Source(3 * tarwalk._AHEAD_CHUNK_BYTES + 512 * 7)
    ahead = tarwalk._ReadAhead(source)
    try:
        got = bytearray()
        while chunk := ahead.read(10240):
            got += chunk
        assert ahead.read(10240) == b""  # stays at its end
        assert bytes(got) == source.data
        assert ahead.hexdigest() == hashlib.sha256(source.data).hexdigest()
    finally:
        ahead.close()


def test_an_error_comes_after_the_good_bytes_in_the_readers_thread() -> None:
    source = Source(2048, error=EOFError("cut short"))
    ahead = tarwalk._ReadAhead(source)
    try:
        assert ahead.read(4096) == source.data
        with pytest.raises(EOFError, match="cut short"):
            ahead.read(4096)
        assert ahead.read(1) == b""
    finally:
        ahead.close()


def test_the_lead_is_bounded_and_close_stops_a_thread_nobody_reads() -> None:
    source = Source(64 * tarwalk._AHEAD_CHUNK_BYTES)
    ahead = tarwalk._ReadAhead(source)
    time.sleep(0.3)
    # The queue holds _AHEAD_CHUNKS; one more is read and waits to be queued.
    assert source.reads <= tarwalk._AHEAD_CHUNKS + 1
    ahead.close()
    assert not [t for t in threading.enumerate() if t.name == "layer-read-ahead"]
