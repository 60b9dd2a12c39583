"""Content digests of the OCI image spec, parsed strictly (ADVERSARIAL 33).

Owns: the ``Digest`` value (only ``sha256`` with 64 lowercase hex digits is accepted:
no uppercase, no other length, no other algorithm), hashing bytes, and an incremental
``Hasher`` that counts bytes while it hashes.
Must not: do I/O. A digest is also a file name in the blob cache, so anything but the
exact shape above must never get through ``parse_digest``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from banger.errors import InvalidArgument
from banger.model.units import describe_input

ALGORITHM = "sha256"
DIGEST_RULE = "sha256: followed by exactly 64 lowercase hex digits"
_HEX = re.compile(r"[0-9a-f]{64}", re.ASCII)


@dataclass(frozen=True, order=True)
class Digest:
    """A ``sha256:<hex>`` content address."""

    hex: str

    def __post_init__(self) -> None:
        if _HEX.fullmatch(self.hex) is None:
            raise InvalidArgument(
                f"invalid digest hex {describe_input(self.hex)}", hint=f"use {DIGEST_RULE}"
            )

    @property
    def algorithm(self) -> str:
        return ALGORITHM

    @property
    def short(self) -> str:
        """The first 12 hex digits, for progress lines."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{ALGORITHM}:{self.hex}"


def parse_digest(text: object, *, what: str = "digest") -> Digest:
    """``text`` as a Digest; ``InvalidArgument`` naming the rule it breaks otherwise."""
    if not isinstance(text, str):
        raise InvalidArgument(f"{what} must be a string, not {describe_input(text)}")
    algorithm, sep, hex_part = text.partition(":")
    if not sep:
        raise _invalid(what, text, "it has no algorithm prefix")
    if algorithm != ALGORITHM:
        reason = "algorithms are lowercase" if algorithm.lower() == ALGORITHM else ""
        raise _invalid(what, text, reason or f"algorithm {algorithm[:20]!r} is not supported")
    if len(hex_part) != 64:
        raise _invalid(what, text, f"{len(hex_part)} hex digits instead of 64")
    if _HEX.fullmatch(hex_part) is None:
        reason = "hex digits must be lowercase" if _HEX.fullmatch(hex_part.lower()) else ""
        raise _invalid(what, text, reason or "it contains characters that are not hex digits")
    return Digest(hex_part)


def _invalid(what: str, text: str, reason: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid {what} {describe_input(text, limit=80)}: {reason}", hint=f"use {DIGEST_RULE}"
    )


def digest_of(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


class Hasher:
    """Feeds bytes to sha256 and counts them, for verifying a stream as it arrives."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def digest(self) -> Digest:
        return Digest(self._hash.hexdigest())
