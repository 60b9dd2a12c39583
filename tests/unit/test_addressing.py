"""Guest IPs, MACs, TAP names and the privileged-argument validators (pure; ADV 46/52/127)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banger.errors import Conflict, InvalidArgument
from banger.model.addressing import (
    MAX_TAP_INDEX,
    allocate_ip,
    bridge_interface,
    is_our_tap,
    mac_for_ip,
    netmask,
    prefix_len,
    tap_index,
    tap_name,
    validate_bridge_name,
    validate_ifname,
    validate_interface_address,
    validate_private_cidr,
    validate_tap_name,
    validate_uid,
)
from banger.net import nat

CIDR, BRIDGE_IP = "10.213.7.0/24", "10.213.7.1"

# -- allocation ---------------------------------------------------------------------------


def test_allocation_starts_after_the_bridge_and_fills_gaps() -> None:
    assert allocate_ip(CIDR, BRIDGE_IP, set()) == "10.213.7.2"
    assert allocate_ip(CIDR, BRIDGE_IP, {"10.213.7.2", "10.213.7.4"}) == "10.213.7.3"
    # A bridge at the top of the range leaves .1 to guests.
    assert allocate_ip(CIDR, "10.213.7.254", set()) == "10.213.7.1"


def test_a_full_network_is_a_clear_conflict_naming_the_cidr() -> None:
    cidr = "192.168.50.0/29"  # .1-.6 are hosts; the bridge takes one, guests five
    used = {f"192.168.50.{i}" for i in range(2, 7)}
    with pytest.raises(Conflict, match=r"192\.168\.50\.0/29") as info:
        allocate_ip(cidr, "192.168.50.1", used)
    assert info.value.hint is not None and "cidr" in info.value.hint


@pytest.mark.parametrize(
    ("cidr", "bridge_ip", "used"),
    [
        ("10.213.7.0/24", "10.213.8.1", set()),  # bridge outside the network
        ("8.8.8.0/24", "8.8.8.1", set()),  # not private
        ("10.213.7.0/24", "10.213.7.1", {"not-an-ip"}),
    ],
)
def test_allocation_rejects_bad_inputs(cidr: str, bridge_ip: str, used: set[str]) -> None:
    with pytest.raises(InvalidArgument):
        allocate_ip(cidr, bridge_ip, used)


@st.composite
def network_and_used(draw: st.DrawFn) -> tuple[str, str, set[str]]:
    prefix = draw(st.integers(min_value=24, max_value=29))
    base = draw(st.sampled_from(["10.213.7.0", "172.16.4.0", "192.168.100.0"]))
    network = IPv4Network(f"{base}/{prefix}", strict=False)
    hosts = [str(h) for h in network.hosts()]
    bridge = draw(st.sampled_from(hosts))
    used = draw(st.sets(st.sampled_from(hosts), max_size=len(hosts)))
    return str(network), bridge, used


@given(network_and_used())
def test_allocation_never_returns_a_used_or_reserved_address(
    case: tuple[str, str, set[str]],
) -> None:
    cidr, bridge, used = case
    network = IPv4Network(cidr)
    free = [str(h) for h in network.hosts() if str(h) != bridge and str(h) not in used]
    if not free:
        with pytest.raises(Conflict):
            allocate_ip(cidr, bridge, used)
        return
    ip = allocate_ip(cidr, bridge, used)
    assert ip == free[0]  # the lowest free one
    assert ip not in used and ip != bridge
    assert IPv4Address(ip) not in (network.network_address, network.broadcast_address)


def test_sequential_allocation_hands_out_distinct_addresses() -> None:
    used: set[str] = set()
    for _ in range(253):
        used.add(allocate_ip(CIDR, BRIDGE_IP, used))
    assert len(used) == 253 and BRIDGE_IP not in used
    with pytest.raises(Conflict):
        allocate_ip(CIDR, BRIDGE_IP, used)


def test_netmask_and_prefix() -> None:
    assert prefix_len(CIDR) == 24 and netmask(CIDR) == "255.255.255.0"
    assert netmask("10.1.0.0/16") == "255.255.0.0"
    assert bridge_interface(CIDR, BRIDGE_IP) == "10.213.7.1/24"


# -- MACs -------------------------------------------------------------------------------


def test_mac_is_deterministic_locally_administered_unicast() -> None:
    mac = mac_for_ip("10.213.7.2")
    assert mac == "02:ba:0a:d5:07:02" == mac_for_ip("10.213.7.2")
    first = int(mac.split(":")[0], 16)
    assert first & 0b10 and not first & 0b01


def test_macs_are_unique_across_a_slash_16() -> None:
    macs = {mac_for_ip(str(ip)) for ip in IPv4Network("10.99.0.0/16")}
    assert len(macs) == 65536


@given(st.ip_addresses(v=4), st.ip_addresses(v=4))
def test_distinct_ips_never_share_a_mac(a: IPv4Address, b: IPv4Address) -> None:
    assert (mac_for_ip(str(a)) == mac_for_ip(str(b))) == (a == b)


# -- TAP names --------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=MAX_TAP_INDEX))
def test_tap_names_fit_ifnamsiz_and_round_trip(index: int) -> None:
    name = tap_name(index)
    assert len(name.encode()) <= 15 and "%" not in name
    assert validate_ifname(name) == name and is_our_tap(name)
    assert tap_index(name) == index


@settings(max_examples=50)
@given(st.sets(st.integers(min_value=0, max_value=MAX_TAP_INDEX), min_size=2, max_size=50))
def test_tap_names_are_unique(indexes: set[int]) -> None:
    assert len({tap_name(i) for i in indexes}) == len(indexes)


@pytest.mark.parametrize("index", [-1, MAX_TAP_INDEX + 1, True, 1.0])
def test_tap_index_out_of_range_is_rejected_not_truncated(index: object) -> None:
    with pytest.raises(InvalidArgument):
        tap_name(index)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    ["tap0", "bgtap", "bgtap01", "bgtapx", "bgtap1a", "xbgtap1", "bgtap12345678901", "BGTAP1", 5],
)
def test_only_names_we_make_are_ours(name: object) -> None:
    assert not is_our_tap(name)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        validate_tap_name(name)


# -- validators -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["banger0", "br-lan", "eth_0", "a", "x" * 15, "bgtap3"])
def test_valid_ifnames(name: str) -> None:
    assert validate_ifname(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 16,  # IFNAMSIZ: 15 bytes + NUL
        "%d",
        "bgtap%d",
        ".",
        "..",
        "a/b",
        "a b",
        "a;b",
        "a\nb",
        "a\x00",
        "br0\n",
        "ß",
        "tap٣",  # an Arabic-Indic digit: isalnum() says yes
        "-br",
        'a"b',
        None,
        7,
    ],
)
def test_hostile_ifnames_are_rejected_with_the_rule(name: object) -> None:
    with pytest.raises(InvalidArgument, match="1-15 ASCII"):
        validate_ifname(name)


def test_a_tap_name_cannot_be_the_bridge() -> None:
    assert validate_bridge_name("banger0") == "banger0"
    with pytest.raises(InvalidArgument, match="TAP name"):
        validate_bridge_name("bgtap0")


@pytest.mark.parametrize("cidr", ["10.213.7.0/24", "172.16.0.0/16", "192.168.1.0/29"])
def test_private_cidrs(cidr: str) -> None:
    assert str(validate_private_cidr(cidr)) == cidr


@pytest.mark.parametrize(
    ("cidr", "why"),
    [
        ("0.0.0.0/0", "RFC 1918"),
        ("8.8.8.0/24", "not private"),
        ("100.64.0.0/24", "not private"),
        ("10.0.0.0/8", "/16 to /29"),  # too wide to hand to one bridge
        ("10.213.7.0/30", "/16 to /29"),
        ("10.213.7.1/24", "host bits"),
        ("10.213.7.0", "RFC 1918"),
        ("10.213.7.0/24; drop", "RFC 1918"),
        (None, "RFC 1918"),
    ],
)
def test_hostile_cidrs_are_rejected(cidr: object, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        validate_private_cidr(cidr)


def test_bridge_address_must_be_a_host_of_a_private_network() -> None:
    assert str(validate_interface_address("10.213.7.1/24")) == "10.213.7.1/24"
    for bad in ("10.213.7.0/24", "10.213.7.255/24", "8.8.8.1/24", "0.0.0.0/0", "10.213.7.1"):
        with pytest.raises(InvalidArgument):
            validate_interface_address(bad)


@pytest.mark.parametrize("uid", [-1, 2**32 - 1, 2**32, True, "1000", None])
def test_bad_uids(uid: object) -> None:
    with pytest.raises(InvalidArgument):
        validate_uid(uid)


# -- NAT script -------------------------------------------------------------------------


def test_nat_script_replaces_the_whole_table_in_one_file() -> None:
    script = nat.ensure_script("banger0", CIDR)
    first, second = script.splitlines()[:2]
    assert (first, second) == ("table inet banger", "delete table inet banger")
    assert script.count("masquerade") == 1
    assert 'ip saddr 10.213.7.0/24 oifname != "banger0"' in script
    assert 'iifname "banger0"' in script and 'oifname "banger0" counter accept' in script
    assert nat.remove_script() == "table inet banger\ndelete table inet banger\n"


@pytest.mark.parametrize(
    ("bridge", "cidr"),
    [('br" accept; #', CIDR), ("banger0", "0.0.0.0/0"), ("banger0", "8.8.8.0/24")],
)
def test_nat_script_refuses_what_would_inject_or_leak(bridge: str, cidr: str) -> None:
    with pytest.raises(InvalidArgument):
        nat.ensure_script(bridge, cidr)
