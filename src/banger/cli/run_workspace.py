"""A host repository put into a VM, as the CLI shows it: the ``--dry-run`` report, the
warnings and summary lines, and the shell the copy runs through (the guest agent, ssh
when there is none: ``banger.client.agent_shell``) — shared by ``vm run PATH`` and
``vm workspace prepare`` (SPEC §7).

Owns: presentation and the wiring to the VM (its ssh command from the daemon). Must not:
decide what is copied or copy it (``banger.workspace.plan`` and ``banger.workspace.send``
do), or plan twice: ``vm run`` plans once, before the VM exists, and sends that plan.
Loaded only when a command copies a workspace: what click needs to build the commands is
in ``workspace_options``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO

from banger.cli.session import Session
from banger.client.agent_shell import AgentShell
from banger.model.workspace_modes import DEFAULT_GUEST_PATH
from banger.workspace.archive import Kind, display
from banger.workspace.plan import Plan, make_plan
from banger.workspace.send import send_plan


def print_plan(plan: Plan, guest_path: str, out: IO[str]) -> None:
    """The ``--dry-run`` report: mode, base, destination and every path, exactly."""
    branch = plan.branch or plan.repo.head_branch()
    out.write("dry run: nothing was created or copied\n")
    out.write(f"repository: {plan.repo.toplevel}\n")
    out.write(f"base commit: {plan.base}{f' (branch {branch})' if branch else ''}\n")
    out.write(f"mode: {plan.describe_mode}\n")
    out.write(f"guest path: {guest_path}\n")
    files = [i for i in plan.items if i.kind is not Kind.DIR]
    out.write(f"files ({len(files)}):\n")
    for item in files:
        if item.kind is Kind.SYMLINK:
            target = f" -> {display(item.target)}" if item.target is not None else ""
            out.write(f"  {display(item.rel)}{target} (symlink, copied as a link)\n")
        else:
            out.write(f"  {display(item.rel)}\n")
    for warning in plan.warnings:
        out.write(f"warning: {warning}\n")
    if plan.untracked_skipped:
        out.write(f"note: {_untracked_note(plan)}\n")


def _untracked_note(plan: Plan) -> str:
    n = plan.untracked_skipped
    return (
        f"{n} untracked file{'s' if n != 1 else ''} not copied (tracked files only); "
        "--include-untracked adds them"
    )


def guest_shell(session: Session, vm_name: str) -> AgentShell:
    """The VM's guest agent, or banger's ssh to it (non-interactive: the archive is
    binary) when it has none."""
    return AgentShell(session.client(), vm_name)


def report(warnings: list[str], plan: Plan) -> None:
    for warning in [*plan.warnings, *warnings]:
        sys.stderr.write(f"banger: warning: {warning}\n")
    if plan.untracked_skipped:
        sys.stderr.write(f"banger: {_untracked_note(plan)}\n")


def plan_for_run(
    path: str | Path, *, include_untracked: bool, branch: str | None, from_ref: str | None
) -> Plan:
    """``vm run PATH``'s plan, made once: before the VM exists, so what cannot be copied
    (a bare repository, submodules…) is refused first."""
    return make_plan(
        Path(path), include_untracked=include_untracked, branch=branch, from_ref=from_ref
    )


def print_run_plan(plan: Plan) -> None:
    """``vm run PATH --dry-run``: the plan, nothing created."""
    print_plan(plan, DEFAULT_GUEST_PATH, sys.stdout)


def prepare_for_run(session: Session, vm_name: str, plan: Plan) -> tuple[str, bool]:
    """``vm run PATH``: copy the planned repository to /root/repo; returns the guest cwd
    and whether the guest agent took the copy (False: the guest has none, ssh did)."""
    shell = guest_shell(session, vm_name)
    warnings = send_plan(plan, shell, DEFAULT_GUEST_PATH)
    report(warnings, plan)
    top = plan.repo.toplevel
    sys.stderr.write(f"banger: copied {plan.file_count} files of {top} to {DEFAULT_GUEST_PATH}\n")
    return DEFAULT_GUEST_PATH, shell.agent is not False
