"""``banger vm|image|kernel list|show``: what the daemon knows about."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from banger.cli.output import emit_json, emit_kv, emit_table
from banger.cli.session import Session
from banger.units import format_size

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _show(session: Session, kind: str, name: str, as_json: bool) -> None:
    reply: dict[str, Any] = session.client().get(f"/{kind}/{quote(name, safe='')}")
    if as_json:
        emit_json(reply)
    else:
        emit_kv([(k, "-" if v is None else v) for k, v in reply.items()])


@click.group()
def vm() -> None:
    """Manage VMs."""


@vm.command("list")
@json_option
@click.pass_obj
def vm_list(session: Session, as_json: bool) -> None:
    """List VMs with their state, size and address."""
    vms: list[dict[str, Any]] = session.client().get("/vms")
    if as_json:
        emit_json(vms)
        return
    rows = [
        (
            v["name"],
            v["state"],
            v["vcpu"],
            f"{v['memory_mib']} MiB",
            format_size(v["disk_size_bytes"]),
            v["ip"] or "-",
        )
        for v in vms
    ]
    emit_table(("NAME", "STATE", "VCPU", "MEMORY", "DISK", "IP"), rows, empty="no VMs")


@vm.command("show")
@click.argument("name")
@json_option
@click.pass_obj
def vm_show(session: Session, name: str, as_json: bool) -> None:
    """Show everything the daemon records about one VM."""
    _show(session, "vms", name, as_json)


@click.group()
def image() -> None:
    """Manage images."""


@image.command("list")
@json_option
@click.pass_obj
def image_list(session: Session, as_json: bool) -> None:
    """List local images."""
    images: list[dict[str, Any]] = session.client().get("/images")
    if as_json:
        emit_json(images)
        return
    rows = [
        (
            i["name"],
            "managed" if i["managed"] else "registered",
            i["kernel_name"] or "-",
            format_size(i["size_bytes"]) if i["size_bytes"] else "-",
            i["source"],
        )
        for i in images
    ]
    emit_table(("NAME", "KIND", "KERNEL", "SIZE", "SOURCE"), rows, empty="no images")


@image.command("show")
@click.argument("name")
@json_option
@click.pass_obj
def image_show(session: Session, name: str, as_json: bool) -> None:
    """Show one image."""
    _show(session, "images", name, as_json)


@click.group()
def kernel() -> None:
    """Manage kernels."""


@kernel.command("list")
@json_option
@click.pass_obj
def kernel_list(session: Session, as_json: bool) -> None:
    """List local kernels."""
    kernels: list[dict[str, Any]] = session.client().get("/kernels")
    if as_json:
        emit_json(kernels)
        return
    rows = [
        (k["name"], k["distro"] or "-", k["arch"], k["version"] or "-", k["source"])
        for k in kernels
    ]
    emit_table(("NAME", "DISTRO", "ARCH", "VERSION", "SOURCE"), rows, empty="no kernels")


@kernel.command("show")
@click.argument("name")
@json_option
@click.pass_obj
def kernel_show(session: Session, name: str, as_json: bool) -> None:
    """Show one kernel."""
    _show(session, "kernels", name, as_json)
