"""The state database on real SQLite files and real processes (ADVERSARIAL 91, 110, 119)."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from banger.errors import (
    AlreadyExists,
    ImageNotFound,
    InUse,
    InvalidArgument,
    KernelNotFound,
    StateError,
    VmNotFound,
)
from banger.model.records import ImageRecord, KernelRecord, VmRecord, VmState, utc_now
from banger.state import repo
from banger.state.db import AsyncDatabase, Database
from banger.state.migrations import LATEST_VERSION, MIGRATIONS, Migration

pytestmark = pytest.mark.component


def kernel(name: str, **extra: object) -> KernelRecord:
    fields: dict[str, object] = {
        "name": name,
        "arch": "x86_64",
        "source": "catalog",
        "dir_path": f"/k/{name}",
        "imported_at": utc_now(),
    }
    return KernelRecord(**{**fields, **extra})  # type: ignore[arg-type]


def image(name: str, **extra: object) -> ImageRecord:
    fields: dict[str, object] = {
        "name": name,
        "managed": True,
        "rootfs_path": f"/i/{name}/rootfs.ext4",
        "source": "docker.io/library/debian:bookworm",
        "created_at": utc_now(),
    }
    return ImageRecord(**{**fields, **extra})  # type: ignore[arg-type]


def vm(name: str, image_id: int | None, **extra: object) -> VmRecord:
    now = utc_now()
    fields: dict[str, object] = {
        "name": name,
        "image_id": image_id,
        "state": VmState.CREATING,
        "vcpu": 2,
        "memory_mib": 1024,
        "disk_size_bytes": 8 << 30,
        "created_at": now,
        "updated_at": now,
    }
    return VmRecord(**{**fields, **extra})  # type: ignore[arg-type]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[Database]:
    database = Database.open(db_path)
    yield database
    database.close()


def _run_child(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- opening and migrations -------------------------------------------------------------


def test_fresh_database_is_migrated_and_configured(db: Database, db_path: Path) -> None:
    assert db.schema_version() == LATEST_VERSION
    pragmas = db.read(
        lambda c: {
            p: c.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
    )
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 2,
        "foreign_keys": 1,
        "busy_timeout": 5000,
    }
    tables = db.read(
        lambda c: {
            r[0]: r[1] for r in c.execute("SELECT name, sql FROM sqlite_master WHERE type='table'")
        }
    )
    assert {"kernels", "images", "vms"} <= set(tables)
    if sqlite3.sqlite_version_info >= (3, 37, 0):
        assert all(tables[t].rstrip().endswith("STRICT") for t in ("kernels", "images", "vms"))
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    assert db.integrity_check() == "ok"


def test_reopen_is_idempotent_and_keeps_rows(db_path: Path) -> None:
    first = Database.open(db_path)
    repo.insert_kernel(first, kernel("k1"))
    first.close()
    first.close()  # closing twice is harmless
    again = Database.open(db_path)
    try:
        assert again.schema_version() == LATEST_VERSION
        assert [k.name for k in repo.list_kernels(again)] == ["k1"]
    finally:
        again.close()


def test_database_from_a_newer_banger_is_refused(db_path: Path) -> None:
    Database.open(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    raw.close()
    with pytest.raises(StateError, match=r"newer|knows up to") as caught:
        Database.open(db_path)
    assert caught.value.hint is not None and "upgrade banger" in caught.value.hint


def test_failed_migration_changes_nothing(db_path: Path) -> None:
    broken = Migration(
        LATEST_VERSION + 1, "broken", ("CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL")
    )
    with pytest.raises(StateError):
        Database.open(db_path, migrations=(*MIGRATIONS, broken))
    db = Database.open(db_path)
    try:
        assert db.schema_version() == LATEST_VERSION
        names = db.read(lambda c: [r[0] for r in c.execute("SELECT name FROM sqlite_master")])
        assert "extra" not in names
    finally:
        db.close()


def test_vm_state_check_matches_the_enum(db: Database) -> None:
    image_id = repo.insert_image(db, image("img")).id
    for state in VmState:
        repo.insert_vm(db, vm(f"vm-{state}", image_id, state=state))
    now = utc_now().isoformat()
    with pytest.raises(StateError):
        db.write(
            lambda c: c.execute(
                "INSERT INTO vms (name, state, vcpu, memory_mib, disk_size_bytes, created_at,"
                " updated_at) VALUES ('bad', 'bogus', 1, 1, 1, ?, ?)",
                (now, now),
            )
        )


# -- repository -------------------------------------------------------------------------


def test_kernel_crud(db: Database) -> None:
    k = kernel("vmlinux-6.1", distro="debian", version="6.1.0", has_initrd=True, sha256="a" * 64)
    assert repo.insert_kernel(db, k) == k
    assert repo.get_kernel(db, "vmlinux-6.1") == k
    changed = repo.update_kernel(db, "vmlinux-6.1", has_modules=True, version="6.1.1")
    assert changed.has_modules is True and changed.version == "6.1.1" and changed.has_initrd
    assert repo.list_kernels(db) == [changed]
    repo.delete_kernel(db, "vmlinux-6.1")
    with pytest.raises(KernelNotFound, match=r"vmlinux-6\.1"):
        repo.get_kernel(db, "vmlinux-6.1")
    with pytest.raises(KernelNotFound, match=r"vmlinux-6\.1"):
        repo.delete_kernel(db, "vmlinux-6.1")


def test_image_crud(db: Database) -> None:
    repo.insert_kernel(db, kernel("k"))
    img = repo.insert_image(db, image("debian", kernel_name="k", size_bytes=1 << 30))
    assert img.id is not None
    assert repo.get_image(db, "debian") == img
    assert repo.get_image_by_id(db, img.id) == img
    promoted = repo.update_image(db, "debian", managed=False, rootfs_path="/new")
    assert promoted.managed is False and promoted.rootfs_path == "/new"
    assert [i.name for i in repo.list_images(db)] == ["debian"]
    with pytest.raises(InvalidArgument, match="name"):
        repo.update_image(db, "debian", name="other")
    with pytest.raises(KernelNotFound, match="missing"):
        repo.update_image(db, "debian", kernel_name="missing")
    repo.delete_image(db, "debian")
    with pytest.raises(ImageNotFound, match="debian"):
        repo.get_image(db, "debian")
    with pytest.raises(ImageNotFound):
        repo.get_image_by_id(db, img.id)


def test_vm_crud_and_update_whitelist(db: Database) -> None:
    image_id = repo.insert_image(db, image("img")).id
    created = repo.insert_vm(db, vm("dev", image_id, ip="172.16.0.2", mac="02:00:00:00:00:02"))
    assert created.id is not None and repo.get_vm(db, "dev") == created
    later = utc_now() + timedelta(seconds=1)
    running = repo.update_vm(
        db, "dev", state=VmState.RUNNING, pid=4242, pid_start_ticks=99, boot_id="b", nat=True
    )
    assert running.state is VmState.RUNNING and running.pid == 4242 and running.nat is True
    assert running.updated_at > created.updated_at
    stopped = repo.update_vm(db, "dev", state=VmState.STOPPED, pid=None, stopped_at=later)
    assert stopped.pid is None and stopped.stopped_at == later
    assert [v.name for v in repo.list_vms(db, state=VmState.STOPPED)] == ["dev"]
    assert repo.list_vms(db, state=VmState.RUNNING) == []
    for bad in ({"name": "x"}, {"id": 3}, {"created_at": later}, {"updated_at": later}):
        with pytest.raises(InvalidArgument, match="cannot change"):
            repo.update_vm(db, "dev", **bad)
    with pytest.raises(InvalidArgument, match="vcpu"):
        repo.update_vm(db, "dev", vcpu=0)
    with pytest.raises(VmNotFound, match="ghost"):
        repo.update_vm(db, "ghost", vcpu=2)
    repo.delete_vm(db, "dev")
    with pytest.raises(VmNotFound, match="dev"):
        repo.delete_vm(db, "dev")


@pytest.mark.parametrize("field", ["name", "ip", "mac", "tap"])
def test_unique_violation_names_the_field(db: Database, field: str) -> None:
    image_id = repo.insert_image(db, image("img")).id
    taken = {"ip": "10.0.0.2", "mac": "02:00:00:00:00:01", "tap": "tap-bg0"}
    repo.insert_vm(db, vm("a", image_id, **taken))
    values = {k: f"{v}-other" for k, v in taken.items()}
    name = "b"
    if field == "name":
        name = "a"
    else:
        values[field] = taken[field]
    with pytest.raises(AlreadyExists, match=field) as caught:
        repo.insert_vm(db, vm(name, image_id, **values))
    assert (name if field == "name" else taken[field]) in caught.value.brief
    assert repo.counts(db)["vms"] == 1


def test_unique_kernel_and_image_names(db: Database) -> None:
    repo.insert_kernel(db, kernel("k"))
    with pytest.raises(AlreadyExists, match="kernel with name 'k'"):
        repo.insert_kernel(db, kernel("k"))
    repo.insert_image(db, image("i"))
    with pytest.raises(AlreadyExists, match="image with name 'i'"):
        repo.insert_image(db, image("i"))


def test_adversarial_120_referenced_image_and_kernel_are_in_use(db: Database) -> None:
    repo.insert_kernel(db, kernel("k"))
    image_id = repo.insert_image(db, image("img", kernel_name="k")).id
    repo.insert_vm(db, vm("dev", image_id))
    with pytest.raises(InUse, match="VM dev"):
        repo.delete_image(db, "img")
    with pytest.raises(InUse, match="image img"):
        repo.delete_kernel(db, "k")
    with pytest.raises(ImageNotFound):
        repo.insert_vm(db, vm("orphan", 9999))
    with pytest.raises(KernelNotFound, match="nope"):
        repo.insert_image(db, image("img2", kernel_name="nope"))
    repo.delete_vm(db, "dev")
    repo.delete_image(db, "img")
    repo.delete_kernel(db, "k")
    assert repo.counts(db) == {"kernels": 0, "images": 0, "vms": 0}


def test_transaction_is_all_or_nothing(db: Database) -> None:
    with pytest.raises(AlreadyExists), db.transaction() as conn:
        repo.insert_kernel(conn, kernel("a"))
        repo.insert_kernel(conn, kernel("b"))
        repo.insert_kernel(conn, kernel("a"))
    assert repo.counts(db)["kernels"] == 0
    with db.transaction() as conn:
        repo.insert_kernel(conn, kernel("a"))
        repo.insert_kernel(conn, kernel("b"))
    assert [k.name for k in repo.list_kernels(db)] == ["a", "b"]


def test_nested_use_from_one_thread_is_an_error_not_a_deadlock(db: Database) -> None:
    with pytest.raises(RuntimeError, match="nested"), db.transaction():
        repo.counts(db)
    assert repo.counts(db)["kernels"] == 0  # the lock was released


# -- locking and concurrency (ADVERSARIAL 119) -----------------------------------------


def test_adversarial_119_lock_held_elsewhere_ends_as_state_error(db_path: Path) -> None:
    Database.open(db_path).close()
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    db = Database.open(db_path, busy_deadline_s=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(StateError, match="locked by another process") as caught:
            repo.insert_kernel(db, kernel("k"))
        assert time.monotonic() - started < 3
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        other.execute("ROLLBACK")
        repo.insert_kernel(db, kernel("k"))
        assert repo.counts(db)["kernels"] == 1
    finally:
        other.close()
        db.close()


def test_adversarial_119_short_lock_elsewhere_is_waited_for(db: Database, db_path: Path) -> None:
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    releaser.start()
    try:
        repo.insert_kernel(db, kernel("k"))
    finally:
        releaser.join()
        other.close()
    assert repo.counts(db)["kernels"] == 1


_OTHER_WRITER = """
    import sys
    from pathlib import Path
    from banger.state import repo
    from banger.state.db import Database
    from banger.model.records import KernelRecord, utc_now

    db = Database.open(Path(sys.argv[1]))
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        repo.insert_kernel(db, KernelRecord(
            name=f"proc-{i}", arch="x86_64", source="s", dir_path="/", imported_at=utc_now()))
    db.close()
    print("done", flush=True)
"""


def test_adversarial_119_threads_and_a_second_process_never_see_locked(db_path: Path) -> None:
    """16 threads x 50 writes through one AsyncDatabase while another process writes."""
    Database.open(db_path).close()
    child = _run_child(_OTHER_WRITER, str(db_path), "300")
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    adb = AsyncDatabase(Database.open(db_path))
    errors: list[BaseException] = []

    async def writer(t: int) -> None:
        await asyncio.gather(*(adb.run(repo.insert_kernel, kernel(f"t{t}-{i}")) for i in range(50)))

    def thread_main(t: int) -> None:
        try:
            asyncio.run(writer(t))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread_main, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out, err = child.communicate(timeout=120)
    try:
        assert errors == []
        assert child.returncode == 0, err
        assert out.strip() == "done"
        assert repo.counts(adb.db)["kernels"] == 16 * 50 + 300
        assert adb.db.integrity_check() == "ok"
    finally:
        adb.close()


def test_async_database_keeps_the_event_loop_free(db: Database) -> None:
    adb = AsyncDatabase(db)

    def slow(database: Database, delay_s: float) -> int:
        def work(conn: sqlite3.Connection) -> int:
            time.sleep(delay_s)
            return int(conn.execute("SELECT 1").fetchone()[0])

        return database.read(work)

    async def main() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await adb.run(slow, 0.5)
        task.cancel()
        return result, ticks

    result, ticks = asyncio.run(main())
    assert result == 1
    assert ticks >= 20  # the loop kept running while SQLite worked


# -- crashes and full disks -------------------------------------------------------------

_BATCH_WRITER = """
    import sys
    from pathlib import Path
    from banger.state import repo
    from banger.state.db import Database
    from banger.model.records import KernelRecord, utc_now

    db = Database.open(Path(sys.argv[1]))
    start = int(sys.argv[2])
    for batch in range(start, start + 100000):
        with db.transaction() as conn:
            for part in "abc":
                repo.insert_kernel(conn, KernelRecord(name=f"b{batch}-{part}", arch="x86_64",
                    source="s" * 2000, dir_path="/", imported_at=utc_now()))
        print(batch, flush=True)
"""


def test_adversarial_91_sigkill_during_writes_keeps_committed_rows(db_path: Path) -> None:
    """Committed batches survive kill -9, uncommitted ones vanish whole, the WAL is kept."""
    Database.open(db_path).close()
    committed: list[int] = []
    for round_no, kill_after in enumerate((5, 40, 120)):
        child = _run_child(_BATCH_WRITER, str(db_path), str(round_no * 100000))
        assert child.stdout is not None
        for _ in range(kill_after):
            line = child.stdout.readline()
            assert line, child.stderr.read() if child.stderr else "child exited"
            committed.append(int(line))
        child.send_signal(signal.SIGKILL)  # most likely inside the next transaction
        child.wait()
        assert child.returncode == -signal.SIGKILL
        committed.extend(int(x) for x in child.stdout.read().split())  # printed before the kill
    # The committed rows live in the WAL until a checkpoint: it must still be there.
    assert Path(f"{db_path}-wal").exists()
    db = Database.open(db_path)
    try:
        assert db.integrity_check() == "ok"
        names = {k.name for k in repo.list_kernels(db)}
        for batch in committed:
            assert {f"b{batch}-a", f"b{batch}-b", f"b{batch}-c"} <= names
        per_batch: dict[str, int] = {}
        for name in names:
            batch_id = name.split("-")[0]
            per_batch[batch_id] = per_batch.get(batch_id, 0) + 1
        assert set(per_batch.values()) == {3}  # no half-written transaction survived
    finally:
        db.close()


_FSIZE_WRITER = """
    import json, resource, sys
    from pathlib import Path
    from banger.errors import StateError
    from banger.state import repo
    from banger.state.db import Database
    from banger.model.records import KernelRecord, utc_now

    def k(name, size):
        return KernelRecord(name=name, arch="x86_64", source="x" * size, dir_path="/",
                            imported_at=utc_now())

    db = Database.open(Path(sys.argv[1]))
    repo.insert_kernel(db, k("before", 10))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # CPython ignores SIGXFSZ, so hitting the limit is a write error (EFBIG), like a full disk.
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
    result = {"error": None}
    try:
        for i in range(100):
            repo.insert_kernel(db, k(f"big{i}", 64 * 1024))
    except StateError as exc:
        result.update(error="StateError", brief=exc.brief, hint=exc.hint)
    except Exception as exc:
        result.update(error="raw " + repr(exc))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    repo.insert_kernel(db, k("after", 10))
    result["names"] = [x.name for x in repo.list_kernels(db)]
    result["integrity"] = db.integrity_check()
    db.close()
    print(json.dumps(result))
"""


def test_adversarial_110_write_beyond_file_size_limit_fails_cleanly(db_path: Path) -> None:
    Database.open(db_path).close()
    child = _run_child(_FSIZE_WRITER, str(db_path))
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    result = json.loads(out)
    assert result["error"] == "StateError", result
    assert str(db_path) in result["brief"]
    assert "free disk space" in result["hint"]
    assert {"before", "after"} <= set(result["names"])
    assert result["integrity"] == "ok"
    db = Database.open(db_path)
    try:
        assert db.integrity_check() == "ok"
        assert {k.name for k in repo.list_kernels(db)} == set(result["names"])
    finally:
        db.close()
