"""``banger image register|pull|promote|list|show|delete`` (docs/images.md)."""

from __future__ import annotations

import click

from banger.cli.cmd_kernel import absolute, json_option, show_record
from banger.cli.completion import complete_image_names
from banger.cli.output import emit_json, emit_table, follow_stream
from banger.cli.session import Session
from banger.cli.vm_options import IMAGE_SIZE
from banger.model.api_types import ImagePullRequest, ImageRegisterRequest
from banger.model.artifact_names import validate_name
from banger.model.units import format_size


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
    where = {k: None if v is None else absolute(v) for k, v in paths.items()}
    rootfs = where.pop("rootfs")
    assert rootfs is not None  # click: required=True
    request = ImageRegisterRequest(name=name, rootfs=rootfs, kernel_ref=kernel_ref, **where)
    reply = session.client().images.register(request)
    if as_json:
        emit_json(reply)
    else:
        click.echo(f"registered image {reply.name} (unmanaged: banger uses your files)")


@image.command("pull")
@click.argument("ref")
@click.option(
    "--name", metavar="NAME", help="Image name (default from REF: debian:12 → debian-12)."
)
@click.option("--kernel-ref", metavar="NAME", help="Kernel of the local store the image boots.")
@click.option(
    "--size",
    type=IMAGE_SIZE,
    metavar="SIZE",
    help="rootfs.ext4 size like 4G (default max(tree * 1.25, 1G)).",
)
@json_option
@click.pass_obj
def image_pull(
    session: Session,
    ref: str,
    *,
    name: str | None,
    kernel_ref: str | None,
    size: int | None,
    as_json: bool,
) -> None:
    """Pull the OCI image REF (linux/amd64) and make it a bootable image.

    REF is [REGISTRY[:PORT]/]NAME[:TAG][@sha256:DIGEST]; Docker Hub is the default
    registry. Blobs are cached by digest, so pulling again is quick. `--json` prints
    the progress as NDJSON events.
    """
    from banger.oci.reference import default_name, parse_reference

    reference = parse_reference(ref)  # here too, so a typo fails before the daemon starts
    # Without --name the daemon picks it: a bare catalog name (`debian-bookworm`) obtains
    # that catalog image, anything else gets a name made from the reference.
    default_name(reference)
    if name is not None:
        validate_name(name, kind="image")
    if kernel_ref is not None:
        validate_name(kernel_ref)
    # --size was checked against the service's bounds as click parsed it (IMAGE_SIZE).
    request = ImagePullRequest(ref=ref, name=name, kernel_ref=kernel_ref, size_bytes=size)
    result = follow_stream(session.client().images.pull(request), as_json=as_json)
    if as_json:
        return
    digest = result.source_digest or ""
    origin = f"{result.source} ({digest[:19]}…)" if digest else result.source
    click.echo(f"pulled image {result.name} from {origin}")
    if not result.kernel_name:
        click.echo(
            "note: no kernel recorded; `vm create` needs one: pull again with --kernel-ref NAME "
            "(`banger kernel list`); the blobs are cached"
        )


@image.command("promote")
@click.argument("name", shell_complete=complete_image_names)
@json_option
@click.pass_obj
def image_promote(session: Session, name: str, as_json: bool) -> None:
    """Copy a registered image's files into banger's store (images/NAME/).

    Your original files are left untouched. `--json` prints NDJSON progress events.
    """
    result = follow_stream(session.client().images.promote(name), as_json=as_json)
    if not as_json:
        click.echo(f"promoted image {result.name}: its files are now managed by banger")


@image.command("list")
@click.option("--available", is_flag=True, help="List the image catalog instead.")
@json_option
@click.pass_obj
def image_list(session: Session, available: bool, as_json: bool) -> None:
    """List local images, or with --available the catalog's (what each holds, its size)."""
    if available:
        _list_available(session, as_json=as_json)
        return
    images = session.client().images.list()
    if as_json:
        emit_json(images)
        return
    rows = [
        (
            i.name,
            "managed" if i.managed else "registered",
            i.kernel_name or ("path" if i.kernel_path else "-"),
            format_size(i.size_bytes) if i.size_bytes else "-",
            i.source,
        )
        for i in images
    ]
    emit_table(("NAME", "KIND", "KERNEL", "SIZE", "SOURCE"), rows, empty="no images")


@image.command("show")
@click.argument("name", shell_complete=complete_image_names)
@json_option
@click.pass_obj
def image_show(session: Session, name: str, as_json: bool) -> None:
    """Show one image."""
    reply = session.client().images.get(name)
    if as_json:
        emit_json(reply)
    else:
        show_record(reply)


@image.command("delete")
@click.argument(
    "names", nargs=-1, required=True, metavar="NAME...", shell_complete=complete_image_names
)
@click.pass_obj
def image_delete(session: Session, names: tuple[str, ...]) -> None:
    """Delete images; refused while a VM uses one. Registered files are never deleted."""
    images = session.client().images
    for name in names:
        reply = images.delete(name)
        kept = "" if reply.files_removed else " (files left in place)"
        click.echo(f"deleted image {name}{kept}")


def _list_available(session: Session, *, as_json: bool) -> None:
    entries = session.client().images.catalog()
    if as_json:
        emit_json(entries)
        return
    for index, e in enumerate(entries):
        if index:
            click.echo()
        local = "local" if e.local else "obtained on first use"
        click.echo(f"{e.name}  ({format_size(e.size_bytes)} ext4, {local})")
        click.echo(f"  {e.description}")
        click.echo(f"  packages: {' '.join(e.packages) or '-'}")
        for source in e.sources:
            click.echo(f"  source: {source}")
    if not entries:
        click.echo("the image catalog is empty")
