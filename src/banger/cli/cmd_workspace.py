"""``banger vm workspace prepare|export``: a host repository into a running VM, and the
guest's changes back as a patch (SPEC §7).

Owns: the two commands' options and output. The work is CLI-side (the CLI has the
repository, the user's git identity and banger's SSH key): ``run_workspace`` plans and
copies, ``banger.workspace.export`` makes the patch. Must not: talk to the guest except
through the ``GuestShell`` that ``run_workspace.guest_shell`` builds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from banger.cli.session import Session
from banger.model.workspace_modes import DEFAULT_GUEST_PATH, Mode


@click.group()
def workspace() -> None:
    """Copy a host git repository into a VM; get the guest's changes back as a patch."""


@workspace.command()
@click.argument("vm_name", metavar="VM")
@click.argument("path", required=False, default=".", type=click.Path(path_type=Path))
@click.option(
    "--guest-path", default=DEFAULT_GUEST_PATH, show_default=True, help="Where in the guest."
)
@click.option(
    "--mode",
    type=click.Choice([m.value for m in Mode]),
    default=Mode.TRACKED.value,
    show_default=True,
    help="tracked: history + tracked files; full: the whole directory as it is.",
)
@click.option(
    "--include-untracked",
    is_flag=True,
    help="Also copy untracked files git does not ignore (ignored files never).",
)
@click.option("--branch", metavar="NAME", help="Create and check out a guest-only branch.")
@click.option(
    "--from", "from_ref", metavar="REF", help="Start --branch at REF (its committed tree)."
)
@click.option(
    "--readonly", is_flag=True, help="Mount the copy read-only in the guest (until it reboots)."
)
@click.option("--replace", is_flag=True, help="Replace what is already at the guest path.")
@click.option("--dry-run", is_flag=True, help="Print what would be copied; copy nothing.")
@click.pass_obj
def prepare(
    session: Session,
    *,
    vm_name: str,
    path: Path,
    guest_path: str,
    mode: str,
    include_untracked: bool,
    branch: str | None,
    from_ref: str | None,
    readonly: bool,
    replace: bool,
    dry_run: bool,
) -> None:
    """Copy the git repository enclosing PATH (default: .) into a running VM.

    By default the guest gets the repository's history and its tracked files as they
    are on disk (uncommitted edits included); untracked files only with
    --include-untracked, ignored files never. Symlinks are copied as symlinks.
    """
    from banger.cli.run_workspace import guest_shell, print_plan, report
    from banger.workspace import check_guest_path
    from banger.workspace.plan import make_plan
    from banger.workspace.send import send_plan

    guest_path = check_guest_path(guest_path)
    plan = make_plan(
        path.expanduser(),
        mode=Mode(mode),
        include_untracked=include_untracked,
        branch=branch,
        from_ref=from_ref,
    )
    if dry_run:
        print_plan(plan, guest_path, sys.stdout)
        return
    warnings = send_plan(
        plan, guest_shell(session, vm_name), guest_path, replace=replace, readonly=readonly
    )
    report(warnings, plan)
    ro = " (read-only)" if readonly else ""
    click.echo(f"{vm_name}:{guest_path}: {plan.file_count} files at {plan.base[:12]}{ro}")


@workspace.command()
@click.argument("vm_name", metavar="VM")
@click.option(
    "--base-commit",
    metavar="COMMIT",
    help="Diff against this commit (default: the one the workspace was prepared from).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the patch to FILE instead of stdout.",
)
@click.option(
    "--guest-path", default=DEFAULT_GUEST_PATH, show_default=True, help="The guest's workspace."
)
@click.option(
    "--repo",
    "repo_path",
    default=".",
    type=click.Path(path_type=Path),
    help="Host repository holding the base commit (used when the guest has no git).",
)
@click.option(
    "--via",
    type=click.Choice(["auto", "guest", "host"]),
    default="auto",
    show_default=True,
    help="Where git runs: in the guest, or on the host over a copy of the guest's files.",
)
@click.pass_obj
def export(
    session: Session,
    *,
    vm_name: str,
    base_commit: str | None,
    output: Path | None,
    guest_path: str,
    repo_path: Path,
    via: str,
) -> None:
    """Print the guest's changes as a binary git patch for `git apply`.

    Commits made in the guest and uncommitted edits are both in it, relative to the
    base commit; new files the guest's .gitignore does not ignore are included.
    """
    from banger.cli.run_workspace import guest_shell
    from banger.workspace import check_guest_path
    from banger.workspace.export import Via, export_patch

    result = export_patch(
        guest_shell(session, vm_name),
        guest_path=check_guest_path(guest_path),
        base_commit=base_commit,
        host_repo=repo_path.expanduser(),
        via=Via(via),
    )
    for warning in result.warnings:
        sys.stderr.write(f"banger: warning: {warning}\n")
    if output is not None:
        _write_atomically(output, result.patch)
    else:
        sys.stdout.buffer.write(result.patch)
        sys.stdout.buffer.flush()
    where = "in the guest" if result.via.value == "guest" else "on the host"
    sys.stderr.write(
        f"banger: {result.files} file{'s' if result.files != 1 else ''} changed since "
        f"{result.base[:12]} (diff made {where})"
        + (f"; apply with: git apply {output}" if output is not None and result.patch else "")
        + "\n"
    )


def _write_atomically(path: Path, data: bytes) -> None:
    import tempfile

    path = path.expanduser()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path())
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
