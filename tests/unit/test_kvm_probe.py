"""The KVM probe's key, its stored verdict, and that one daemon boots the probe at most
once per key (banger.vmm.kvm_probe), with a Runner that stands in for QEMU."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from banger.errors import CommandFailed, Timeout
from banger.host.runner import Result, Runner
from banger.vmm import kvm_probe
from banger.vmm.kvm_probe import KvmProbe, ProbeKey, Verdict, current_key, read_stored, store

BANNER = b"Linux version 6.1.0 (probe)\n"


class QemuStandIn(Runner):
    """Counts probe boots; writes ``console`` where the argv's serial chardev points, then
    ends the way ``outcome`` says ("exit" or "timeout"), after ``delay_s``."""

    def __init__(self, console: bytes = BANNER, outcome: str = "exit", delay_s: float = 0) -> None:
        super().__init__()
        self.console, self.outcome, self.delay_s = console, outcome, delay_s
        self.argvs: list[list[str]] = []

    async def run_async(
        self,
        argv: Sequence[str | Path],
        *,
        timeout_s: float = 120.0,
        ok_codes: Sequence[int] = (0,),
        input_bytes: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        args = [str(a) for a in argv]
        self.argvs.append(args)
        chardev = args[args.index("-chardev") + 1]
        path = Path(chardev.split("path=", 1)[1].split(",", 1)[0])
        path.write_bytes(self.console)
        await asyncio.sleep(self.delay_s)
        if self.outcome == "timeout":
            raise Timeout(f"{args[0]} … did not finish within {timeout_s:g}s")
        if self.outcome == "fail":
            raise CommandFailed(
                f"{args[0]} … failed with exit status 1",
                details="qemu-system-x86_64: failed to initialize kvm: No space left\nmore",
            )
        return Result(tuple(args), 0, b"", b"")


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_bytes(b"#!/bin/false\n")
    qemu.chmod(0o755)
    kvm = tmp_path / "kvm"  # any file we may open read-write stands in for /dev/kvm
    kvm.write_bytes(b"")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    return {"qemu": qemu, "kvm": kvm, "kernel": kernel, "cache": tmp_path / "state" / "kvm.json"}


def _probe(host: dict[str, Path], runner: Runner, **kw: object) -> KvmProbe:
    host["cache"].parent.mkdir(exist_ok=True)
    qemu = host["qemu"]
    kvm_device = kw.pop("kvm_device", host["kvm"])
    assert isinstance(kvm_device, Path) and not kw
    return KvmProbe(runner, host["cache"], find_qemu=lambda: qemu, kvm_device=kvm_device)


def _key(host: dict[str, Path], release: str | None = None) -> ProbeKey:
    key = current_key(host["qemu"], host["kvm"], boot_id=lambda: "boot-1")
    if release is not None:
        key = current_key(
            host["qemu"], host["kvm"], boot_id=lambda: "boot-1", kernel_release=lambda: release
        )
    assert key is not None
    return key


# -- the key ------------------------------------------------------------------------------


def test_key_changes_with_everything_that_can_change_the_verdict(host: dict[str, Path]) -> None:
    base = _key(host)
    assert _key(host) == base
    assert current_key(host["qemu"], host["kvm"], boot_id=lambda: "boot-2") != base
    assert _key(host, release="9.9.9-other") != base
    stat = host["qemu"].stat()
    os.utime(host["qemu"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert _key(host) != base  # QEMU upgraded in place
    upgraded = _key(host)
    host["qemu"].write_bytes(b"#!/bin/false\n# a longer binary\n")
    os.utime(host["qemu"], ns=(stat.st_atime_ns, upgraded.qemu_mtime_ns))
    assert _key(host).qemu_size != upgraded.qemu_size
    host["kvm"].chmod(0o600)
    before = _key(host)
    host["kvm"].chmod(0o660)
    assert _key(host) != before  # /dev/kvm's mode (or owner, or device number) changed
    other = host["qemu"].with_name("qemu-other")
    other.symlink_to(host["qemu"])
    assert current_key(other, host["kvm"], boot_id=lambda: "boot-1") != _key(host)


def test_key_is_none_when_a_file_is_missing(host: dict[str, Path], tmp_path: Path) -> None:
    assert current_key(tmp_path / "absent", host["kvm"]) is None
    assert current_key(host["qemu"], tmp_path / "no-kvm") is None


def test_stored_verdict_counts_only_under_its_key(host: dict[str, Path]) -> None:
    cache = host["cache"]
    cache.parent.mkdir()
    key = _key(host)
    verdict = Verdict(False, "printed nothing", "2026-12-04T13:00:00+00:00", 6.01)
    store(cache, key, verdict)
    assert read_stored(cache, key) == verdict
    assert read_stored(cache, replace(key, boot_id="boot-2")) is None
    assert oct(cache.stat().st_mode & 0o777) == "0o600"
    data = json.loads(cache.read_text())
    data["format"] = kvm_probe.CACHE_FORMAT + 1
    cache.write_text(json.dumps(data))
    assert read_stored(cache, key) is None  # an older banger's verdict lapses
    cache.write_text("{not json")
    assert read_stored(cache, key) is None
    cache.write_text(json.dumps({"format": kvm_probe.CACHE_FORMAT, "key": data["key"]}))
    assert read_stored(cache, key) is None  # incomplete: measured again, not trusted


# -- one probe per key ----------------------------------------------------------------------


def test_the_probe_boots_qemus_real_argv_under_kvm(host: dict[str, Path]) -> None:
    runner = QemuStandIn()
    verdict = asyncio.run(_probe(host, runner).verdict(host["kernel"]))
    assert verdict is not None and verdict.runs_guests and verdict.measured_at
    [argv] = runner.argvs
    assert argv[0] == str(host["qemu"])
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-kernel") + 1] == str(host["kernel"])
    assert argv[argv.index("-append") + 1] == "console=ttyS0 panic=-1"
    assert "-drive" not in argv and "-netdev" not in argv
    assert not any(Path(a.split("path=")[-1].split(",")[0]).exists() for a in argv if "path=" in a)


def test_a_second_probe_object_on_the_same_state_dir_does_not_boot(
    host: dict[str, Path],
) -> None:
    first = QemuStandIn(console=b"SeaBIOS\n", outcome="timeout")
    verdict = asyncio.run(_probe(host, first).verdict(host["kernel"]))
    assert verdict is not None and not verdict.runs_guests
    assert verdict.detail == "no kernel banner: nothing within 6 s under KVM"
    second = QemuStandIn()
    restarted = _probe(host, second)  # a daemon restart: new object, same state dir
    assert restarted.known() == verdict
    assert asyncio.run(restarted.verdict(host["kernel"])) == verdict
    assert (len(first.argvs), len(second.argvs), restarted.boots) == (1, 0, 0)


def test_a_changed_key_probes_again(host: dict[str, Path]) -> None:
    runner = QemuStandIn()
    probe = _probe(host, runner)
    asyncio.run(probe.verdict(host["kernel"]))
    stat = host["qemu"].stat()
    os.utime(host["qemu"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert probe.known() is None
    assert _probe(host, runner).known() is None
    asyncio.run(probe.verdict(host["kernel"]))
    assert len(runner.argvs) == 2
    assert _probe(host, runner).known() is not None


def test_concurrent_callers_and_the_background_start_share_one_boot(
    host: dict[str, Path],
) -> None:
    runner = QemuStandIn(delay_s=0.2)
    probe = _probe(host, runner)

    async def scenario() -> list[Verdict | None]:
        probe.start(host["kernel"])  # daemon start
        assert probe.running
        waiting = [probe.verdict(host["kernel"]) for _ in range(3)]
        results = await asyncio.gather(*waiting)
        probe.start(host["kernel"])  # known now: nothing to do
        assert not probe.running
        return [*results, await probe.verdict(None)]

    results = asyncio.run(scenario())
    assert len(runner.argvs) == 1 and probe.boots == 1
    assert all(r is not None and r.runs_guests for r in results)


def test_a_cancelled_waiter_does_not_cancel_the_probe(host: dict[str, Path]) -> None:
    runner = QemuStandIn(delay_s=0.2)
    probe = _probe(host, runner)

    async def scenario() -> Verdict | None:
        waiter = asyncio.create_task(probe.verdict(host["kernel"]))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return await probe.verdict(host["kernel"])

    verdict = asyncio.run(scenario())
    assert verdict is not None and verdict.runs_guests and len(runner.argvs) == 1


def test_no_kernel_and_nothing_known_is_no_verdict(host: dict[str, Path]) -> None:
    runner = QemuStandIn()
    assert asyncio.run(_probe(host, runner).verdict(None)) is None
    assert runner.argvs == []


def test_no_boot_and_nothing_stored_without_kvm_or_qemu(
    host: dict[str, Path], tmp_path: Path
) -> None:
    runner = QemuStandIn()
    no_kvm = _probe(host, runner, kvm_device=tmp_path / "absent")
    verdict = asyncio.run(no_kvm.verdict(host["kernel"]))
    assert verdict is not None and not verdict.runs_guests and verdict.measured_at is None
    no_qemu = KvmProbe(runner, host["cache"], find_qemu=lambda: None, kvm_device=host["kvm"])
    verdict = asyncio.run(no_qemu.verdict(host["kernel"]))
    assert verdict is not None and not verdict.runs_guests
    assert runner.argvs == [] and not host["cache"].exists()


def test_qemu_failing_under_kvm_is_a_no_with_its_first_error_line(host: dict[str, Path]) -> None:
    failing = _probe(host, QemuStandIn(console=b"", outcome="fail"))
    verdict = asyncio.run(failing.verdict(host["kernel"]))
    assert verdict is not None and not verdict.runs_guests
    assert verdict.detail == (
        "no kernel banner: QEMU failed under KVM: "
        "qemu-system-x86_64: failed to initialize kvm: No space left"
    )
