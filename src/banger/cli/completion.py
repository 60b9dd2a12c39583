"""Live names for shell completion: VMs, images and kernels from a running daemon (SPEC §1).

Owns: the ``shell_complete`` callbacks attached to name arguments. They ask the daemon
only if one is already running, with a short timeout, and turn every failure into "no
suggestions": a completion prints nothing on stderr, never starts a daemon, never
restarts one of another build, and never makes the shell wait long.
Must not: import the session or launcher paths that start a daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import click
from click.shell_completion import CompletionItem

from banger.client.facade import BangerClient
from banger.client.http import Client
from banger.host.paths import Layout

#: A completion that takes longer than this is worse than none.
TIMEOUT_S = 1.0
_Row = TypeVar("_Row")


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def complete_vm_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    vms = _fetch(lambda c: c.vms.list())
    return [CompletionItem(v.name, help=v.state) for v in vms if v.name.startswith(incomplete)]


def complete_image_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    return _names(_fetch(lambda c: c.images.list()), incomplete)


def complete_kernel_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    return _names(_fetch(lambda c: c.kernels.list()), incomplete)


def _names(rows: Sequence[_Named], incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(r.name) for r in rows if r.name.startswith(incomplete)]


def _fetch(ask: Callable[[BangerClient], Sequence[_Row]]) -> Sequence[_Row]:
    # Client never starts a daemon; with no socket it fails at connect(), immediately.
    try:
        return ask(BangerClient(Client(Layout.from_env().socket_path, timeout_s=TIMEOUT_S)))
    except Exception:  # noqa: BLE001 - a completion must never print a traceback
        return []
