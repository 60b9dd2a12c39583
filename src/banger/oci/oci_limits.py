"""Caps of layer flattening and the errors a layer earns by breaking a rule (ADVERSARIAL A).

Owns: ``Limits`` (every cap the flattener enforces, with defaults above what real images
need), the shared byte and entry budgets that span all layers of one image, and the two
error shapes a bad layer produces: "not a valid layer" (malformed or malicious content)
and "exceeds a limit" (bombs, item 27). Each names the layer and, when there is one, the
entry, so a user can see which image and which path was refused.
Must not: do I/O or know how a layer is read; callers say what went wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from banger.errors import InvalidArgument, InvalidLayer, PayloadTooLarge

GIB = 1 << 30
MIB = 1 << 20
#: ext4 (and Linux) refuse longer names; checked before any syscall sees them.
MAX_NAME_BYTES = 255

_INVALID_HINT = (
    "the image is malformed or was built to escape its root; banger refuses it rather "
    "than guess (docs/explanation/flattening.md lists the rules)"
)
_LIMIT_HINT = (
    "the layer is larger than banger accepts (a decompression bomb looks like this); "
    "if the image is genuine, report it with the image reference"
)


@dataclass(frozen=True)
class Limits:
    """Caps of one flattening; ``Limits()`` fits every image seen in practice.

    ``max_total_bytes`` counts decompressed tar bytes over all layers (headers and
    padding too, so a stream of empty entries is counted). ``max_entries`` counts tar
    entries over all layers and so bounds the inodes created (texlive-full, among the
    largest public images, has about 200 000 files). ``max_header_bytes`` bounds one
    entry's headers (PAX records, GNU long names), which tarfile reads into memory.
    """

    max_total_bytes: int = 32 * GIB
    max_member_bytes: int = 16 * GIB
    max_entries: int = 500_000
    max_path_bytes: int = 4095
    max_link_depth: int = 40
    max_header_bytes: int = 1 * MIB

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidArgument(f"Limits.{name} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class LayerLabel:
    """How errors name a layer: its position (oldest is 1) and digest or file name."""

    index: int
    name: str

    def __str__(self) -> str:
        return f"layer {self.index} ({self.name})"


def entry_text(entry: str | bytes) -> str:
    """An entry name as an error shows it: quoted, control characters escaped, bounded."""
    if isinstance(entry, bytes):
        entry = entry.decode("utf-8", "backslashreplace")
    text = repr(entry)
    return text if len(text) <= 200 else text[:197] + "…'"


def invalid_layer(
    layer: LayerLabel, why: str, *, entry: str | bytes | None = None
) -> InvalidArgument:
    """The error for a layer whose content breaks a rule: nothing of it is kept."""
    where = f" at entry {entry_text(entry)}" if entry is not None else ""
    return InvalidLayer(f"{layer} is not a valid image layer{where}: {why}", hint=_INVALID_HINT)


def over_limit(layer: LayerLabel, why: str, *, entry: str | bytes | None = None) -> PayloadTooLarge:
    where = f" at entry {entry_text(entry)}" if entry is not None else ""
    return PayloadTooLarge(f"{layer} exceeds a flattening limit{where}: {why}", hint=_LIMIT_HINT)


class Budget:
    """A count that may not pass ``limit`` over all layers of one image."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what
        self.used = 0

    def take(self, amount: int, layer: LayerLabel, *, entry: str | bytes | None = None) -> None:
        self.used += amount
        if self.used > self.limit:
            raise over_limit(layer, f"more than {self.limit} {self.what} in total", entry=entry)
