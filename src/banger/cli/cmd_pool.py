"""``banger pool status|drain|fill``: the warm pool of ready VMs (docs/config.md)."""

from __future__ import annotations

import click

from banger.cli.output import emit_json, emit_table
from banger.cli.session import Session
from banger.model import units

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def pool() -> None:
    """The warm pool: VMs booted ahead so that `vm run`/`vm create` need not boot."""


@pool.command()
@json_option
@click.pass_obj
def status(session: Session, as_json: bool) -> None:
    """Per pooled image: ready VMs wanted, ready and booting, and the last error."""
    reply = session.client().pool.status()
    if as_json:
        emit_json(reply)
        return
    emit_table(
        ["IMAGE", "WANTED", "READY", "BOOTING", "SPEC", "WHY"],
        (
            [
                p.image,
                p.wanted,
                p.ready,
                p.booting,
                f"{p.vcpu} vcpu · {p.memory_mib} MiB · {units.format_size(p.disk_size_bytes)}",
                p.why,
            ]
            for p in reply.images
        ),
        empty="no pool configured",
    )
    for p in reply.images:
        if p.waiting:
            click.echo(f"{p.image}: waiting: {p.waiting}")
        if p.last_error:
            click.echo(f"{p.image}: last error: {p.last_error}")
    if reply.paused:
        click.echo("drained: `banger pool fill` refills it")


@pool.command()
@json_option
@click.pass_obj
def drain(session: Session, as_json: bool) -> None:
    """Remove every ready pool VM and stop refilling until `banger pool fill`."""
    reply = session.client().pool.drain()
    if as_json:
        emit_json(reply)
        return
    click.echo(f"removed {len(reply.removed)} pool VM(s); refilling stopped")


@pool.command()
@json_option
@click.pass_obj
def fill(session: Session, as_json: bool) -> None:
    """Refill the pool in the background (after a drain)."""
    reply = session.client().pool.fill()
    if as_json:
        emit_json(reply)
        return
    click.echo(f"pool: {reply.summary}")
