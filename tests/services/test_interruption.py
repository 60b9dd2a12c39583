"""A client that goes away from a create's progress stream (issue 14 item 6).

Starlette cancels (or closes) the stream's iterator when the client disconnects; these
tests do the same to the service's stream. Without ``delete_on_disconnect`` the create
runs to its end; with it (``vm run --rm``) no VM is left, even mid-boot.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from banger.host import procinfo
from banger.model.records import VmState
from banger.services import operations
from banger.services.vm_create import CreateOrder
from tests.services.conftest import DISK_BYTES, IMAGE, World


async def _stream(world: World, **order: Any) -> AsyncIterator[dict[str, Any]]:
    order.setdefault("image", IMAGE)
    order.setdefault("disk_size_bytes", DISK_BYTES)
    request = await world.vms.validate(CreateOrder(**order))
    return world.vms.create(request)


async def _read_until(events: AsyncIterator[dict[str, Any]], stage: str, state: str) -> None:
    async for event in events:
        if event.get("stage") == stage and event.get("state") == state:
            return
    raise AssertionError(f"the stream ended before {stage} {state}")


async def _hang_up(events: AsyncIterator[dict[str, Any]]) -> None:
    """What the HTTP layer does when the client disconnects."""
    close = getattr(events, "aclose")  # noqa: B009 - an async generator's, not in the type
    await close()


async def _until(predicate: Any, *, within_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await predicate():
        assert loop.time() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)


async def _ended() -> bool:
    return operations.running() == 0


def test_rm_client_gone_mid_boot_leaves_no_vm_and_no_vmm(world: World) -> None:
    async def scenario() -> None:
        world.vmm.script.ready = False  # the guest never answers: wait-ready runs on
        events = await _stream(world, name="gone", boot_timeout_s=120, delete_on_disconnect=True)
        await _read_until(events, "wait-ready", "running")
        handle = world.vmm.handles[-1]
        assert procinfo.is_running(handle.process)
        await _hang_up(events)

        # Well before the 120 s boot timeout: the wait for the guest was stopped.
        await _until(_ended, within_s=10)
        assert await world.rows() == []
        assert not procinfo.is_running(handle.process)
        assert world.ops.taps == {}
        assert not (world.ctx.layout.vms_dir / "gone").exists()

    asyncio.run(scenario())


def test_rm_client_gone_before_reserve_leaves_no_vm(world: World) -> None:
    async def scenario() -> None:
        events = await _stream(world, name="early", delete_on_disconnect=True)
        await _read_until(events, "reserve", "running")
        await _hang_up(events)
        # The create goes on with its reservation and disks, then stops before booting
        # and removes the VM.
        await _until(_ended, within_s=20)
        assert await world.rows() == [] and world.vmm.handles == []
        assert world.ops.taps == {}

    asyncio.run(scenario())


def test_without_rm_a_create_whose_client_went_away_finishes(world: World) -> None:
    async def scenario() -> None:
        events = await _stream(world, name="kept", boot_timeout_s=30)
        await _read_until(events, "reserve", "ok")
        await _hang_up(events)

        async def running() -> bool:
            rows = await world.rows()
            return bool(rows) and rows[0].state is VmState.RUNNING

        await _until(running, within_s=20)
        assert [v.name for v in await world.rows()] == ["kept"]
        with contextlib.suppress(Exception):
            await world.vms.delete("kept", force=True)

    asyncio.run(scenario())


def test_rm_client_that_read_the_result_keeps_its_vm(world: World) -> None:
    """The result was delivered: deleting it is now the client's job (it does, after
    the shell or command), so the daemon leaves it alone."""

    async def scenario() -> None:
        events = await _stream(world, name="done", delete_on_disconnect=True)
        async for event in events:
            if event["type"] == "result":
                break
        await _hang_up(events)
        await asyncio.sleep(0.3)
        assert [v.name for v in await world.rows()] == ["done"]
        assert (await world.row("done")).state is VmState.RUNNING

    asyncio.run(scenario())
