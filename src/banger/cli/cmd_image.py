"""``banger image register|promote|list|show|delete`` (docs/images.md)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from banger.cli.cmd_kernel import absolute, json_option, show_record
from banger.cli.output import emit_json, emit_table, follow_stream
from banger.cli.session import Session
from banger.kernels import validate_name
from banger.units import format_size

_PATH_OPTIONS = ("rootfs", "kernel", "initrd", "modules", "work_seed")


@click.group()
def image() -> None:
    """Manage images (docs/images.md)."""


@image.command("register")
@click.argument("name")
@click.option("--rootfs", required=True, metavar="PATH", help="ext4 image of the root filesystem.")
@click.option("--kernel", metavar="PATH", help="Kernel (bzImage/vmlinuz or ELF vmlinux).")
@click.option("--initrd", metavar="PATH", help="Initrd for --kernel.")
@click.option("--modules", metavar="DIR", help="lib/modules/<version> directory for --kernel.")
@click.option("--kernel-ref", metavar="NAME", help="A kernel of the local store instead.")
@click.option("--work-seed", metavar="PATH", help="ext4 image the per-VM /root starts from.")
@json_option
@click.pass_obj
def image_register(
    session: Session, /, name: str, kernel_ref: str | None, as_json: bool, **paths: str | None
) -> None:
    """Register host files as image NAME; they stay where they are and stay yours.

    Give --kernel PATH [--initrd] [--modules], or --kernel-ref NAME, not both.
    """
    validate_name(name, kind="image")  # here too, so the message is ours, not the schema's
    if kernel_ref is not None:
        validate_name(kernel_ref)
    body: dict[str, str | None] = {"name": name, "kernel_ref": kernel_ref}
    for key in _PATH_OPTIONS:
        value = paths.get(key)
        body[key] = None if value is None else absolute(value)
    reply: dict[str, Any] = session.client().post("/images/register", body)
    if as_json:
        emit_json(reply)
    else:
        click.echo(f"registered image {reply['name']} (unmanaged: banger uses your files)")


@image.command("promote")
@click.argument("name")
@json_option
@click.pass_obj
def image_promote(session: Session, name: str, as_json: bool) -> None:
    """Copy a registered image's files into banger's store (images/NAME/).

    Your original files are left untouched. `--json` prints NDJSON progress events.
    """
    events = session.client().stream("POST", f"/images/{quote(name, safe='')}/promote")
    result = follow_stream(events, as_json=as_json)
    if not as_json and isinstance(result, dict):
        click.echo(f"promoted image {result['name']}: its files are now managed by banger")


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
            i["kernel_name"] or ("path" if i["kernel_path"] else "-"),
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
    reply: dict[str, Any] = session.client().get(f"/images/{quote(name, safe='')}")
    if as_json:
        emit_json(reply)
    else:
        show_record(reply)


@image.command("delete")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.pass_obj
def image_delete(session: Session, names: tuple[str, ...]) -> None:
    """Delete images; refused while a VM uses one. Registered files are never deleted."""
    client = session.client()
    for name in names:
        reply = client.request("DELETE", f"/images/{quote(name, safe='')}")
        kept = "" if reply.get("files_removed") else " (files left in place)"
        click.echo(f"deleted image {name}{kept}")
