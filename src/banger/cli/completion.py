"""Live names for shell completion: VMs, images and kernels from a running daemon (SPEC §1).

Owns: the ``shell_complete`` callbacks attached to name arguments. They ask the daemon
only if one is already running, with a short timeout, and turn every failure into "no
suggestions": a completion prints nothing on stderr, never starts a daemon, never
restarts one of another build, and never makes the shell wait long.
Must not: import the session or launcher paths that start a daemon.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem

from banger.cli.client import Client
from banger.host.paths import Layout

#: A completion that takes longer than this is worse than none.
TIMEOUT_S = 1.0


def complete_vm_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    return _complete("/vms", incomplete, help_key="state")


def complete_image_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    return _complete("/images", incomplete)


def complete_kernel_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    return _complete("/kernels", incomplete)


def _complete(path: str, incomplete: str, *, help_key: str | None = None) -> list[CompletionItem]:
    rows = _fetch(path)
    items = []
    for row in rows:
        name = row.get("name") if isinstance(row, dict) else None
        if isinstance(name, str) and name.startswith(incomplete):
            help_text = row.get(help_key) if help_key else None
            items.append(
                CompletionItem(name, help=help_text if isinstance(help_text, str) else None)
            )
    return items


def _fetch(path: str) -> list[Any]:
    # Client never starts a daemon; with no socket it fails at connect(), immediately.
    try:
        client = Client(Layout.from_env().socket_path, timeout_s=TIMEOUT_S)
        rows = client.get(path)
    except Exception:  # noqa: BLE001 - a completion must never print a traceback
        return []
    return rows if isinstance(rows, list) else []
