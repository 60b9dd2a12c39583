"""What `vm create` and `vm run` share: their options, the request body, the spec line,
following the create stream, and the ssh command line for a VM.

Owns: turning options into the API's create body (units checked here, ADVERSARIAL 47)
and the exact ssh invocation (banger's key, the VM's own known_hosts, strict checking,
keepalives), and saying why a session was lost when the VM went away under it.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import click

from banger.cli.output import follow_stream
from banger.cli.session import Session
from banger.cli.vm_options import ResolvedDefault, memory_mib, size_bytes, vcpu_count
from banger.errors import BadResponse, BangerError, InvalidState, NotFound
from banger.guest.ssh_argv import ssh_prefix
from banger.model.units import format_size

F = TypeVar("F", bound=Callable[..., Any])

#: ssh's own exit status for "the connection failed" (the remote command's otherwise).
SSH_FAILED = 255

_OPTIONS = (
    click.option("--name", help="VM name (default: a generated adjective-noun)."),
    click.option("--image", help="Image to boot (default: default_image_name in config)."),
    click.option("--vcpu", cls=ResolvedDefault, field="vcpu", help="Virtual CPUs."),
    click.option(
        "--memory", cls=ResolvedDefault, field="memory_mib", help="Memory: MiB, or a size like 2G."
    ),
    click.option(
        "--disk-size",
        cls=ResolvedDefault,
        field="disk_size_bytes",
        help="Size of the /root work disk, like 8G.",
    ),
    click.option("--nat", is_flag=True, help="Give the VM outbound network access (NAT)."),
    click.option("--vmm", type=click.Choice(["firecracker", "qemu"]), help="Force a VMM."),
    click.option(
        "--boot-timeout",
        default=300,
        show_default=True,
        type=click.IntRange(1, 3600),
        help="Seconds to wait for the guest to answer (its agent, or SSH).",
    ),
)


def create_options(func: F) -> F:
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def create_body(
    *,
    name: str | None,
    image: str | None,
    vcpu: str | None,
    memory: str | None,
    disk_size: str | None,
    nat: bool,
    vmm: str | None,
    boot_timeout: int,
) -> dict[str, Any]:
    body: dict[str, Any] = {"nat": nat, "boot_timeout_s": boot_timeout}
    for key, value in (("name", name), ("image", image), ("vmm", vmm)):
        if value is not None:
            body[key] = value
    if vcpu is not None:
        body["vcpu"] = vcpu_count(vcpu)
    if memory is not None:
        body["memory_mib"] = memory_mib(memory)
    if disk_size is not None:
        body["disk_size_bytes"] = size_bytes(disk_size, what="--disk-size")
    return body


def spec_line(body: dict[str, Any], defaults: dict[str, Any]) -> str:
    vcpu = body.get("vcpu", defaults["vcpu"]["value"])
    mem = body.get("memory_mib", defaults["memory_mib"]["value"])
    disk = body.get("disk_size_bytes", defaults["disk_size_bytes"]["value"])
    return f"spec: {vcpu} vcpu · {mem} MiB · {format_size(disk)} disk"


def create_vm(session: Session, body: dict[str, Any], *, as_json: bool) -> dict[str, Any]:
    """Print the spec line (not with --json), follow the create stream, return the VM."""
    client = session.client()
    if not as_json:
        click.echo(spec_line(body, client.get("/vm-defaults")))
    result = follow_stream(client.stream("POST", "/vms", body), as_json=as_json)
    if not isinstance(result, dict):
        raise BadResponse("the create stream ended without the VM")
    return result


def remote_command(words: tuple[str, ...], *, cwd: str | None = None) -> str:
    """ssh hands the guest one string for its shell; keep several words as exact argv."""
    line = words[0] if len(words) == 1 else shlex.join(words)
    return f"cd {shlex.quote(cwd)} && {line}" if cwd else line


def ssh_command(
    session: Session, name: str, command: tuple[str, ...], *, cwd: str | None = None
) -> list[str]:
    info = session.client().get(f"/vms/{quote(name, safe='')}/ssh")
    if info["state"] != "running" or not info["ip"]:
        raise InvalidState(
            f"VM {name!r} is {info['state']}, not running", hint=f"`banger vm start {name}`"
        )
    argv = ssh_prefix(info["key"], info["known_hosts"], user=info["user"])
    interactive = not command and sys.stdin.isatty()
    argv += ["-t"] if interactive else []
    if command:
        return [*argv, info["ip"], "--", remote_command(command, cwd=cwd)]
    if cwd:
        return [*argv, info["ip"], "--", f'cd {shlex.quote(cwd)} && exec "${{SHELL:-/bin/sh}}" -l']
    return [*argv, info["ip"]]


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
        vm = session.client().get(f"/vms/{quote(name, safe='')}")
    except NotFound:
        return "the VM no longer exists"
    except BangerError:
        return None
    if vm["state"] == "running":
        return None
    reason = f" ({vm['last_error']})" if vm.get("last_error") else ""
    return f"the VM is {vm['state']}{reason}"
