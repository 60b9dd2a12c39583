"""Running the workspace's guest scripts on this host instead of in a VM: a
``GuestShell`` with ``remote=False``, optionally with busybox as every command (as in the
tiny test guest); ``SHELLS``, the shells of this host a guest's ``sh`` may be, for
parametrizing tests of the daemon's guest shell scripts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from banger.workspace import GuestShell

BUSYBOX = Path("/bin/busybox")
#: argv prefixes: dash, bash and busybox's sh, those this host has.
SHELLS = [
    pytest.param([path], id=name)
    for name in ("dash", "bash")
    if (path := shutil.which(name)) is not None
] + [
    pytest.param([path, "sh"], id="busybox")
    for path in [shutil.which("busybox")]
    if path is not None
]


@pytest.fixture(scope="module")
def busybox_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PATH dir where every command is busybox (like the tiny test guest)."""
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    bindir = tmp_path_factory.mktemp("busybox-bin")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        (bindir / applet).symlink_to(BUSYBOX)
    return bindir


def local_shell(bindir: Path | None) -> GuestShell:
    prefix = ("env", f"PATH={bindir}") if bindir else ()
    return GuestShell(prefix, remote=False)
