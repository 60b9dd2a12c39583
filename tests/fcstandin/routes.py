"""From an HTTP request to a Firecracker action, as ``api_server/parsed_request.rs`` does.

Owns: the method/path table, resource ids from the path (``checked_id``), body
deserialization into the request structs, the path/body id match, and Firecracker's
wording for every refusal at this stage ("Empty PUT request.", "The ID cannot be empty.",
"Invalid request method and/or path: PUT foo.", …). Must not: look at files, devices or
the VM's state (``machine`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.fcstandin import schema
from tests.fcstandin.httpd import Request

#: Firecracker resources the stand-in does not emulate: answered with a clear fault.
NOT_EMULATED = {
    "balloon", "cpu-config", "entropy", "hotplug", "metrics", "mmds", "pmem", "serial",
    "snapshot", "vm",
}  # fmt: skip


class RouteError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Action:
    name: str
    config: dict[str, Any]


def parse(request: Request) -> Action:
    tokens = request.path.lstrip("/").split("/")
    while tokens and tokens[-1] == "":  # Rust's split_terminator drops one trailing empty
        tokens.pop()
    resource = tokens[0] if tokens else ""
    sub = tokens[1] if len(tokens) > 1 else None
    method, body = request.method, request.body
    if method == "GET":
        return _get(resource, sub, body)
    if body is None and method in ("PUT", "PATCH"):
        raise RouteError(f"Empty {method} request.")
    if method == "PUT":
        return _put(resource, sub, _must(body))
    if method == "PATCH":
        return _patch(resource, sub, _must(body))
    if body is not None:
        raise RouteError("Empty Delete request.")  # sic: Firecracker's text for DELETE + body
    if resource in ("drives", "network-interfaces", "pmem"):
        return Action("hot_unplug", {"id": checked_id(sub)})
    raise _invalid_path(method, resource)


def _must(body: bytes | None) -> bytes:
    assert body is not None
    return body


def _get(resource: str, sub: str | None, body: bytes | None) -> Action:
    if body is not None:
        raise RouteError("GET request cannot have a body.")
    simple = {"": "describe_instance", "version": "version", "machine-config": "get_machine_config"}
    if resource in simple:
        return Action(simple[resource], {})
    if resource in NOT_EMULATED:
        raise RouteError(f"The Firecracker stand-in does not emulate GET /{resource}.")
    raise _invalid_path("GET", resource)


def _put(resource: str, sub: str | None, body: bytes) -> Action:
    structs = {
        "actions": schema.ACTION,
        "boot-source": schema.BOOT_SOURCE,
        "logger": schema.LOGGER,
        "machine-config": schema.MACHINE_CONFIG,
        "vsock": schema.VSOCK,
    }
    if resource in structs:
        return Action(f"put_{resource}", _body(body, structs[resource]))
    if resource == "drives":
        return Action("put_drive", _with_id(sub, body, schema.DRIVE, "drive_id"))
    if resource == "network-interfaces":
        return Action("put_net", _with_id(sub, body, schema.NETWORK_INTERFACE, "iface_id"))
    if resource in NOT_EMULATED:
        raise RouteError(f"The Firecracker stand-in does not emulate PUT /{resource}.")
    raise _invalid_path("PUT", resource)


DRIVE_UPDATE = schema.Struct(
    "BlockDeviceUpdateConfig",
    (
        schema.Field("drive_id", schema.Str()),
        schema.opt("path_on_host", schema.Str()),
        schema.opt("rate_limiter", schema.RATE_LIMITER),
    ),
)
NET_UPDATE = schema.Struct(
    "NetworkInterfaceUpdateConfig",
    (
        schema.Field("iface_id", schema.Str()),
        schema.opt("rx_rate_limiter", schema.RATE_LIMITER),
        schema.opt("tx_rate_limiter", schema.RATE_LIMITER),
    ),
)


def _patch(resource: str, sub: str | None, body: bytes) -> Action:
    if resource == "drives":
        return Action("patch_device", _with_id(sub, body, DRIVE_UPDATE, "drive_id"))
    if resource == "network-interfaces":
        return Action("patch_device", _with_id(sub, body, NET_UPDATE, "iface_id"))
    if resource == "machine-config" or resource in NOT_EMULATED:
        raise RouteError(f"The Firecracker stand-in does not emulate PATCH /{resource}.")
    raise _invalid_path("PATCH", resource)


def _body(body: bytes, struct: schema.Struct) -> dict[str, Any]:
    try:
        return schema.deserialize(body, struct)
    except schema.BodyError as exc:
        raise RouteError(
            f"An error occurred when deserializing the json body of a request: {exc}."
        ) from exc


def _with_id(sub: str | None, body: bytes, struct: schema.Struct, key: str) -> dict[str, Any]:
    path_id = checked_id(sub)
    config = _body(body, struct)
    if config[key] != path_id:
        if key == "drive_id":
            raise RouteError("The id from the path does not match the id from the body!")
        raise RouteError(
            f"The id from the path [{path_id}] does not match the id from the body [{config[key]}]!"
        )
    return config


def checked_id(resource_id: str | None) -> str:
    if not resource_id:
        raise RouteError("The ID cannot be empty.")
    # Rust's char::is_alphanumeric is Unicode-wide, like str.isalnum.
    if not all(c == "_" or c.isalnum() for c in resource_id):
        raise RouteError(
            "API Resource IDs can only contain alphanumeric characters and underscores."
        )
    return resource_id


def _invalid_path(method: str, resource: str) -> RouteError:
    return RouteError(f"Invalid request method and/or path: {method} {resource}.")
