"""A local apt repository for guests that install packages at first boot.

The network rule (TESTING.md) keeps guests off the internet, so "banger-init installs
systemd and sshd with apt" is tested against a repository of our own: the packages and
their whole dependency closure are fetched on the host with ``apt-get download`` (Debian's
archive only, nothing installed), indexed with ``dpkg-scanpackages`` into the layout of a
real archive, and served with ``python3 -m http.server`` bound to the bridge address
*inside* the test's network namespace::

    repo = apt_repo()                       # cached in $BANGER_TEST_CACHE/apt-repo/<key>/
    with serve(ns, repo, "172.30.0.1", log=tmp / "http.log") as url:
        ...  # guest kernel command line: banger.mirror=<url> banger.mirror_trusted=1

Layout (what ``deb [trusted=yes] <url> bookworm main`` reads)::

    dists/bookworm/Release
    dists/bookworm/main/binary-amd64/Packages{,.gz}
    pool/main/*.deb

The repository is unsigned, hence ``banger.mirror_trusted=1``; a real mirror or proxy of
Debian's archive is signed and needs no such flag.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests import guests
from tests.netns import Netns

APT_REPO_RECIPE = "a1"
SUITE = "bookworm"
COMPONENT = "main"
ARCH = "amd64"
#: What banger-init installs into a Debian image lacking systemd, sshd and python3, plus
#: iproute2 (the test asks for it as an extra first-boot package).
FIRST_BOOT_PACKAGES = (
    "systemd", "systemd-sysv", "udev", "openssh-server", "python3-minimal", "iproute2",
)  # fmt: skip


def apt_repo(packages: Sequence[str] = FIRST_BOOT_PACKAGES) -> Path:
    """The repository root (holds ``dists/`` and ``pool/``), built once per package set."""
    digest = hashlib.sha256(" ".join(sorted(packages)).encode()).hexdigest()[:10]
    key = f"{APT_REPO_RECIPE}-{digest}"
    out = guests._artifact("apt-repo", key, lambda tmp: _build(tmp, packages))
    return out / "repo"


def closure(packages: Sequence[str]) -> list[str]:
    """Every real package ``packages`` need, recursively (no recommends), per the host's lists."""
    out = guests._apt(
        [
            "apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
            "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *packages,
        ]
    ).stdout  # fmt: skip
    names = {line.strip() for line in out.splitlines() if line and not line[0].isspace()}
    # "<virtual>" names have no archive of their own; "pkg:i386" is another architecture
    return sorted(n for n in names if "<" not in n and ":" not in n)


def _build(tmp: Path, packages: Sequence[str]) -> None:
    guests._need_tools("apt-get", "apt-cache", "dpkg-scanpackages")
    repo = tmp / "repo"
    pool = repo / "pool" / COMPONENT
    pool.mkdir(parents=True)
    with contextlib.suppress(KeyError):  # let apt's sandbox user write here (no warning)
        os.chown(pool, pwd.getpwnam("_apt").pw_uid, 0)
    guests._apt(["apt-get", "download", "-q", *closure(packages)], cwd=pool)
    scanned = guests._run(
        ["dpkg-scanpackages", "--multiversion", f"pool/{COMPONENT}", "/dev/null"], cwd=repo
    )
    binary = repo / "dists" / SUITE / COMPONENT / f"binary-{ARCH}"
    binary.mkdir(parents=True)
    (binary / "Packages").write_text(scanned.stdout)
    (binary / "Packages.gz").write_bytes(gzip.compress(scanned.stdout.encode(), mtime=0))
    _write_release(repo / "dists" / SUITE)


def _write_release(dist: Path) -> None:
    # An hour in the past: apt refuses a Release file dated in the guest's future.
    date = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime(time.time() - 3600))
    lines = [
        "Origin: banger-test", "Label: banger-test", f"Suite: {SUITE}", f"Codename: {SUITE}",
        f"Date: {date}", f"Architectures: {ARCH}", f"Components: {COMPONENT}", "SHA256:",
    ]  # fmt: skip
    for path in sorted(dist.rglob("Packages*")):
        data = path.read_bytes()
        rel = path.relative_to(dist)
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {rel}")
    (dist / "Release").write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def serve(ns: Netns, repo: Path, host: str, *, log: Path, port: int = 8080) -> Iterator[str]:
    """Serve ``repo`` on ``host:port`` inside ``ns`` (requests logged to ``log``): the URL."""
    with log.open("ab") as out:
        proc = ns.popen(
            [sys.executable, "-m", "http.server", "--bind", host, "--directory", str(repo),
             str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        probe = f"import socket; socket.create_connection(({host!r}, {port}), 0.5).close()"
        deadline = time.monotonic() + 15
        while ns.run([sys.executable, "-c", probe], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"http.server did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield f"http://{host}:{port}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
