"""Rootless VMs' networking facts: the SSH port chosen, and where ssh connects."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from banger.config.settings import Config, PrivilegeModeChoice
from banger.errors import Conflict, InvalidArgument, UnsupportedHost
from banger.net import privilege_mode, user_net
from banger.net.privilege_mode import PrivilegeMode
from banger.net.user_net import SshTarget, allocate_ssh_port, ssh_target
from banger.vmm import select
from banger.vmm.base import Accel, Backend, MachineSpec, NetSpec, UserNet
from banger.vmm.qemu import build_argv


def test_the_lowest_port_neither_recorded_nor_bound_is_chosen() -> None:
    bound = {21001}
    port = allocate_ssh_port(
        {21000, 21002}, ports=range(21000, 21010), free=lambda p: p not in bound
    )
    assert port == 21003


def test_a_full_range_is_a_conflict_with_a_hint() -> None:
    with pytest.raises(Conflict) as info:
        allocate_ssh_port(set(range(5)), ports=range(5), free=lambda _: True)
    assert "127.0.0.1:0-4" in info.value.brief
    assert info.value.hint is not None and "vm list" in info.value.hint


def test_port_free_sees_a_listener_on_loopback() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert not user_net.port_free(port)
    assert user_net.port_free(port)


def test_the_default_range_is_bounded_and_below_the_ephemeral_ports() -> None:
    ports = user_net.SSH_FORWARD_PORTS
    assert 1024 < ports.start < ports.stop <= 32768
    assert len(ports) == 1000


def test_ssh_target_of_each_kind_of_vm() -> None:
    assert ssh_target("box", "10.213.7.2", None) == SshTarget("10.213.7.2")
    rootless = ssh_target("box", None, 21004)
    assert rootless == SshTarget("127.0.0.1", 21004, host_key_alias="rootless-box")
    assert rootless is not None and rootless.known_hosts_name == "rootless-box"
    assert SshTarget("10.213.7.2").known_hosts_name == "10.213.7.2"
    assert ssh_target("box", None, None) is None


def _spec(net: NetSpec) -> MachineSpec:
    return MachineSpec(
        name="box",
        vcpu=1,
        memory_mib=256,
        kernel=Path("/k/vmlinuz"),
        initrd=None,
        cmdline="console=ttyS0",
        drives=(),
        net=net,
        vm_dir=Path("/vm"),
        run_dir=Path("/run/vm"),
        accel=Accel.TCG,
    )


def _netdev(argv: list[str]) -> str:
    return argv[argv.index("-netdev") + 1]


@pytest.mark.parametrize(("outbound", "restrict"), [(False, "on"), (True, "off")])
def test_qemu_gets_slirp_with_a_loopback_forward(*, outbound: bool, restrict: str) -> None:
    net = NetSpec(
        tap=None,
        mac=user_net.GUEST_MAC,
        ip=user_net.GUEST_IP,
        gateway=user_net.GATEWAY,
        prefix_len=24,
        dns=(user_net.DNS,),
        user=UserNet(ssh_port=21007, outbound=outbound),
    )
    netdev = _netdev(build_argv(Path("/usr/bin/qemu-system-x86_64"), _spec(net)))
    assert netdev == (
        "user,id=n0,net=10.0.2.2/24,host=10.0.2.2,dhcpstart=10.0.2.15,dns=10.0.2.3,"
        f"restrict={restrict},hostfwd=tcp:127.0.0.1:21007-10.0.2.15:22"
    )


def test_a_bridged_vm_still_gets_its_tap() -> None:
    net = NetSpec("bgtap3", "52:54:00:aa:bb:cc", "10.213.7.5", "10.213.7.1", 24)
    netdev = _netdev(build_argv(Path("/usr/bin/qemu-system-x86_64"), _spec(net)))
    assert netdev == "tap,id=n0,ifname=bgtap3,script=no,downscript=no"


def _config_with_both_vmms(tmp_path: Path) -> Config:
    for name in ("firecracker", "qemu"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    return Config(firecracker_bin=str(tmp_path / "firecracker"), qemu_bin=str(tmp_path / "qemu"))


def test_a_rootless_vm_gets_qemu_even_where_firecracker_would_be_chosen(tmp_path: Path) -> None:
    config = _config_with_both_vmms(tmp_path)
    assert select.choose(config, kvm_usable=True).backend is Backend.FIRECRACKER
    choice = select.choose(config, kvm_usable=True, rootless=True)
    assert (choice.backend, choice.accel) == (Backend.QEMU, Accel.KVM)


def test_firecracker_asked_for_a_rootless_vm_is_refused_with_the_way_out(tmp_path: Path) -> None:
    config = _config_with_both_vmms(tmp_path)
    with pytest.raises(InvalidArgument) as info:
        select.choose(config, kvm_usable=True, override=Backend.FIRECRACKER, rootless=True)
    assert "no user-mode networking" in info.value.brief
    assert info.value.hint is not None and "--vmm qemu" in info.value.hint


def test_firecracker_needs_a_tun_node_the_user_may_open(tmp_path: Path) -> None:
    """Firecracker opens its TAP by name: where /dev/net/tun is 0600 (this CI host) a
    normal user's VM gets QEMU, which is handed its TAP open; asked for, it is refused
    before anything is made (issue 11; it used to fail at Firecracker's PUT)."""
    config = _config_with_both_vmms(tmp_path)
    choice = select.choose(config, kvm_usable=True, tun_openable=False)
    assert (choice.backend, choice.accel) == (Backend.QEMU, Accel.KVM)
    with pytest.raises(UnsupportedHost) as info:
        select.choose(config, kvm_usable=True, override=Backend.FIRECRACKER, tun_openable=False)
    assert "/dev/net/tun" in info.value.brief
    assert info.value.hint is not None and "--vmm qemu" in info.value.hint
    assert "chmod 0666 /dev/net/tun" in info.value.hint


def test_privilege_mode_rootless_is_rootless_whoever_runs_the_daemon(tmp_path: Path) -> None:
    report = privilege_mode.probe(tmp_path / "absent.sock", setting=PrivilegeModeChoice.ROOTLESS)
    assert report.mode is PrivilegeMode.ROOTLESS and not report.mode.bridged
    assert all(m.bridged for m in PrivilegeMode if m is not PrivilegeMode.ROOTLESS)


def test_doctor_names_rootless_mode_its_cause_and_what_it_loses(tmp_path: Path) -> None:
    from banger.model.wire import StageState
    from banger.services.doctor_inputs import DoctorInputs
    from banger.services.doctor_net import check_network

    config = Config(privilege_mode=PrivilegeModeChoice.ROOTLESS)
    inputs = DoctorInputs(None, config, None, str, helper_socket=tmp_path / "absent.sock")  # type: ignore[arg-type]
    result = check_network(inputs)
    assert result.state is StageState.OK
    assert result.detail.startswith('mode rootless (privilege_mode = "rootless")'), result.detail
    for loss in ("no <vm>.vm address", "no bridge", "no Firecracker", "127.0.0.1"):
        assert loss in result.detail
