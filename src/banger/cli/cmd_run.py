"""``banger vm run``: a fresh VM and a shell or a command in it, in one step (SPEC §7).

Owns: the run flow — create (spec line, live stages), then an interactive shell (SSH) or
the command after ``--`` with its exit status (through the guest agent, ``vm exec``'s
path; over SSH when the guest has no agent, said once on stderr), then ``--rm`` cleanup
(any exit status; Ctrl-C and a closed terminal too: ``banger.cli.interrupt``; a VM that
never became reachable is kept for `vm logs` and the error says so).
Must not: duplicate create/ssh logic (``vm_common`` has it).
"""

from __future__ import annotations

from typing import Any

import click

from banger.cli.interrupt import hangup_is_interrupt, remove_vm, say
from banger.cli.session import Session
from banger.cli.vm_common import create_options, create_request, create_vm, run_ssh, ssh_command
from banger.cli.workspace_options import (
    RUN_ARGV,
    WORKSPACE_KEYS,
    RunCommand,
    run_workspace_options,
)


@click.command(cls=RunCommand)
@create_options
@click.option(
    "--rm",
    "remove",
    is_flag=True,
    help="Delete the VM when the shell or command ends (whatever its status).",
)
@run_workspace_options
@click.argument("path", required=False)
@click.pass_context
def run(
    ctx: click.Context, /, *, path: str | None, remove: bool, dry_run: bool, **options: Any
) -> int:
    """Create a VM and open a shell in it, or run `-- COMMAND…` and exit with its status.

    The VM starts from the default image (obtained automatically the first time) unless
    --image says otherwise. With --rm it is deleted afterwards. Several words after `--`
    run as exactly that argv; one word is a shell command line.
    """
    from banger.cli.run_workspace import plan_for_run, prepare_for_run, print_run_plan

    # A VM that never became reachable is kept even with --rm: the daemon's error names
    # it and points at `banger vm logs`.
    session: Session = ctx.obj
    command: tuple[str, ...] = ctx.meta[RUN_ARGV]
    ws = {key: options.pop(key) for key in WORKSPACE_KEYS}
    if path is None and (dry_run or any(ws.values())):
        raise click.UsageError("--dry-run, --include-untracked, --branch and --from need a PATH")
    # Planned once, before a VM exists: a bare repo, submodules… are refused first.
    plan = plan_for_run(path, **ws) if path is not None else None
    if plan is not None and dry_run:
        print_run_plan(plan)
        return 0
    with hangup_is_interrupt():  # a closed terminal cleans up as Ctrl-C does
        request = create_request(**options, delete_on_disconnect=remove)
        name = create_vm(session, request, as_json=False).name
        try:
            cwd, agent = prepare_for_run(session, name, plan) if plan else (None, True)
            if command:
                # A guest whose agent did not take the copy has none: straight to ssh.
                code = _run_command(session, name, command, cwd) if agent else None
                if code is not None:
                    return code
            argv = ssh_command(session, name, command, cwd=cwd)
            return run_ssh(session, name, argv)
        finally:
            if remove:
                remove_vm(session.client(), name)
            else:
                say(f"{name} is still running (banger vm delete --force {name})")


def _run_command(
    session: Session, name: str, command: tuple[str, ...], cwd: str | None
) -> int | None:
    """The command through the guest agent; None when the guest has none (use SSH)."""
    from banger.cli.cmd_exec import command_argv, exec_command
    from banger.errors import AgentUnavailable

    try:
        return exec_command(session, name, command_argv(command), cwd=cwd)
    except AgentUnavailable:
        say(f"the guest agent of {name} does not answer; using ssh")
        return None
