"""banger-helper's policy without a kernel: wire decoding, config, per-verb checks.

ADVERSARIAL 127: the owner's hostile arguments are refused before any privileged code
runs. Here the privileged ops are a recorder, so a refusal is visible as "nothing was
called"; tests/component/test_helper.py runs the real helper in a network namespace.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

import pytest

from banger.config.settings import Config
from banger.errors import ConfigError, InvalidArgument, InvalidRequest, PermissionDenied
from banger.helper import helper_config
from banger.helper.helper_config import HelperConfig
from banger.helper.verbs import Verbs
from banger.host.buildinfo import BuildInfo
from banger.net.helper_wire import (
    VERB_ARGS,
    Verb,
    decode_object,
    encode_frame,
    parse_request,
)

OWNER = 4242
CONFIG = HelperConfig(
    owners=(OWNER,),
    bridge_name="banger0",
    bridge_address=IPv4Interface("10.213.7.1/24"),
    group="nogroup",
)


class RecordingOps:
    """PrivilegedOps that records calls; bgtap0 is OWNER's, bgtap1 another uid's."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def ensure_bridge(self, name: str, address_cidr: str) -> None:
        self.calls.append(("ensure_bridge", (name, address_cidr)))

    def create_tap(self, name: str, *, bridge: str, owner_uid: int) -> None:
        self.calls.append(("create_tap", (name, bridge, owner_uid)))

    def delete_tap(self, name: str) -> None:
        self.calls.append(("delete_tap", (name,)))

    def list_taps(self, *, owner_uid: int | None = None) -> list[str]:
        return {None: ["bgtap0", "bgtap1"], OWNER: ["bgtap0"]}.get(owner_uid, [])

    def ensure_nat(self, bridge: str, cidr: str) -> None:
        self.calls.append(("ensure_nat", (bridge, cidr)))

    def remove_nat(self) -> None:
        self.calls.append(("remove_nat", ()))

    def enable_ip_forward(self) -> None:
        self.calls.append(("enable_ip_forward", ()))

    def route_vm_domain(self, bridge: str, dns_port: int) -> bool:
        self.calls.append(("route_vm_domain", (bridge, dns_port)))
        return True


def _verbs() -> tuple[Verbs, RecordingOps]:
    ops = RecordingOps()
    return Verbs(CONFIG, ops, BuildInfo("1", "c", "t")), ops


# -- wire ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b'"verb"',
        b"\xff\xfe",
        b'{"a": 1, "a": 2}',
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b"[" * 3000 + b"]" * 3000,
        b"{",
        b"",
    ],
)
def test_malformed_messages_are_invalid_requests(data: bytes) -> None:
    with pytest.raises(InvalidRequest):
        decode_object(data)


def test_a_frame_is_a_length_and_json() -> None:
    frame = encode_frame({"verb": "hello", "args": {}})
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert parse_request(decode_object(frame[4:])) == (Verb.HELLO, {})


@pytest.mark.parametrize(
    "message",
    [
        {"verb": "hello"},
        {"verb": "hello", "args": {}, "extra": 1},
        {"verb": "rm -rf /", "args": {}},
        {"verb": ["hello"], "args": {}},
        {"verb": "hello", "args": []},
        {"verb": "hello", "args": {"path": "/etc/shadow"}},
        {"verb": "create-tap", "args": {"name": "bgtap0", "bridge": "banger0"}},
        {"verb": "delete-tap", "args": {"name": "bgtap0", "command": "ip link del eth0"}},
    ],
)
def test_requests_must_have_exactly_the_verbs_arguments(message: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        parse_request(message)


def test_every_verb_has_a_handler() -> None:
    verbs, _ = _verbs()
    assert set(verbs._handlers) == set(Verb) == set(VERB_ARGS)


# -- per-verb checks ----------------------------------------------------------------------


def _tap(name: str, bridge: str, uid: object) -> dict[str, Any]:
    return {"name": name, "bridge": bridge, "owner_uid": uid}


REFUSED = [
    (Verb.ENSURE_BRIDGE, {"name": "eth0", "address": "10.213.7.1/24"}, PermissionDenied),
    (Verb.ENSURE_BRIDGE, {"name": "lo", "address": "10.213.7.1/24"}, PermissionDenied),
    (Verb.ENSURE_BRIDGE, {"name": "banger1", "address": "10.213.7.1/24"}, PermissionDenied),
    (Verb.ENSURE_BRIDGE, {"name": "banger0", "address": "10.213.8.1/24"}, PermissionDenied),
    (Verb.ENSURE_BRIDGE, {"name": "banger0", "address": "10.213.7.2/24"}, PermissionDenied),
    (Verb.ENSURE_BRIDGE, {"name": "banger0", "address": "8.8.8.1/24"}, InvalidArgument),
    (Verb.ENSURE_BRIDGE, {"name": "banger%d", "address": "10.213.7.1/24"}, InvalidArgument),
    (Verb.ENSURE_BRIDGE, {"name": "b" * 16, "address": "10.213.7.1/24"}, InvalidArgument),
    (Verb.ENSURE_BRIDGE, {"name": "banger0", "address": 1}, InvalidArgument),
    (Verb.ENSURE_BRIDGE, {"name": "banger0", "address": "$(reboot)/24"}, InvalidArgument),
    (Verb.CREATE_TAP, _tap("tap0", "banger0", OWNER), InvalidArgument),
    (Verb.CREATE_TAP, _tap("eth0", "banger0", OWNER), InvalidArgument),
    (
        Verb.CREATE_TAP,
        _tap("bgtap01", "banger0", OWNER),
        InvalidArgument,
    ),
    (
        Verb.CREATE_TAP,
        _tap("bgtap0", "docker0", OWNER),
        PermissionDenied,
    ),
    (Verb.CREATE_TAP, _tap("bgtap0", "banger0", 0), PermissionDenied),
    (Verb.CREATE_TAP, _tap("bgtap0", "banger0", 4243), PermissionDenied),
    (Verb.CREATE_TAP, _tap("bgtap0", "banger0", True), InvalidArgument),
    (
        Verb.CREATE_TAP,
        _tap("bgtap0", "banger0", "4242"),
        InvalidArgument,
    ),
    (Verb.CREATE_TAP, _tap("bgtap0", "banger0", -1), InvalidArgument),
    (Verb.DELETE_TAP, {"name": "eth0"}, InvalidArgument),
    (Verb.DELETE_TAP, {"name": "bgtap1"}, PermissionDenied),  # another uid's TAP
    (Verb.LIST_TAPS, {"owner_uid": 0}, PermissionDenied),
    (Verb.NAT_ON, {"bridge": "banger0", "cidr": "0.0.0.0/0"}, InvalidArgument),
    (Verb.NAT_ON, {"bridge": "banger0", "cidr": "10.0.0.0/16"}, PermissionDenied),
    (Verb.NAT_ON, {"bridge": "eth0", "cidr": "10.213.7.0/24"}, PermissionDenied),
    (Verb.NAT_ON, {"bridge": 'x"; flush ruleset', "cidr": "10.213.7.0/24"}, InvalidArgument),
    (Verb.ROUTE_VM_DOMAIN, {"bridge": "banger0", "dns_port": 53}, InvalidArgument),
    (Verb.ROUTE_VM_DOMAIN, {"bridge": "banger0", "dns_port": 70000}, InvalidArgument),
    (Verb.ROUTE_VM_DOMAIN, {"bridge": "banger0", "dns_port": 4.2e4}, InvalidArgument),
    (Verb.ROUTE_VM_DOMAIN, {"bridge": "wlan0", "dns_port": 42069}, PermissionDenied),
]


@pytest.mark.parametrize(("verb", "args", "error"), REFUSED)
def test_hostile_arguments_are_refused_before_anything_runs(
    verb: Verb, args: dict[str, Any], error: type[Exception]
) -> None:
    verbs, ops = _verbs()
    parse_request({"verb": verb.value, "args": args})  # the shape is right; the values not
    with pytest.raises(error):
        verbs.run(OWNER, verb, args)
    assert ops.calls == []


def test_configured_values_pass_through() -> None:
    verbs, ops = _verbs()
    verbs.run(OWNER, Verb.ENSURE_BRIDGE, {"name": "banger0", "address": "10.213.7.1/24"})
    verbs.run(OWNER, Verb.CREATE_TAP, {"name": "bgtap7", "bridge": "banger0", "owner_uid": OWNER})
    verbs.run(OWNER, Verb.DELETE_TAP, {"name": "bgtap0"})
    verbs.run(OWNER, Verb.DELETE_TAP, {"name": "bgtap9"})  # already gone: fine
    verbs.run(OWNER, Verb.NAT_ON, {"bridge": "banger0", "cidr": "10.213.7.0/24"})
    assert verbs.run(OWNER, Verb.ROUTE_VM_DOMAIN, {"bridge": "banger0", "dns_port": 42069})
    assert verbs.run(OWNER, Verb.LIST_TAPS, {"owner_uid": OWNER}) == ["bgtap0"]
    assert ops.calls == [
        ("ensure_bridge", ("banger0", "10.213.7.1/24")),
        ("create_tap", ("bgtap7", "banger0", OWNER)),
        ("delete_tap", ("bgtap0",)),
        ("delete_tap", ("bgtap9",)),
        ("ensure_nat", ("banger0", "10.213.7.0/24")),
        ("route_vm_domain", ("banger0", 42069)),
    ]
    hello = verbs.run(OWNER, Verb.HELLO, {})
    assert isinstance(hello, dict)
    assert hello["bridge_name"] == "banger0" and hello["uid"] == OWNER


# -- config -------------------------------------------------------------------------------


def test_helper_defaults_match_the_daemons() -> None:
    cfg = Config()
    assert (cfg.bridge_name, cfg.bridge_ip, cfg.cidr) == (
        helper_config.DEFAULT_BRIDGE_NAME,
        helper_config.DEFAULT_BRIDGE_IP,
        helper_config.DEFAULT_CIDR,
    )


@pytest.mark.parametrize(
    ("owners", "extra"),
    [
        ([], {}),
        (["root"], {}),
        ([0], {}),
        (["no-such-user-banger"], {}),
        ([True], {}),
        ([OWNER], {"cidr": "0.0.0.0/0"}),
        ([OWNER], {"cidr": "10.213.7.0/24", "bridge_ip": "10.213.8.1"}),
        ([OWNER], {"bridge_ip": "10.213.7.255"}),
        ([OWNER], {"bridge_name": "bgtap0"}),
        ([OWNER], {"bridge_name": "x;y"}),
    ],
)
def test_bad_configs_are_refused(owners: list[object], extra: dict[str, object]) -> None:
    values: dict[str, object] = {
        "bridge_name": "banger0",
        "bridge_ip": "10.213.7.1",
        "cidr": "10.213.7.0/24",
        "group": "banger",
        **extra,
    }
    with pytest.raises(ConfigError):
        if not owners:
            helper_config.load(None, owners=[])
        helper_config.build(owners, **values)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the file")


@needs_root
@pytest.mark.parametrize(("uid", "mode"), [(65534, 0o644), (0, 0o664), (0, 0o646)])
def test_a_config_others_could_write_is_refused(tmp_path: Path, uid: int, mode: int) -> None:
    path = tmp_path / "helper.toml"
    path.write_text('owners = ["nobody"]\n')
    os.chown(path, uid, 0)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="root"):
        helper_config.load(path, owners=[])


@needs_root
def test_a_symlinked_config_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text('owners = ["nobody"]\n')
    (tmp_path / "helper.toml").symlink_to(real)
    with pytest.raises(ConfigError):
        helper_config.load(tmp_path / "helper.toml", owners=[])


@needs_root
def test_a_root_owned_config_is_read(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "helper.toml"
    path.write_text('owners = ["nobody", 4242]\ncidr = "10.50.0.0/24"\nbridge_ip = "10.50.0.9"\n')
    cfg = helper_config.load(path, owners=[])
    assert cfg.owners == (65534, 4242)
    assert str(cfg.bridge_address) == "10.50.0.9/24" and cfg.bridge_name == "banger0"
    # --owner replaces the file's owners, keeps its network.
    assert helper_config.load(path, owners=["4243"]).owners == (4243,)
    path.write_text('owners = ["nobody"]\nbridge = "eth0"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        helper_config.load(path, owners=[])
