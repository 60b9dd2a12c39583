"""``banger vm …``: create, start, stop, restart, kill, delete, set, show, list, logs,
stats, ssh and exec (and cp, from ``cmd_cp``). Commands that take several names run them
concurrently."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import click

from banger.cli.cmd_cp import cp
from banger.cli.cmd_exec import exec_
from banger.cli.cmd_run import run
from banger.cli.cmd_workspace import workspace
from banger.cli.completion import complete_vm_names
from banger.cli.output import emit_json, emit_kv, emit_table, follow_stream
from banger.cli.session import Session
from banger.cli.vm_common import create_options, create_request, create_vm, run_ssh, ssh_command
from banger.cli.vm_options import DISK_SIZE, MEMORY, VCPU
from banger.errors import BangerError
from banger.model import limits
from banger.model.api_types import KillRequest, SetVmRequest, SignalName, VmInfo
from banger.model.units import format_amount, format_size

if TYPE_CHECKING:
    from banger.client.facade import Progress

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def vm() -> None:
    """Create and manage VMs."""


@vm.command()
@create_options
@json_option
@click.pass_obj
def create(session: Session, /, as_json: bool, **options: Any) -> None:
    """Create a VM and boot it; prints a spec line, then each stage as it happens.

    Interrupted (Ctrl-C, a closed terminal), the daemon finishes the VM and keeps it."""
    from banger.cli.interrupt import hangup_is_interrupt

    with hangup_is_interrupt():
        result = create_vm(session, create_request(**options), as_json=as_json)
    if not as_json:
        click.echo(_running_line(result))


def _running_line(vm: VmInfo) -> str:
    if vm.state != "running":
        return f"{vm.name} is {vm.state}"
    return f"{vm.name} is running at {_address(vm)} (banger vm ssh {vm.name})"


def _address(vm: VmInfo) -> str:
    """The bridge address, or (rootless) where its SSH is forwarded from."""
    if vm.ip:
        return vm.ip
    return f"127.0.0.1:{vm.ssh_port} (ssh, rootless)" if vm.ssh_port else "-"


def _each(names: tuple[str, ...], action: Callable[[str], str]) -> int:
    """Run ``action`` for every name concurrently; print one line per name."""
    from concurrent.futures import ThreadPoolExecutor  # with logging: ~3 ms

    from banger.cli.render import format_error

    failed = 0
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        futures = [pool.submit(action, name) for name in names]
        for future in futures:
            try:
                click.echo(future.result())
            except BangerError as err:
                failed += 1
                sys.stderr.write(format_error(err, debug=False))
    return 1 if failed else 0


@vm.command()
@click.argument("names", nargs=-1, required=True, shell_complete=complete_vm_names)
@json_option
@click.pass_obj
def start(session: Session, names: tuple[str, ...], as_json: bool) -> int:
    """Boot stopped VMs (several names boot concurrently)."""
    return _streamed_each(names, session.client().vms.start, as_json=as_json)


def _streamed_each(
    names: tuple[str, ...], action: Callable[[str], Progress[VmInfo]], *, as_json: bool
) -> int:
    """One VM: show its stages live. Several: run them concurrently, one line each."""
    if len(names) == 1:
        info = follow_stream(action(names[0]), as_json=as_json)
        if not as_json:  # the stages say how; this line says where it ended up
            click.echo(_running_line(info))
        return 0
    return _each(names, lambda name: f"{name}: {action(name).wait().state}")


@vm.command()
@click.argument("names", nargs=-1, required=True, shell_complete=complete_vm_names)
@click.pass_obj
def stop(session: Session, names: tuple[str, ...]) -> int:
    """Stop VMs gracefully (then forcefully after a timeout). Stopped VMs stay stopped."""
    vms = session.client().vms
    return _each(names, lambda n: f"{n}: {vms.stop(n).state}")


@vm.command()
@click.argument("names", nargs=-1, required=True, shell_complete=complete_vm_names)
@json_option
@click.pass_obj
def restart(session: Session, names: tuple[str, ...], as_json: bool) -> int:
    """Stop and boot VMs again."""
    return _streamed_each(names, session.client().vms.restart, as_json=as_json)


@vm.command()
@click.argument("names", nargs=-1, required=True, shell_complete=complete_vm_names)
@click.option(
    "--signal",
    "sig",
    default=limits.DEFAULT_SIGNAL,
    show_default=True,
    type=click.Choice(limits.SIGNALS),
    help="Signal to send to the VMM process.",
)
@click.pass_obj
def kill(session: Session, names: tuple[str, ...], sig: str) -> int:
    """Send a signal to the VMs' VMM processes (default: SIGKILL)."""
    vms = session.client().vms
    request = KillRequest(signal=cast("SignalName", sig))  # click.Choice(limits.SIGNALS)
    return _each(names, lambda n: f"{n}: {vms.kill(n, request).state}")


@vm.command()
@click.argument("names", nargs=-1, required=True, shell_complete=complete_vm_names)
@click.option("-f", "--force", is_flag=True, help="Kill running VMs instead of refusing.")
@click.pass_obj
def delete(session: Session, names: tuple[str, ...], force: bool) -> int:
    """Delete VMs and their disks. A running VM is refused unless --force."""
    vms = session.client().vms
    return _each(names, lambda n: f"{vms.delete(n, force=force).deleted}: deleted")


@vm.command("set")
@click.argument("name", shell_complete=complete_vm_names)
@click.option("--vcpu", type=VCPU, help=f"Virtual CPUs, {limits.VCPU_MIN} to {limits.VCPU_MAX}.")
@click.option(
    "--memory",
    type=MEMORY,
    help=f"Memory: MiB, or a size like 2G; at least {format_amount(limits.MEMORY_MIB_MIN, 'MiB')}.",
)
@click.option(
    "--disk-size",
    type=DISK_SIZE,
    help="Grow the /root work disk to this size, like 16G (it cannot shrink).",
)
@json_option
@click.pass_obj
def set_(
    session: Session,
    *,
    name: str,
    vcpu: int | None,
    memory: int | None,
    disk_size: int | None,
    as_json: bool,
) -> None:
    """Change a stopped VM's vCPUs, memory or work-disk size (zero or negative is an error)."""
    request = SetVmRequest(
        vcpu=vcpu,
        memory_mib=memory,
        disk_size_bytes=disk_size,  # checked by their types
    )
    if request == SetVmRequest():
        raise click.UsageError("nothing to change: give --vcpu, --memory or --disk-size")
    reply = session.client().vms.set(name, request)
    if as_json:
        emit_json(reply)
    else:
        click.echo(
            f"{name}: {reply.vcpu} vcpu · {reply.memory_mib} MiB · "
            f"{format_size(reply.disk_size_bytes)} disk"
        )


@vm.command("list")
@json_option
@click.pass_obj
def list_(session: Session, as_json: bool) -> None:
    """List VMs with their state, size and address."""
    vms = session.client().vms.list()
    if as_json:
        emit_json(vms)
        return
    rows = [
        (
            v.name,
            v.state,
            v.vcpu,
            f"{v.memory_mib} MiB",
            format_size(v.disk_size_bytes),
            v.ip or (f"127.0.0.1:{v.ssh_port}" if v.ssh_port else "-"),
            v.vmm or "-",
        )
        for v in vms
    ]
    emit_table(("NAME", "STATE", "VCPU", "MEMORY", "DISK", "IP", "VMM"), rows, empty="no VMs")


@vm.command()
@click.argument("name", shell_complete=complete_vm_names)
@json_option
@click.pass_obj
def show(session: Session, name: str, as_json: bool) -> None:
    """Show a VM: state, image, size, address. --json adds everything the daemon records
    (ids, process, TAP, MAC, directory)."""
    client = session.client()
    reply = client.vms.get(name)
    if as_json:
        emit_json(reply)
        return
    images = {i.id: i.name for i in client.images.list()} if reply.image_id is not None else {}
    emit_kv(show_rows(reply, images.get(reply.image_id)))


def show_rows(vm: VmInfo, image_name: str | None) -> list[tuple[str, object]]:
    """``vm show``'s lines: what a user asks about a VM, in units; ids and internals
    (pid, boot id, TAP, MAC, paths) are for ``--json``."""
    rows: list[tuple[str, object]] = [("name", vm.name), ("state", vm.state)]
    if vm.last_error:
        rows.append(("last error", vm.last_error))
    if image_name is None:
        image_name = "(deleted)" if vm.image_id is not None else "-"
    rows += [
        ("image", image_name),
        ("vmm", vm.vmm or "-"),
        ("vcpu", vm.vcpu),
        ("memory", f"{vm.memory_mib} MiB"),
        ("disk", format_size(vm.disk_size_bytes)),
        ("address", _address(vm)),
        ("nat", "yes" if vm.nat else "no"),
        ("created", vm.created_at),
    ]
    if vm.stopped_at:
        rows.append(("stopped", vm.stopped_at))
    return rows


@vm.command()
@click.argument("name", shell_complete=complete_vm_names)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output.")
@click.option(
    "--vmm",
    "source",
    flag_value="vmm",
    default=False,
    help="Show the VMM's own log instead of the guest console.",
)
@click.pass_obj
def logs(session: Session, name: str, follow: bool, source: str | bool) -> None:
    """Show a VM's serial console log (or, with --vmm, the VMM's log)."""
    vms = session.client().vms
    which = "vmm" if source == "vmm" else "console"
    chunk = vms.logs(name, source=which)
    sys.stdout.write(chunk.data)
    if not chunk.data:  # silence would look like a failure; stdout stays the log alone
        what = "VMM log" if which == "vmm" else "console log"
        sys.stderr.write(f"banger: the {what} of {name} is empty ({chunk.path})\n")
    while follow:
        sys.stdout.flush()
        time.sleep(0.5)
        chunk = vms.logs(name, source=which, offset=chunk.offset)
        sys.stdout.write(chunk.data)


@vm.command()
@click.argument("name", shell_complete=complete_vm_names)
@json_option
@click.pass_obj
def stats(session: Session, name: str, as_json: bool) -> None:
    """CPU time and memory of the VM's VMM process (from /proc)."""
    reply = session.client().vms.stats(name)
    if as_json:
        emit_json(reply)
        return
    rss = reply.rss_bytes
    emit_kv(
        [
            ("name", reply.name),
            ("state", reply.state),
            ("pid", reply.pid or "-"),
            ("cpu", "-" if reply.cpu_seconds is None else f"{reply.cpu_seconds} s"),
            ("memory", "-" if rss is None else f"{rss // 1024**2} MiB"),
            ("uptime", "-" if reply.uptime_s is None else f"{reply.uptime_s} s"),
        ]
    )


@vm.command(context_settings={"ignore_unknown_options": True})
@click.argument("name", shell_complete=complete_vm_names)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def ssh(session: Session, name: str, command: tuple[str, ...]) -> int:
    """Open a shell in the VM, or run `-- COMMAND…` there and exit with its status.

    Several words run as exactly that argv (`-- sh -c 'exit 7'`); a single word is
    handed to the guest's shell as a command line (`-- 'ls | wc -l'`).
    """
    code = run_ssh(session, name, ssh_command(session, name, command))
    if not command:
        # An interactive session ended: the VM did not (SPEC §8).
        sys.stderr.write(f"banger: {name} is still running (banger vm stop {name})\n")
    return code


@vm.command()
@click.argument("name", shell_complete=complete_vm_names)
@json_option
@click.pass_obj
def health(session: Session, name: str, as_json: bool) -> None:
    """Ask the VM's guest agent whether the guest is up (agent images only)."""
    reply = session.client().vms.health(name)
    if as_json:
        emit_json(reply)
        return
    h = reply.health
    emit_kv(
        [
            ("vm", reply.vm),
            ("ok", h.ok),
            ("hostname", h.hostname),
            ("uptime", f"{h.uptime_s} s"),
            ("agent", h.agent_version),
        ]
    )


@vm.command()
@click.argument("name", shell_complete=complete_vm_names)
@json_option
@click.pass_obj
def ports(session: Session, name: str, as_json: bool) -> None:
    """Listening ports in the VM: PROTO ENDPOINT PROCESS COMMAND, web ones as links."""
    from banger.guest.ports import COLUMNS, PortEntry, rows

    reply = session.client().vms.ports(name)
    if as_json:
        emit_json(reply)
        return
    entries = [PortEntry.from_dict(d) for d in reply.ports]
    emit_table(COLUMNS, rows(name, entries), empty="no listening ports")


vm.add_command(run)
vm.add_command(exec_)
vm.add_command(cp)
vm.add_command(workspace)
