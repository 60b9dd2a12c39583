"""``banger kernel pull`` against an HTTP server of the test's own on 127.0.0.1.

The catalog is pointed at the server through ``BANGER_KERNEL_CATALOG`` (docs/catalog.md).
Covers ADVERSARIAL 38 (sha256 over the exact bytes, mismatch leaves nothing), 39
(truncated body), 40/41 through the daemon (traversal, links, unexpected members), 42
(``kill -9`` mid-download: nothing counts, the next start cleans up, the next pull
works), 43 (two pulls at once: one download), 44 (unknown name lists the catalog) and
the trust-on-first-use path of an entry without a published checksum.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.catalogserver import GOOD, VERSION, VMLINUX, Route, Server, entry, sha, tar_zst
from tests.conftest import BIN, BangerHome, make_home, stop_daemon_of
from tests.kernelfiles import fake_elf

pytestmark = pytest.mark.component


@dataclass
class World:
    home: BangerHome
    server: Server
    catalog: Path

    def serve(self, path: str, body: bytes, **kw: Any) -> str:
        self.server.routes[path] = Route(body, **kw)
        return self.server.url(path)

    def publish(self, *entries: dict[str, Any]) -> None:
        self.catalog.write_text(json.dumps({"schema": 1, "kernels": list(entries)}))

    def pull(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.home.banger("kernel", "pull", name, *args, timeout=120)

    @property
    def kernels_dir(self) -> Path:
        return self.home.state_dir / "kernels"

    def stored(self) -> list[str]:
        d = self.kernels_dir
        return sorted(p.name for p in d.iterdir() if p.name != ".staging") if d.exists() else []

    def leftovers(self) -> list[str]:
        area = self.kernels_dir / ".staging"
        return sorted(p.name for p in area.iterdir()) if area.exists() else []

    def rows(self) -> list[dict[str, Any]]:
        out = self.home.banger("kernel", "list", "--json")
        assert out.returncode == 0, out.stderr
        return list(json.loads(out.stdout))

    def nothing_left(self, name: str) -> None:
        assert name not in self.stored()
        assert self.leftovers() == []
        assert name not in [r["name"] for r in self.rows()]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    server = Server()
    home = make_home(tmp_path / "h")
    catalog = tmp_path / "kernels.json"
    home.env["BANGER_KERNEL_CATALOG"] = str(catalog)
    w = World(home, server, catalog)
    w.publish()
    try:
        yield w
    finally:
        stop_daemon_of(home)
        server.close()


def manifest_of(world: World, name: str) -> dict[str, Any]:
    return dict(json.loads((world.kernels_dir / name / "manifest.json").read_text()))


# -- the cases ------------------------------------------------------------------------------


def test_a_good_tarball_is_pulled_into_the_store(world: World) -> None:
    body = tar_zst(GOOD)
    world.publish(entry("good", world.serve("/good.tar.zst", body), body))
    started = time.monotonic()
    out = world.pull("good", "--json")
    seconds = time.monotonic() - started
    print(f"kernel pull of a {len(body)}-byte tarball took {seconds:.2f}s")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    stages = [e["stage"] for e in events if e["type"] == "stage" and e["state"] == "ok"]
    assert stages == ["download", "unpack", "discover", "extract", "modules", "initrd", "publish"]
    result = events[-1]["data"]
    assert result["name"] == "good" and result["version"] == VERSION
    assert result["download"] == {
        "url": world.server.url("/good.tar.zst"),
        "sha256": sha(body),
        "size_bytes": len(body),
        "verified": True,
    }
    kdir = world.kernels_dir / "good"
    assert (kdir / "vmlinux").read_bytes() == VMLINUX
    assert (kdir / "modules" / "kernel" / "drivers" / "virtio" / "virtio.ko").is_file()
    manifest = manifest_of(world, "good")
    assert manifest["download"]["sha256"] == sha(body)
    assert manifest["source"].startswith("catalog:good ")
    assert world.leftovers() == []
    available = json.loads(world.home.banger("kernel", "list", "--available", "--json").stdout)
    assert [(k["name"], k["local"]) for k in available] == [("good", True)]
    table = world.home.banger("kernel", "list", "--available")
    assert "good" in table.stdout and "LOCAL" in table.stdout


def test_a_second_pull_downloads_nothing_and_force_downloads_again(world: World) -> None:
    body = tar_zst(GOOD)
    world.publish(entry("good", world.serve("/good.tar.zst", body), body))
    assert world.pull("good").returncode == 0
    again = world.pull("good")
    assert again.returncode == 0, again.stderr
    assert "already in the store" in again.stdout
    assert world.server.routes["/good.tar.zst"].hits == 1
    forced = world.pull("good", "--force")
    assert forced.returncode == 0, forced.stderr
    assert world.server.routes["/good.tar.zst"].hits == 2
    assert world.stored() == ["good"] and world.leftovers() == []


def test_a_sha256_mismatch_keeps_nothing_and_prints_both_hashes(world: World) -> None:
    body = tar_zst(GOOD)
    wrong = "0" * 64
    world.publish({**entry("bad", world.serve("/bad.tar.zst", body), body), "sha256": wrong})
    out = world.pull("bad")
    assert out.returncode == 1
    assert "does not match its sha256" in out.stderr
    assert f"expected {wrong}" in out.stderr and f"actual   {sha(body)}" in out.stderr
    world.nothing_left("bad")


def test_a_truncated_body_keeps_nothing(world: World) -> None:
    body = tar_zst(GOOD)
    url = world.serve("/short.tar.zst", body[: len(body) // 2], announce=len(body))
    world.publish(entry("short", url, body))
    out = world.pull("short")
    assert out.returncode == 1
    assert "closed the connection after" in out.stderr, out.stderr
    world.nothing_left("short")


def test_a_catalog_size_that_does_not_match_keeps_nothing(world: World) -> None:
    body = tar_zst(GOOD)
    world.publish(entry("sized", world.serve("/s.tar.zst", body), body, size_bytes=len(body) + 1))
    out = world.pull("sized")
    assert out.returncode == 1 and "the catalog says" in out.stderr
    world.nothing_left("sized")


@pytest.mark.parametrize(
    ("members", "fragment"),
    [
        ([*GOOD, ("../victim/x", b"pwned")], "leads out of the archive"),
        ([*GOOD, ("/etc/passwd", b"root::0:0")], "is absolute"),
        ([("vmlinux", VMLINUX), ("modules", "/etc"), ("modules/x", b"x")], "is a link"),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_a_hash_valid_tarball_is_still_contained(
    world: World, members: list[tuple[str, bytes | str | None]], fragment: str
) -> None:
    body = tar_zst(members)
    world.publish(entry("evil", world.serve("/evil.tar.zst", body), body))
    out = world.pull("evil")
    assert out.returncode == 1
    assert fragment in out.stderr, out.stderr
    world.nothing_left("evil")
    written = [p for p in world.home.root.rglob("*") if p.name in {"x", "passwd"}]
    assert written == []


def test_unexpected_members_are_left_out(world: World) -> None:
    body = tar_zst([*GOOD, ("README", b"hi"), ("boot/extra", b"x"), ("bin", None)])
    world.publish(entry("extra", world.serve("/extra.tar.zst", body), body))
    out = world.pull("extra")
    assert out.returncode == 0, out.stderr
    assert "skipped 3 unexpected member(s)" in out.stdout
    kdir = world.kernels_dir / "extra"
    assert not (kdir / "README").exists() and not (kdir / "boot").exists()


def test_a_zstd_window_bomb_is_refused_through_the_daemon(world: World) -> None:
    raw = subprocess.run(
        ["zstd", "-q", "--long=30", "-c"], input=bytes(1 << 20), capture_output=True, check=True
    ).stdout
    world.publish(entry("bomb", world.serve("/bomb.tar.zst", raw), raw))
    out = world.pull("bomb")
    assert out.returncode == 1 and "does not decompress within the limits" in out.stderr
    world.nothing_left("bomb")


def test_an_unverified_entry_is_trusted_on_first_use_and_held_to_it(world: World) -> None:
    url = world.serve("/vmlinux-5.10.999", VMLINUX)
    world.publish(entry("fc", url, None, format="vmlinux"))
    first = world.pull("fc")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("unverified source") == 1
    assert sha(VMLINUX) in first.stdout
    manifest = manifest_of(world, "fc")
    assert manifest["download"] == {
        "url": url,
        "sha256": sha(VMLINUX),
        "size_bytes": len(VMLINUX),
        "verified": False,
    }
    assert manifest["files"]["vmlinux"]["sha256"] == sha(VMLINUX)
    # The same bytes again: checked against the recorded hash, said once, no warning.
    again = world.pull("fc", "--force")
    assert again.returncode == 0, again.stderr
    assert "unverified source" not in again.stdout
    assert "matches the sha256 recorded at the first pull" in again.stdout
    # Changed bytes at the same URL: refused, the stored kernel untouched.
    world.server.routes["/vmlinux-5.10.999"] = Route(fake_elf(200_004))
    changed = world.pull("fc", "--force")
    assert changed.returncode == 1 and "does not match its sha256" in changed.stderr
    assert (world.kernels_dir / "fc" / "vmlinux").read_bytes() == VMLINUX
    assert world.leftovers() == []


def test_a_bare_download_that_is_not_an_elf_kernel_is_refused(world: World) -> None:
    page = b"<html>captive portal</html>"
    world.publish(entry("portal", world.serve("/vmlinux-x", page), page, format="vmlinux"))
    out = world.pull("portal")
    assert out.returncode == 1 and "not an x86-64 ELF kernel" in out.stderr
    world.nothing_left("portal")


def test_an_unknown_kernel_lists_the_catalog(world: World) -> None:
    body = tar_zst(GOOD)
    world.publish(
        entry("one", world.serve("/1.tar.zst", body), body),
        entry("two", world.serve("/2.tar.zst", body), body),
    )
    out = world.pull("three")
    assert out.returncode == 1
    assert "not in the kernel catalog" in out.stderr
    assert "one, two" in out.stderr and "--available" in out.stderr
    bad_name = world.pull("../etc")
    assert bad_name.returncode == 1 and "invalid kernel name" in bad_name.stderr


def test_an_invalid_override_catalog_is_reported(world: World) -> None:
    world.catalog.write_text(json.dumps({"schema": 1, "kernels": [{"name": "x"}]}))
    out = world.pull("x")
    assert out.returncode == 1 and "kernel catalog" in out.stderr and "invalid" in out.stderr


def test_two_pulls_at_once_download_once(world: World) -> None:
    body = tar_zst(GOOD)
    world.publish(entry("pair", world.serve("/pair.tar.zst", body, drip_s=0.3), body))
    assert world.home.banger("daemon", "start").returncode == 0
    procs = [
        subprocess.Popen(
            [str(BIN / "banger"), "kernel", "pull", "pair"],
            env=world.home.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert world.server.routes["/pair.tar.zst"].hits == 1
    assert world.stored() == ["pair"] and world.leftovers() == []


def test_kill_9_mid_download_leaves_nothing_and_the_next_pull_works(world: World) -> None:
    body = tar_zst([*GOOD, ("modules/filler.bin", os.urandom(2 << 20))])
    world.publish(entry("slow", world.serve("/slow.tar.zst", body, drip_s=0.2), body))
    assert world.home.banger("daemon", "start").returncode == 0
    pid = world.home.daemon_pid()
    assert pid is not None
    puller = subprocess.Popen(
        [str(BIN / "banger"), "kernel", "pull", "slow"],
        env=world.home.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert world.server.routes["/slow.tar.zst"].sent.wait(30)
    time.sleep(0.5)
    assert world.leftovers(), "the download should be under way in .staging"
    os.kill(pid, signal.SIGKILL)
    puller.communicate(timeout=60)
    assert puller.returncode != 0
    assert "slow" not in world.stored()
    # The next daemon start removes the staging leftovers; the pull starts over.
    world.server.routes["/slow.tar.zst"].drip_s = 0.0
    assert world.home.banger("daemon", "start").returncode == 0
    assert world.leftovers() == []
    assert world.rows() == []
    out = world.pull("slow")
    assert out.returncode == 0, out.stderr
    assert world.stored() == ["slow"] and world.leftovers() == []
