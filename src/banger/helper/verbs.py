"""What each helper verb accepts, checked against root's config before anything runs.

Owns: the policy of SPEC §9 and ADVERSARIAL 127, verb by verb: arguments of exactly the
right JSON type; the bridge, its address and the CIDR must be the ones in the helper's
config; TAP names must be banger's own (``bgtapN``); an owner uid must be the caller's own
uid (one owner can neither create TAPs for another nor delete another's). Then the same
``InProcessPrivilegedOps`` the root daemon uses does the work, re-validating once more.

Must not: accept a path, a command or free text, or touch anything the config does not
name. The caller's uid comes from SO_PEERCRED (``banger.helper.connections``), never from the
request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from banger.errors import InvalidArgument, PermissionDenied
from banger.helper.helper_config import HelperConfig
from banger.host.buildinfo import BuildInfo
from banger.model.addressing import (
    validate_bridge_name,
    validate_interface_address,
    validate_private_cidr,
    validate_tap_name,
    validate_uid,
)
from banger.net.helper_wire import PROTOCOL_VERSION, PassFd, Verb
from banger.net.privileged import PrivilegedOps

#: The DNS server is the unprivileged daemon's: it can only listen on these ports.
MIN_DNS_PORT, MAX_DNS_PORT = 1024, 65535
_CONFIG_HINT = (
    "the helper manages only the bridge and network in its own config "
    "(/etc/banger/helper.toml); make config.toml's bridge_name, bridge_ip and cidr match it"
)

Handler = Callable[[int, dict[str, Any]], object]


class Verbs:
    def __init__(self, config: HelperConfig, ops: PrivilegedOps, build: BuildInfo) -> None:
        self._config = config
        self._ops = ops
        self._build = build
        self._handlers: dict[Verb, Handler] = {
            Verb.HELLO: self._hello,
            Verb.ENSURE_BRIDGE: self._ensure_bridge,
            Verb.CREATE_TAP: self._create_tap,
            Verb.DELETE_TAP: self._delete_tap,
            Verb.LIST_TAPS: self._list_taps,
            Verb.NAT_ON: self._nat_on,
            Verb.NAT_OFF: self._nat_off,
            Verb.IP_FORWARD: self._ip_forward,
            Verb.ROUTE_VM_DOMAIN: self._route_vm_domain,
            Verb.OPEN_TAP: self._open_tap,
        }

    def run(self, uid: int, verb: Verb, args: dict[str, Any]) -> object:
        """Do ``verb`` for the owner ``uid`` (already checked against the config)."""
        return self._handlers[verb](uid, args)

    # -- verbs ----------------------------------------------------------------------------

    def _hello(self, uid: int, _: dict[str, Any]) -> object:
        cfg = self._config
        return {
            "protocol": PROTOCOL_VERSION,
            "build": self._build.as_dict(),
            "uid": uid,
            "bridge_name": cfg.bridge_name,
            "bridge_address": str(cfg.bridge_address),
            "cidr": str(cfg.cidr),
        }

    def _ensure_bridge(self, _: int, args: dict[str, Any]) -> object:
        name = self._bridge(args["name"])
        address = validate_interface_address(_text(args, "address"))
        if address != self._config.bridge_address:
            raise PermissionDenied(
                f"bridge address {address} is not the configured {self._config.bridge_address}",
                hint=_CONFIG_HINT,
            )
        self._ops.ensure_bridge(name, str(address))
        return None

    def _create_tap(self, uid: int, args: dict[str, Any]) -> object:
        name = validate_tap_name(_text(args, "name"))
        bridge = self._bridge(args["bridge"])
        owner = self._own_uid(uid, args["owner_uid"])
        self._ops.create_tap(name, bridge=bridge, owner_uid=owner)
        return None

    def _delete_tap(self, uid: int, args: dict[str, Any]) -> object:
        name = validate_tap_name(_text(args, "name"))
        # Another owner's TAP (or one root made) is not this caller's to delete; a TAP that
        # is already gone is fine, as in-process.
        if name in self._ops.list_taps() and name not in self._ops.list_taps(owner_uid=uid):
            raise PermissionDenied(f"TAP {name} does not belong to uid {uid}")
        self._ops.delete_tap(name)
        return None

    def _list_taps(self, uid: int, args: dict[str, Any]) -> object:
        raw = args["owner_uid"]
        owner = None if raw is None else self._own_uid(uid, raw)
        return self._ops.list_taps(owner_uid=owner)

    def _open_tap(self, uid: int, args: dict[str, Any]) -> object:
        name = validate_tap_name(_text(args, "name"))
        # Only the caller's own TAP: another owner's (or root's) would hand it their VM's
        # traffic. The in-process check below repeats this with the same uid.
        if name in self._ops.list_taps() and name not in self._ops.list_taps(owner_uid=uid):
            raise PermissionDenied(f"TAP {name} does not belong to uid {uid}")
        return PassFd(self._ops.open_tap(name, owner_uid=uid))

    def _nat_on(self, _: int, args: dict[str, Any]) -> object:
        bridge = self._bridge(args["bridge"])
        cidr = validate_private_cidr(_text(args, "cidr"))
        if cidr != self._config.cidr:
            raise PermissionDenied(
                f"CIDR {cidr} is not the configured {self._config.cidr}", hint=_CONFIG_HINT
            )
        self._ops.ensure_nat(bridge, str(cidr))
        return None

    def _nat_off(self, _: int, __: dict[str, Any]) -> object:
        self._ops.remove_nat()
        return None

    def _ip_forward(self, _: int, __: dict[str, Any]) -> object:
        self._ops.enable_ip_forward()
        return None

    def _route_vm_domain(self, _: int, args: dict[str, Any]) -> object:
        bridge = self._bridge(args["bridge"])
        port = _int(args, "dns_port")
        if not MIN_DNS_PORT <= port <= MAX_DNS_PORT:
            raise InvalidArgument(
                f"DNS port {port} is outside {MIN_DNS_PORT}..{MAX_DNS_PORT}: an unprivileged "
                "daemon cannot serve on it"
            )
        return self._ops.route_vm_domain(bridge, port)

    # -- checks ---------------------------------------------------------------------------

    def _bridge(self, value: object) -> str:
        name = validate_bridge_name(value)
        if name != self._config.bridge_name:
            raise PermissionDenied(
                f"bridge {name!r} is not the configured bridge {self._config.bridge_name!r}",
                hint=_CONFIG_HINT,
            )
        return name

    def _own_uid(self, caller: int, value: object) -> int:
        uid = validate_uid(value)
        if uid != caller:
            raise PermissionDenied(
                f"uid {uid} is not the caller's own uid {caller}",
                hint="a daemon may only ask for TAPs owned by the user it runs as",
            )
        return uid


def _text(args: dict[str, Any], key: str) -> str:
    value = args[key]
    if not isinstance(value, str):
        raise InvalidArgument(f"{key} must be a string, not {type(value).__name__}")
    return value


def _int(args: dict[str, Any], key: str) -> int:
    value = args[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{key} must be an integer, not {type(value).__name__}")
    return value
