"""The fakeroot session of an image build dies with the daemon (ADVERSARIAL 94).

``build_rootfs_image`` runs ``fakeroot -- python -m banger.oci.flatten_worker``: the
fakeroot script (the Runner's child), the worker (the script's child), and ``faked``,
which daemonizes into a session of its own. Here a parent process (this venv's Python,
standing in for bangerd) builds an image whose inject hook hangs, and is SIGKILLed, as
the ``pull:build`` failpoint does to the daemon: the script, the worker and faked must all
be gone within seconds, and faked's SysV message queues and semaphore removed. The same
for a Runner timeout, which stops the session by SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from banger.errors import Timeout
from banger.host import procinfo
from banger.host.procinfo import ProcessIdentity
from banger.host.runner import TERM_GRACE_S, Runner
from banger.oci.flatten import DEFAULT_LIMITS
from tests.layers import directory, file, write_layer

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[2]
HOOK = "tests.component.test_flatten_worker_death:record_and_hang"
REPORT = "session.json"
GONE_WITHIN_S = 3.0

MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
PARENT = """
import json, sys
from pathlib import Path
from banger.oci.ext4build import build_rootfs_image
from banger.oci.flatten import Layer
from banger.host.runner import Runner

args = json.loads(sys.argv[1])
build_rootfs_image(
    [Layer(Path(args["layer"]), args["media_type"], None)],
    Path(args["out"]),
    size_bytes=None,
    runner=Runner(extra_env={"PYTHONPATH": args["repo"]}),
    work_dir=Path(args["work"]),
    inject=args["hook"],
    fakeroot=True,
)
"""


def record_and_hang(tree: Path) -> None:
    """Inject hook, inside the fakeroot session: say who is who, then never finish."""
    report = {"worker": os.getpid(), "script": os.getppid(), "key": os.environ["FAKEROOTKEY"]}
    partial = tree.parent / f"{REPORT}.partial"
    partial.write_text(json.dumps(report))
    partial.rename(tree.parent / REPORT)
    time.sleep(600)


@dataclass(frozen=True)
class Session:
    key: int
    processes: dict[str, ProcessIdentity]  # script, worker, faked

    def running(self) -> list[str]:
        return [name for name, p in self.processes.items() if procinfo.is_running(p)]

    def ipc_left(self) -> list[str]:
        """faked's queues (key, key + 1) and semaphore (key + 2) still in the kernel."""
        left = [f"msg {k}" for k in sysv_keys("msg") & {self.key, self.key + 1}]
        return left + [f"sem {k}" for k in sysv_keys("sem") & {self.key + 2}]


def sysv_keys(kind: str) -> set[int]:
    lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
    return {int(line.split()[0]) for line in lines if line.strip()}


def faked_pid(key: int) -> int:
    """faked is the one process reading the queue named by FAKEROOTKEY (lrpid)."""
    for line in Path("/proc/sysvipc/msg").read_text().splitlines()[1:]:
        fields = line.split()
        if fields and int(fields[0]) == key:
            return int(fields[6])
    raise AssertionError(f"no SysV message queue with key {key}")


def wait_for_session(work: Path, timeout_s: float = 60) -> Session:
    deadline = time.monotonic() + timeout_s
    report = work / REPORT
    while not report.exists():
        assert time.monotonic() < deadline, "the inject hook never ran"
        time.sleep(0.02)
    info = json.loads(report.read_text())
    key = int(info["key"])
    pids = {"script": info["script"], "worker": info["worker"], "faked": faked_pid(key)}
    found = {name: procinfo.identify(pid) for name, pid in pids.items()}
    assert all(found.values()), found
    return Session(key, {n: p for n, p in found.items() if p is not None})


def wait_gone(session: Session, timeout_s: float = GONE_WITHIN_S) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := session.running() + session.ipc_left()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], f"still there {timeout_s:g}s later: {left}"


@pytest.fixture
def sessions() -> Iterator[list[Session]]:
    """What a failing test leaves, stopped (only if still the very process recorded);
    faked by SIGTERM, so that it removes its IPC objects."""
    found: list[Session] = []
    yield found
    for session in found:
        for name, identity in session.processes.items():
            if procinfo.is_running(identity):
                os.kill(identity.pid, signal.SIGTERM if name == "faked" else signal.SIGKILL)


@pytest.fixture
def build(tmp_path: Path) -> dict[str, str]:
    layer = write_layer(
        tmp_path / "layer.tar",
        [directory("etc"), file("etc/hostname", b"box\n", uid=0), file("home/u/a", b"x", uid=7)],
    )
    (tmp_path / "work").mkdir()
    return {
        "layer": str(layer.path),
        "out": str(tmp_path / "rootfs.ext4"),
        "work": str(tmp_path / "work"),
        "repo": str(REPO),
        "hook": HOOK,
        "media_type": MEDIA_TYPE,
    }


def test_daemon_sigkilled_mid_build_takes_worker_and_faked_along_e94(
    build: dict[str, str], sessions: list[Session]
) -> None:
    """ADVERSARIAL 94: the daemon SIGKILLed mid-pull leaves no flatten worker and no
    faked running, and no SysV IPC behind."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, json.dumps(build)],
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    try:
        session = wait_for_session(Path(build["work"]))
        sessions.append(session)
        assert session.running() == ["script", "worker", "faked"]
    finally:
        parent.kill()
        parent.wait()
    wait_gone(session)


def test_a_timeout_stops_worker_and_faked_e94(
    build: dict[str, str], sessions: list[Session]
) -> None:
    """The Runner's SIGTERM to the session on a timeout: the fakeroot script dies without
    its EXIT trap (which would stop faked), so the worker stops faked itself."""
    request = {
        "layers": [{"path": build["layer"], "media_type": MEDIA_TYPE, "diff_id": None}],
        "tree": str(Path(build["work"]) / "tree"),
        "out": build["out"],
        "size_bytes": None,
        "inject": HOOK,
        "limits": asdict(DEFAULT_LIMITS),
        "timeout_s": 60,
    }
    argv = ["fakeroot", "--", sys.executable, "-m", "banger.oci.flatten_worker"]
    with ThreadPoolExecutor(1) as pool:
        watching = pool.submit(wait_for_session, Path(build["work"]))
        started = time.monotonic()
        with pytest.raises(Timeout):
            Runner(extra_env={"PYTHONPATH": str(REPO)}).run(
                [*argv, "--die-with-parent"],
                input_bytes=json.dumps(request).encode(),
                cwd=Path(build["work"]),
                timeout_s=10,
            )
        elapsed = time.monotonic() - started
        session = watching.result()
    sessions.append(session)
    assert elapsed < 10 + TERM_GRACE_S, f"took {elapsed:.2f}s"
    wait_gone(session)
