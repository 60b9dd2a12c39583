"""``tcg_aslr``: a guest under software emulation boots with ``norandmaps`` (and a
reliable TSC) unless the config keeps ASLR on; docs/explanation/emulated-guests.md."""

from __future__ import annotations

import asyncio

from banger.config.settings import TcgAslrChoice
from banger.vmm.base import Accel
from tests.services.conftest import World


def _cmdline_of_new_vm(world: World, name: str) -> list[str]:
    async def scenario() -> list[str]:
        got = await world.create(name=name)
        assert got.error is None, got.error
        spec = world.vmm.launched[-1]
        assert spec.accel is Accel.TCG  # the fake VMM's pick (tests/fakes.py)
        return spec.cmdline.split()

    return asyncio.run(scenario())


def test_a_tcg_guest_boots_without_address_randomization_by_default(world: World) -> None:
    assert world.ctx.config.tcg_aslr is TcgAslrChoice.OFF
    assert "norandmaps" in _cmdline_of_new_vm(world, "fast")


def test_tcg_aslr_on_keeps_randomization_under_tcg(world: World) -> None:
    world.ctx.config = world.ctx.config.model_copy(update={"tcg_aslr": TcgAslrChoice.ON})
    words = _cmdline_of_new_vm(world, "random")
    assert "norandmaps" not in words
    assert "root=/dev/vda" in words  # the rest of the command line is unchanged
