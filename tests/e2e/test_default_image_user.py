"""The default image obtained by a normal user's daemon (issue 11): the local build from
the host's Debian archive runs mmdebstrap in its unshare mode, or, on a host that cannot
give a normal user what that mode needs (newuidmap/newgidmap, a subordinate id range,
user namespaces), fails at once with an error that names what is missing and a hint.

A user made by the test (tests/userenv.py) runs the daemon in a network namespace of the
test's own; its only way out is the HTTP proxy to the hosts of the host's apt sources
(tests/netproxy.py). Docker Hub is unreachable, so the catalog's OCI source fails fast
first. The build takes minutes when the host allows it: this is the one test that does it
as a user (tests/e2e/test_default_image.py builds the image as root, once per module).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netproxy import PORT as PROXY_PORT
from tests.netproxy import HostProxy
from tests.userenv import TOOLS, user_env

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or any(shutil.which(t) is None for t in (*TOOLS, "mmdebstrap")),
        reason="needs root, mmdebstrap and " + ", ".join(TOOLS),
    ),
    pytest.mark.timeout(3600),
]

REPO = Path(__file__).resolve().parents[2]


def _subid_range(user: str, uid: int, path: Path) -> bool:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return False
    return any(
        f[0] in (user, str(uid)) and f[2].isdigit() and int(f[2]) >= 65536
        for f in (line.split(":") for line in lines)
        if len(f) == 3
    )


def _debugfs_stat(image: str, path: str) -> dict[str, str]:
    out = subprocess.run(
        ["debugfs", "-R", f'stat "{path}"', image], capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"(User|Group|Mode): +(\S+)", out))


def test_a_normal_user_builds_the_default_image_or_is_told_what_the_host_lacks(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "proxy.sock"
    with HostProxy(sock), user_env(subids=shutil.which("newuidmap") is not None) as env:
        env.ns.popen(
            [sys.executable, "-m", "tests.netproxy", "forward", str(sock), str(PROXY_PORT)],
            cwd=str(REPO),
        )
        env.extra_env["http_proxy"] = f"http://127.0.0.1:{PROXY_PORT}"
        env.start_daemon()
        out = env.banger("image", "pull", "debian-bookworm", "--json", timeout=3300)
        lacks = [t for t in ("newuidmap", "newgidmap") if shutil.which(t) is None] + [
            name
            for name in ("subuid", "subgid")
            if not _subid_range(env.user, env.uid, Path("/etc") / name)
        ]
        if lacks:
            # What this host lacks for unshare mode: the error must say so, before any
            # download (no kernel fetched, no bootstrap stage reached).
            assert out.returncode != 0, out.stdout
            said = out.stdout + out.stderr
            assert "unshare mode" in said, said
            for missing in lacks:
                assert missing in said, f"{missing} not named:\n{said}"
            assert "apt-get install uidmap" in said, said
            assert '"stage": "bootstrap"' not in out.stdout
            assert json.loads(env.ok("image", "list", "--json")) == []
            return
        assert out.returncode == 0, out.stdout + out.stderr
        image = json.loads(env.ok("image", "show", "debian-bookworm", "--json"))
        rootfs = image["rootfs_path"]
        assert os.stat(rootfs).st_uid == env.uid  # the user's file ...
        su = _debugfs_stat(rootfs, "/usr/bin/su")  # ... holding root's and others' files
        assert (su["User"], su["Group"], su["Mode"]) == ("0", "0", "04755")
        shadow = _debugfs_stat(rootfs, "/etc/shadow")
        assert shadow["User"] == "0" and shadow["Group"] == "42"  # group shadow
