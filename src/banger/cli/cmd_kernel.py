"""``banger kernel import|pull|list|show|rm``: the local kernel store (docs/kernels.md)
and the kernel catalog (docs/catalog.md)."""

from __future__ import annotations

import os

import click

from banger.cli.completion import complete_kernel_names
from banger.cli.output import emit_json, emit_kv, emit_table, follow_stream
from banger.cli.session import Session
from banger.model.api_types import KernelImportRequest, KernelPullRequest, to_json
from banger.model.artifact_names import validate_name

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def absolute(path: str) -> str:
    """``path`` made absolute against the CLI's cwd: the daemon's cwd means nothing."""
    # abspath, not resolve(): a symlink the user named stays the path recorded.
    return os.path.abspath(path)  # noqa: PTH100


def show_record(reply: object, *, skip: tuple[str, ...] = ()) -> None:
    """Every field of a reply type, ``-`` for unset ones, in the daemon's order."""
    fields = to_json(reply).items()
    emit_kv([(k, "-" if v is None else v) for k, v in fields if k not in skip])


@click.group()
def kernel() -> None:
    """Manage kernels in the local store (docs/kernels.md)."""


@kernel.command("import")
@click.argument("name")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="DIR",
    help="Directory holding the kernel: boot/vmlinuz-<v>, lib/modules/<v>, ...",
)
@click.option("--force", is_flag=True, help="Replace a kernel of the same name.")
@json_option
@click.pass_obj
def kernel_import(session: Session, name: str, source: str, force: bool, as_json: bool) -> None:
    """Import the kernel found in DIR as NAME.

    Keeps an ELF vmlinux (extracted from a bzImage when needed), the bzImage, an initrd
    (built from the modules when DIR has none) and the modules. `--json` prints the
    progress as NDJSON events.
    """
    validate_name(name)  # here too, so the message is ours and not the schema's
    request = KernelImportRequest(name=name, source_dir=absolute(source), force=force)
    result = follow_stream(session.client().kernels.import_(request), as_json=as_json)
    if not as_json:
        version = result.version or "unknown version"
        click.echo(f"imported kernel {result.name} ({version}) into {result.dir_path}")


@kernel.command("pull")
@click.argument("name")
@click.option("--force", is_flag=True, help="Download again and replace the stored kernel.")
@json_option
@click.pass_obj
def kernel_pull(session: Session, name: str, force: bool, as_json: bool) -> None:
    """Fetch kernel NAME of the catalog into the store.

    `banger kernel list --available` shows the catalog. The download is checked
    against the catalog's sha256; an entry without one is trusted on first use (its
    sha256 is recorded, later pulls must match it), and the pull says so.
    """
    validate_name(name)
    request = KernelPullRequest(name=name, force=force)
    result = follow_stream(session.client().kernels.pull(request), as_json=as_json)
    if not as_json:
        version = result.version or "unknown version"
        click.echo(f"kernel {result.name} ({version}) is in {result.dir_path}")


@kernel.command("list")
@click.option("--available", is_flag=True, help="List the kernel catalog instead.")
@json_option
@click.pass_obj
def kernel_list(session: Session, available: bool, as_json: bool) -> None:
    """List local kernels, or with --available the catalog's."""
    if available:
        _list_available(session, as_json=as_json)
        return
    kernels = session.client().kernels.list()
    if as_json:
        emit_json(kernels)
        return
    rows = [
        (
            k.name,
            k.version or "-",
            k.distro or "-",
            k.arch,
            "yes" if k.has_initrd else "no",
            k.source,
        )
        for k in kernels
    ]
    columns = ("NAME", "VERSION", "DISTRO", "ARCH", "INITRD", "SOURCE")
    emit_table(columns, rows, empty="no kernels")


def _list_available(session: Session, *, as_json: bool) -> None:
    entries = session.client().kernels.catalog()
    if as_json:
        emit_json(entries)
        return
    rows = [
        (
            e.name,
            e.version or "(archive's)",
            e.distro,
            e.format,
            "yes" if e.verified else "no (recorded on first pull)",
            "yes" if e.local else "no",
        )
        for e in entries
    ]
    columns = ("NAME", "VERSION", "DISTRO", "FORMAT", "VERIFIED", "LOCAL")
    emit_table(columns, rows, empty="the kernel catalog is empty")


@kernel.command("show")
@click.argument("name", shell_complete=complete_kernel_names)
@json_option
@click.pass_obj
def kernel_show(session: Session, name: str, as_json: bool) -> None:
    """Show one kernel and its manifest."""
    reply = session.client().kernels.get(name)
    if as_json:
        emit_json(reply)
        return
    show_record(reply, skip=("manifest",))
    # The manifest is the kernel store's own free-form record (banger.kernels.store),
    # not part of the API's contract: read defensively.
    manifest = reply.manifest or {}
    files = manifest.get("files") or {}
    emit_kv([("initrd", manifest.get("initrd_origin", "-"))])
    for entry, info in files.items():
        origin = f" ({info.get('origin')})" if isinstance(info, dict) and "origin" in info else ""
        emit_kv([(f"file {entry}", f"{reply.dir_path}/{entry}{origin}")])


@kernel.command("rm")
@click.argument(
    "names", nargs=-1, required=True, metavar="NAME...", shell_complete=complete_kernel_names
)
@click.pass_obj
def kernel_rm(session: Session, names: tuple[str, ...]) -> None:
    """Remove kernels; refused while an image uses one."""
    kernels = session.client().kernels
    for name in names:
        kernels.delete(name)
        click.echo(f"removed kernel {name}")
