"""Per-invocation state of the CLI: where things are, debug mode, the daemon client.

Owns: creating the typed client lazily, auto-starting the daemon on first use and saying
so on stderr. Must not: render command output.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from banger.host.paths import Layout

if TYPE_CHECKING:
    from banger.client.facade import BangerClient


@dataclass
class Session:
    layout: Layout
    debug: bool = False
    _client: BangerClient | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, *, debug: bool) -> Session:
        return cls(layout=Layout.from_env(), debug=debug)

    def client(self) -> BangerClient:
        """A client of a running daemon of this build, started if need be."""
        if self._client is None:
            from banger.client.launcher import (
                ensure_daemon,  # not needed for --help or usage errors
            )

            self._client = ensure_daemon(self.layout, announce=_announce)
        return self._client


def _announce(line: str) -> None:
    sys.stderr.write(f"banger: {line}\n")
    sys.stderr.flush()
