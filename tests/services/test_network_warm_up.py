"""The network warm-up at daemon start (issue 12, first create of a fresh daemon): when
the bridge exists already it is ensured, ``~vm`` routed and the TAP pool filled before any
create asks; when it does not, nothing on the host network changes by starting."""

from __future__ import annotations

import asyncio
import os

from banger.config.settings import Config
from banger.errors import HelperUnavailable
from banger.net.privilege_mode import PrivilegeMode
from banger.net.taps import TapPool
from banger.services.vm_network import VmNetwork, warm_up
from tests.fakes import FakeDns, FakePrivilegedOps
from tests.services.conftest import World

POOL = 3


async def root_mode() -> PrivilegeMode:
    return PrivilegeMode.ROOT


async def rootless_mode() -> PrivilegeMode:
    return PrivilegeMode.ROOTLESS


def _network(world: World, bridge: str, ops: FakePrivilegedOps) -> tuple[VmNetwork, TapPool]:
    config: Config = world.ctx.config.model_copy(update={"bridge_name": bridge})
    return VmNetwork(config, ops, FakeDns()), TapPool(ops, bridge, POOL, os.getuid())


def test_an_existing_bridge_is_ensured_and_the_pool_filled(world: World) -> None:
    ops = FakePrivilegedOps()
    # "lo" exists in every network namespace: it stands for a bridge an earlier daemon made.
    network, taps = _network(world, "lo", ops)
    asyncio.run(warm_up(network, taps, root_mode))
    assert ops.calls == ["ensure_bridge", *["create_tap"] * POOL]
    assert len(taps.warm) == POOL and ops.routed
    # The first create finds the bridge ready: ensure() asks nothing more.
    asyncio.run(network.ensure())
    assert ops.calls.count("ensure_bridge") == 1


def test_no_bridge_yet_means_nothing_is_touched(world: World) -> None:
    ops = FakePrivilegedOps()
    network, taps = _network(world, "bgnotthere0", ops)
    asyncio.run(warm_up(network, taps, root_mode))
    assert ops.calls == [] and ops.bridges == {} and taps.warm == []


def test_a_failure_is_logged_not_raised(world: World) -> None:
    class Down(FakePrivilegedOps):
        def ensure_bridge(self, name: str, address_cidr: str) -> None:
            raise HelperUnavailable("the helper is not running")

    ops = Down()
    network, taps = _network(world, "lo", ops)
    asyncio.run(warm_up(network, taps, root_mode))  # no exception
    assert taps.warm == []


def test_a_rootless_daemon_touches_no_bridge_even_if_one_exists(world: World) -> None:
    ops = FakePrivilegedOps()
    network, taps = _network(world, "lo", ops)
    asyncio.run(warm_up(network, taps, rootless_mode))
    assert ops.calls == [] and taps.warm == []
