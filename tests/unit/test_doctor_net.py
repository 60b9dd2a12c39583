"""``doctor``'s NAT, DNS and KVM lines say what holds in this privilege mode (issue 14
item 18): no ✓ for what is unknown or will not work."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.config.settings import Config
from banger.model.wire import StageState
from banger.net.privilege_mode import PrivilegeMode, PrivilegeReport
from banger.net.privileged import RESOLVED_SOCKET
from banger.services.doctor import check_kvm
from banger.services.doctor_inputs import DoctorInputs
from banger.services.doctor_net import check_dns, check_nat
from tests.fakes import FakeRunner, answered


def _inputs(
    mode: PrivilegeMode, *, runner: FakeRunner | None = None, dns_port: int | None = None
) -> DoctorInputs:
    report = PrivilegeReport(mode, Path("/nonexistent/helper.sock"))
    return DoctorInputs(
        None,  # type: ignore[arg-type]
        Config(),
        None,  # type: ignore[arg-type]
        str,
        runner=runner or FakeRunner(),
        dns_port=dns_port,
        privilege=report,
    )


def test_kvm_that_was_never_probed_is_a_warning_that_says_how_to_get_it_probed() -> None:
    result = check_kvm(_inputs(PrivilegeMode.ROOT))
    if result.detail.startswith("/dev/kvm opens"):  # hosts where /dev/kvm opens for us
        assert result.state is StageState.WARN
        assert "unknown" in result.detail and "not probed yet" in result.detail
        assert result.hint is not None and "banger kernel pull" in result.hint
    else:  # absent or not ours to open: a warning saying so
        assert result.state is StageState.WARN, result


def test_nat_line_per_privilege_mode() -> None:
    rootless = check_nat(_inputs(PrivilegeMode.ROOTLESS))
    assert rootless.state is StageState.OK and "user-mode networking" in rootless.detail
    assert "not banger's NAT rules" in rootless.detail
    none = check_nat(_inputs(PrivilegeMode.NONE))
    assert none.state is StageState.WARN and none.detail.startswith("no NAT")
    assert none.hint is not None and "system install" in none.hint
    helper = check_nat(_inputs(PrivilegeMode.HELPER))
    assert helper.state is StageState.OK and "banger-helper" in helper.detail


def test_nat_as_root_reads_whether_our_table_is_there() -> None:
    with_table = FakeRunner(
        answers={"nft": answered(stdout=b"table ip filter\ntable inet banger\n")}
    )
    result = check_nat(_inputs(PrivilegeMode.ROOT, runner=with_table))
    assert result.state is StageState.OK, result
    assert "table inet banger present" in result.detail
    assert ("nft", "list", "tables") in with_table.calls
    without = FakeRunner(answers={"nft": answered(stdout=b"table ip filter\n")})
    result = check_nat(_inputs(PrivilegeMode.ROOT, runner=without))
    assert "not made yet (made for the first --nat VM)" in result.detail
    broken = FakeRunner(answers={"nft": answered(1, stderr=b"Operation not permitted")})
    result = check_nat(_inputs(PrivilegeMode.ROOT, runner=broken))
    assert result.state is StageState.WARN and "nft cannot list tables" in result.detail


@pytest.fixture
def dns_responder() -> Iterator[int]:
    """A loopback UDP server answering each datagram with its first two bytes (the ID)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            sock.sendto(data[:2] + b"\x81\x83" + b"\x00" * 8, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        sock.close()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_dns_line_fails_when_nothing_answers_on_the_port() -> None:
    port = _free_udp_port()
    result = check_dns(_inputs(PrivilegeMode.ROOT, dns_port=port))
    assert result.state is StageState.FAIL
    assert f"does not answer on 127.0.0.1:{port}" in result.detail
    assert result.hint is not None and f"sport = :{port}" in result.hint
    none = check_dns(_inputs(PrivilegeMode.ROOT))
    assert none.state is StageState.WARN and "no DNS server" in none.detail


def test_dns_line_in_rootless_mode_says_vm_names_are_not_routed(dns_responder: int) -> None:
    result = check_dns(_inputs(PrivilegeMode.ROOTLESS, dns_port=dns_responder))
    assert result.state is StageState.OK
    assert f"answers on 127.0.0.1:{dns_responder}" in result.detail
    assert "~vm is not routed" in result.detail


def test_dns_line_says_whether_vm_is_routed_and_how_to_check(dns_responder: int) -> None:
    result = check_dns(_inputs(PrivilegeMode.ROOT, dns_port=dns_responder))
    assert f"answers on 127.0.0.1:{dns_responder}" in result.detail
    if not RESOLVED_SOCKET.exists():  # this host: no systemd-resolved
        assert result.state is StageState.WARN
        assert "systemd-resolved is not running" in result.detail
        assert result.hint is not None
        assert f"dig @127.0.0.1 -p {dns_responder}" in result.hint
        assert "resolvectl domain" in result.hint
    else:
        assert "~vm" in result.detail


def test_rootless_without_qemu_is_no_network_at_all(tmp_path: Path) -> None:
    from banger.services.doctor_net import check_network

    config = Config(qemu_bin=str(tmp_path / "no-qemu"))
    report = PrivilegeReport(PrivilegeMode.ROOTLESS, tmp_path / "absent.sock")
    result = check_network(DoctorInputs(None, config, None, str, privilege=report))  # type: ignore[arg-type]
    assert result.state is StageState.FAIL, result
    assert "needs QEMU" in result.detail
