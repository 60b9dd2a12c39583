"""Read-only views of VM rows, and the JSON form of any record.

Owns: fetching records through ``banger.state.repo`` and turning them into JSON-able
dicts. Must not: change anything (the lifecycle services do that).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from enum import Enum
from typing import Any

from banger.services.context import DaemonContext
from banger.state import repo


def record_dict(record: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        if f.metadata.get("internal"):
            continue
        value = getattr(record, f.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Enum):
            value = value.value
        out[f.name] = value
    return out


async def list_vms(ctx: DaemonContext) -> list[dict[str, Any]]:
    """The user's VMs: warm-pool VMs are not theirs until claimed (``pool status``)."""
    return [record_dict(r) for r in await ctx.db.run(repo.list_vms, pool=False)]


async def get_vm(ctx: DaemonContext, name: str) -> dict[str, Any]:
    return record_dict(await ctx.db.run(repo.get_vm, name))
