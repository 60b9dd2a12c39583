"""What `vm create` and `vm run` share: their options, the request body, the spec line,
following the create stream, and the ssh command line for a VM.

Owns: turning options into the API's create request (units checked here, ADVERSARIAL 47)
and the exact ssh invocation (banger's key, the VM's own known_hosts, strict checking,
keepalives), and saying why a session was lost when the VM went away under it.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from banger.cli.interrupt import follow_create
from banger.cli.session import Session
from banger.cli.vm_options import BOOT_TIMEOUT, DISK_SIZE, MEMORY, VCPU, ResolvedDefault
from banger.errors import BangerError, InvalidState, NotFound
from banger.guest.ssh_argv import ssh_prefix
from banger.model import limits
from banger.model.api_types import CreateVmRequest, VmDefaults, VmInfo, VmmName
from banger.model.records import not_running
from banger.model.units import format_amount, format_size

F = TypeVar("F", bound=Callable[..., Any])

#: ssh's own exit status for "the connection failed" (the remote command's otherwise).
SSH_FAILED = 255

_OPTIONS = (
    click.option("--name", help="VM name (default: a generated adjective-noun)."),
    click.option("--image", help="Image to boot (default: default_image_name in config)."),
    click.option(
        "--vcpu",
        type=VCPU,
        cls=ResolvedDefault,
        field="vcpu",
        help=f"Virtual CPUs, {limits.VCPU_MIN} to {limits.VCPU_MAX}.",
    ),
    click.option(
        "--memory",
        type=MEMORY,
        cls=ResolvedDefault,
        field="memory_mib",
        help=(
            "Memory: MiB, or a size like 2G; at least "
            f"{format_amount(limits.MEMORY_MIB_MIN, 'MiB')}."
        ),
    ),
    click.option(
        "--disk-size",
        type=DISK_SIZE,
        cls=ResolvedDefault,
        field="disk_size_bytes",
        help=(
            "Size of the /root work disk, like 8G; at least "
            f"{format_amount(limits.DISK_SIZE_MIN_BYTES, 'bytes')}."
        ),
    ),
    click.option("--nat", is_flag=True, help="Give the VM outbound network access (NAT)."),
    click.option("--vmm", type=click.Choice(limits.VMMS), help="Force a VMM."),
    click.option(
        "--boot-timeout",
        default=limits.BOOT_TIMEOUT_S_DEFAULT,
        show_default=True,
        type=BOOT_TIMEOUT,
        help=(
            "Seconds to wait for the guest to answer (its agent, or SSH), "
            f"{limits.BOOT_TIMEOUT_S_MIN} to {limits.BOOT_TIMEOUT_S_MAX}."
        ),
    ),
)


def create_options(func: F) -> F:
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def create_request(
    *,
    name: str | None,
    image: str | None,
    vcpu: int | None,
    memory: int | None,
    disk_size: int | None,
    nat: bool,
    vmm: str | None,
    boot_timeout: int,
    delete_on_disconnect: bool = False,
) -> CreateVmRequest:
    return CreateVmRequest(
        name=name,
        image=image,
        vcpu=vcpu,  # checked while click parsed them (banger.cli.vm_options)
        memory_mib=memory,
        disk_size_bytes=disk_size,
        nat=nat,
        vmm=cast("VmmName | None", vmm),  # click.Choice(limits.VMMS) admitted it
        boot_timeout_s=boot_timeout,
        delete_on_disconnect=delete_on_disconnect or None,  # left out unless asked
    )


def spec_line(request: CreateVmRequest, defaults: VmDefaults) -> str:
    vcpu = defaults.vcpu.value if request.vcpu is None else request.vcpu
    mem = defaults.memory_mib.value if request.memory_mib is None else request.memory_mib
    disk = defaults.disk_size_bytes.value
    if request.disk_size_bytes is not None:
        disk = request.disk_size_bytes
    return f"spec: {vcpu} vcpu · {mem} MiB · {format_size(disk)} disk"


def create_vm(session: Session, request: CreateVmRequest, *, as_json: bool) -> VmInfo:
    """Print the spec line (not with --json), follow the create stream, return the VM.
    Interrupted, it says what becomes of the VM (``banger.cli.interrupt``)."""
    client = session.client()
    if not as_json:
        click.echo(spec_line(request, client.vms.defaults()))
    return follow_create(client, request, as_json=as_json)


def remote_command(words: tuple[str, ...], *, cwd: str | None = None) -> str:
    """ssh hands the guest one string for its shell; keep several words as exact argv."""
    line = words[0] if len(words) == 1 else shlex.join(words)
    return f"cd {shlex.quote(cwd)} && {line}" if cwd else line


def ssh_command(
    session: Session, name: str, command: tuple[str, ...], *, cwd: str | None = None
) -> list[str]:
    info = session.client().vms.ssh_info(name)
    host = info.host or info.ip
    if info.state != "running" or not host:
        brief, hint = not_running(name, info.state)
        raise InvalidState(brief, hint=hint)
    argv = ssh_prefix(
        info.key,
        info.known_hosts,
        user=info.user,
        port=info.port,
        host_key_alias=info.host_key_alias,
    )
    interactive = not command and sys.stdin.isatty()
    argv += ["-t"] if interactive else []
    if command:
        return [*argv, host, "--", remote_command(command, cwd=cwd)]
    if cwd:
        return [*argv, host, "--", f'cd {shlex.quote(cwd)} && exec "${{SHELL:-/bin/sh}}" -l']
    return [*argv, host]


def run_ssh(session: Session, name: str, argv: list[str]) -> int:
    """Run ``argv`` (from ``ssh_command``); returns its exit status. When ssh itself
    failed, say whether the VM stopped under it (ssh's own message is below LogLevel)."""
    import subprocess

    code = subprocess.run(argv, check=False).returncode
    if code == SSH_FAILED:
        lost = _why_lost(session, name)
        if lost:
            sys.stderr.write(f"banger: lost the connection to {name}: {lost}\n")
    return code


def _why_lost(session: Session, name: str) -> str | None:
    try:
        vm = session.client().vms.get(name)
    except NotFound:
        return "the VM no longer exists"
    except BangerError:
        return None
    if vm.state == "running":
        return None
    reason = f" ({vm.last_error})" if vm.last_error else ""
    return f"the VM is {vm.state}{reason}"
