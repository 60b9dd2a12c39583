"""Rootless VMs through VmService with fakes at the seams: no privileged step at all,
a loopback SSH port recorded in the row and used by every way into the guest, slirp's
addresses on the command line, and a VM keeping the networking it was created with."""

from __future__ import annotations

import asyncio
import socket

from banger.net import user_net
from banger.net.privilege_mode import PrivilegeMode
from banger.services import vm_info
from tests.services.conftest import World


def _rootless(world: World) -> None:
    world.mode.mode = PrivilegeMode.ROOTLESS


def test_a_rootless_create_takes_no_privileged_step_and_records_its_port(world: World) -> None:
    async def scenario() -> None:
        _rootless(world)
        got = await world.create(name="web")
        assert got.error is None, got.error
        assert got.stages() == ["reserve", "disks", "boot", "wait-ready"]
        vm = await world.row("web")
        assert (vm.ip, vm.tap, vm.mac) == (None, None, None)
        assert vm.ssh_port in user_net.SSH_FORWARD_PORTS
        assert world.ops.calls == [], "no bridge, TAP, NAT or DNS routing"
        assert world.vmms.rootless == [True]
        spec = world.vmm.launched[-1]
        assert spec.net is not None and spec.net.user is not None
        assert (spec.net.tap, spec.net.ip, spec.net.user.ssh_port) == (
            None,
            "10.0.2.15",
            vm.ssh_port,
        )
        assert spec.net.user.outbound is False
        assert "ip=10.0.2.15::10.0.2.2:255.255.255.0:web:eth0:off" in spec.cmdline
        assert "nameserver=10.0.2.3" in spec.cmdline
        assert world.dns.records == {}, "no web.vm record: nothing could reach it"
        reserve = next(e for e in got.events if e.get("stage") == "reserve" and e["state"] == "ok")
        assert f"127.0.0.1:{vm.ssh_port}" in reserve["detail"]
        assert "no web.vm address" in reserve["detail"]

    asyncio.run(scenario())


def test_every_way_in_uses_the_forward_and_the_key_filed_under_the_alias(world: World) -> None:
    async def scenario() -> None:
        _rootless(world)
        assert (await world.create(name="web")).error is None
        vm = await world.row("web")
        ssh = world.runner.ran("ssh")[-1]
        assert ssh[-2:] == ("127.0.0.1", "true"), ssh
        assert ("-p", str(vm.ssh_port)) == ssh[ssh.index("-p") : ssh.index("-p") + 2]
        assert "HostKeyAlias=rootless-web" in ssh
        known = world.vms.paths(vm).known_hosts.read_text()
        assert known.startswith("rootless-web ssh-ed25519 "), known
        info = await vm_info.ssh_info(world.vms, "web")
        assert (info["host"], info["port"], info["host_key_alias"], info["ip"]) == (
            "127.0.0.1",
            vm.ssh_port,
            "rootless-web",
            None,
        )

    asyncio.run(scenario())


def test_nat_is_slirps_outbound_access_not_banger_nat_rules(world: World) -> None:
    async def scenario() -> None:
        _rootless(world)
        got = await world.create(name="out", nat=True)
        assert got.error is None, got.error
        assert "nat" not in got.stages()
        spec = world.vmm.launched[-1]
        assert spec.net is not None and spec.net.user is not None and spec.net.user.outbound
        assert world.ops.nat is None and world.ops.calls == []

    asyncio.run(scenario())


def test_ports_are_distinct_and_a_deleted_vms_port_is_free_again(world: World) -> None:
    async def scenario() -> None:
        _rootless(world)
        for name in ("a", "b", "c"):
            assert (await world.create(name=name)).error is None
        ports = [(await world.row(n)).ssh_port for n in ("a", "b", "c")]
        assert len(set(ports)) == 3
        await world.vms.delete("b", force=True)
        assert (await world.create(name="d")).error is None
        assert (await world.row("d")).ssh_port == ports[1], "the lowest free port again"

    asyncio.run(scenario())


def test_a_port_taken_while_the_vm_was_stopped_is_replaced_at_start(world: World) -> None:
    async def scenario() -> None:
        _rootless(world)
        assert (await world.create(name="web")).error is None
        await world.vms.stop("web")
        old = (await world.row("web")).ssh_port
        assert old is not None
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", old))
            squatter.listen()
            async for _ in world.vms.start("web"):
                pass
        vm = await world.row("web")
        assert vm.ssh_port is not None and vm.ssh_port != old
        assert world.vmm.launched[-1].net.user.ssh_port == vm.ssh_port  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_a_vm_keeps_the_networking_it_was_created_with(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="bridged")).error is None
        _rootless(world)
        assert (await world.create(name="slirp")).error is None
        for name in ("bridged", "slirp"):
            await world.vms.stop(name)
        world.mode.mode = PrivilegeMode.ROOT
        async for _ in world.vms.start("slirp"):
            pass
        _rootless(world)
        async for _ in world.vms.start("bridged"):
            pass
        bridged, slirp = await world.row("bridged"), await world.row("slirp")
        assert bridged.tap in world.ops.taps and bridged.ssh_port is None
        assert slirp.tap is None and slirp.ssh_port is not None
        nets = {s.name: s.net for s in world.vmm.launched[-2:]}
        assert nets["slirp"] is not None and nets["slirp"].user is not None
        assert nets["bridged"] is not None and nets["bridged"].tap == bridged.tap

    asyncio.run(scenario())
