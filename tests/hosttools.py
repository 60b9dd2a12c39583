"""Host programs some tests need but that must not be installed as services on the host.

``sshd()`` unpacks Debian's openssh-server into the test cache (``apt-get download`` +
``dpkg-deb -x``, like the guest kernel in tests/guests.py) instead of installing it, which
would start an sshd service on the machine. Tests run that binary by path themselves.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.guests import cache_dir

RECIPE = "sshd-2"
PACKAGES = ("openssh-server", "libwrap0")


def sshd() -> Path:
    """An sshd to run by path (the host's own if installed, else an unpacked one)."""
    installed = shutil.which("sshd", path="/usr/sbin:/sbin")
    if installed:
        return Path(installed)
    out = cache_dir() / "openssh-server" / RECIPE
    wrapper = out / "sshd"
    if wrapper.exists():
        return wrapper
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=tmp, check=True, capture_output=True)
        tree = Path(tmp) / "tree"
        for deb in Path(tmp).glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        # The unpacked sshd finds libwrap through LD_LIBRARY_PATH; it re-executes itself
        # by absolute path, which keeps that environment.
        libs = ":".join(str(out / d) for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"))
        (tree / "sshd").write_text(
            f'#!/bin/sh\nLD_LIBRARY_PATH="{libs}" exec "{out}/usr/sbin/sshd" "$@"\n'
        )
        (tree / "sshd").chmod(0o755)
        tree.chmod(0o755)
        tree.rename(out)
    return wrapper
