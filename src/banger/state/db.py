"""The state database connection: the only code in banger that talks to SQLite.

Owns: opening the database (WAL, ``synchronous=FULL``, foreign keys, busy timeout),
running the numbered migrations, the single lock-guarded connection every read and write
goes through, retrying "database is locked" within a bound, translating every
``sqlite3.Error`` into ``StateError``, and ``AsyncDatabase``, which keeps SQLite calls off
the daemon's event loop.
Must not: know about tables (that is ``banger.state.repo``), and never delete the ``-wal``
or ``-shm`` files: they hold committed transactions until SQLite checkpoints them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from banger.errors import StateError
from banger.host.paths import ensure_private_dir
from banger.state.migrations import MIGRATIONS, Migration

T = TypeVar("T")
P = ParamSpec("P")

BUSY_DEADLINE_S = 10.0
BUSY_TIMEOUT_S = 5.0
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_SPACE_CODES = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR})
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_ACCESS_CODES = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM})


_RECOVER_HINT = (
    "stop bangerd and keep a copy of state.db with its -wal and -shm files; "
    "`sqlite3 state.db .recover | sqlite3 recovered.db` salvages rows "
    '(docs/explanation/state.md, "Recovering")'
)


def _primary_code(exc: sqlite3.Error) -> int:
    # Extended codes (SQLITE_IOERR_WRITE = 778, ...) keep the primary code in the low byte;
    # errors raised by the module itself (closed connection, misuse) carry no code.
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else -1


def is_busy(exc: BaseException) -> bool:
    """True for "database is locked": another connection holds the write lock."""
    return isinstance(exc, sqlite3.OperationalError) and _primary_code(exc) in _BUSY_CODES


def translate(exc: sqlite3.Error, path: Path) -> StateError:
    """The one mapping from a raw SQLite error to banger's error model."""
    code = _primary_code(exc)
    if code in _BUSY_CODES:
        return StateError(
            f"state database {path} stayed locked by another process",
            details=str(exc),
            hint="another bangerd or tool may be writing to it; `banger daemon status`",
        )
    if code in _SPACE_CODES:
        return StateError(
            f"cannot write the state database {path}: {exc}",
            details=getattr(exc, "sqlite_errorname", None),
            hint=f"free disk space on the filesystem holding {path.parent}, then retry",
        )
    if code in _DAMAGE_CODES:
        return StateError(
            f"the state database {path} is damaged: {exc}",
            hint=_RECOVER_HINT,
        )
    if code in _ACCESS_CODES:
        return StateError(
            f"cannot open the state database {path} for writing: {exc}",
            hint=f"check that you own {path} and its directory",
        )
    return StateError(f"state database {path}: {exc}", details=type(exc).__name__)


class Database:
    """One SQLite connection shared by every thread of the process, behind one lock.

    A single writer per process is what SQLite's WAL mode wants; other processes (a
    second daemon by mistake, a debugging ``sqlite3`` shell) are waited for with the busy
    timeout and a bounded retry instead of failing with "database is locked".
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, *, busy_deadline_s: float):
        self._conn = conn
        self.path = path
        self._busy_deadline_s = busy_deadline_s
        # SQLite's own wait per attempt; ``_retry`` bounds the total by the deadline.
        self._busy_timeout_s = min(busy_deadline_s, BUSY_TIMEOUT_S)
        self._lock = threading.Lock()
        self._owner: int | None = None

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        busy_deadline_s: float = BUSY_DEADLINE_S,
        migrations: Sequence[Migration] = MIGRATIONS,
        evidence: Sequence[Path] = (),
    ) -> Database:
        """Open (creating if needed) and migrate the database at ``path``.

        ``evidence`` lists files that exist only because rows were written (published
        images, kernels, VM dirs): with any of them, a missing, empty or schema-less
        database is refused rather than started empty (issue 14 item 3).
        """
        ensure_private_dir(path.parent)
        if evidence:
            _refuse_if_lost(path, evidence)
        _create_private_file(path)
        try:
            conn = sqlite3.connect(
                path,
                check_same_thread=False,
                isolation_level=None,
                timeout=min(busy_deadline_s, BUSY_TIMEOUT_S),
            )
        except sqlite3.Error as exc:
            raise translate(exc, path) from exc
        db = cls(conn, path, busy_deadline_s=busy_deadline_s)
        try:
            db._configure()
            db._check_health()
            if evidence and db.schema_version() == 0:
                raise _lost_rows(path, "has no tables", evidence)
            db._migrate(migrations)
        except BaseException:
            conn.close()
            raise
        return db

    def _configure(self) -> None:
        with self._locked():
            conn = self._conn
            mode = self._retry(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
            if str(mode[0]).lower() != "wal":
                raise StateError(
                    f"the state database {self.path} cannot use WAL mode (got {mode[0]})",
                    hint="keep the state directory on a local filesystem, not NFS",
                )
            # FULL: a commit reported to the user survives power loss, not only a crash.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._set_busy_timeout(self._busy_timeout_s)

    def _check_health(self) -> None:
        """``PRAGMA quick_check`` before anything runs on it: a damaged file is refused."""
        rows = self.read(lambda conn: conn.execute("PRAGMA quick_check").fetchall())
        problems = [str(row[0]) for row in rows]
        if problems != ["ok"]:
            raise StateError(
                f"the state database {self.path} is damaged",
                details="\n".join(problems[:20]),
                hint=_RECOVER_HINT,
            )

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        known = migrations[-1].version if migrations else 0
        current = self.schema_version()
        if current > known:
            raise StateError(
                f"the state database {self.path} has schema version {current}; "
                f"this banger knows up to {known}",
                hint="a newer banger wrote it: upgrade banger, or point XDG_STATE_HOME "
                "elsewhere to start afresh",
            )
        for migration in migrations:
            if migration.version > current:
                self._apply(migration)

    def _apply(self, migration: Migration) -> None:
        with self.transaction() as conn:
            # Another process may have migrated between our check and BEGIN IMMEDIATE.
            if conn.execute("PRAGMA user_version").fetchone()[0] >= migration.version:
                return
            for statement in migration.statements:
                conn.execute(statement)
            # user_version lives in the database header, so the bump commits atomically
            # with the schema change it records.
            conn.execute(f"PRAGMA user_version={int(migration.version)}")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self._owner == threading.get_ident():
            raise RuntimeError("nested use of the state database from one thread")
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield
            except sqlite3.Error as exc:
                raise translate(exc, self.path) from exc
            finally:
                self._owner = None

    def _retry(self, op: Callable[[], T]) -> T:
        """Run ``op``, retrying "database is locked" with backoff until the deadline.

        SQLite's busy handler waits inside each attempt; some BUSY results skip it
        (e.g. while another connection recovers the WAL), hence the loop. The busy
        timeout of a retry is cut to what is left, so the whole wait stays bounded.
        """
        deadline = time.monotonic() + self._busy_deadline_s
        delay_s = 0.005
        shortened = False
        try:
            while True:
                try:
                    return op()
                except sqlite3.OperationalError as exc:
                    left_s = deadline - time.monotonic() - delay_s
                    if not is_busy(exc) or left_s <= 0:
                        raise
                time.sleep(delay_s * (1 + random.random()))  # noqa: S311 - jitter, not crypto
                delay_s = min(delay_s * 2, 0.25)
                self._set_busy_timeout(min(left_s, self._busy_timeout_s))
                shortened = True
        finally:
            if shortened:
                self._set_busy_timeout(self._busy_timeout_s)

    def _set_busy_timeout(self, timeout_s: float) -> None:
        self._conn.execute(f"PRAGMA busy_timeout={max(1, int(timeout_s * 1000))}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE, COMMIT, or ROLLBACK on any exception.

        IMMEDIATE takes the write lock up front, so a statement inside never hits
        "database is locked" halfway (a deferred transaction upgrading to a writer
        gets SQLITE_BUSY without the busy handler being called).
        """
        with self._locked():
            conn = self._conn
            self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                yield conn
                self._retry(lambda: conn.execute("COMMIT"))
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        # SQLite already rolled back by itself after some errors (SQLITE_FULL, IOERR).
        if self._conn.in_transaction:
            # The original error is the one worth reporting, not a failed ROLLBACK.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a read transaction (one consistent snapshot); ``fn`` must not write.

        Being read-only, ``fn`` is simply run again when the database was busy.
        """
        with self._locked():
            conn = self._conn

            def attempt() -> T:
                conn.execute("BEGIN")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
                return result

            return self._retry(attempt)

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside ``transaction()`` and return its result."""
        with self.transaction() as conn:
            return fn(conn)

    def schema_version(self) -> int:
        """The number of the last migration applied (``PRAGMA user_version``)."""
        return self.read(lambda conn: int(conn.execute("PRAGMA user_version").fetchone()[0]))

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: "ok", or the problems found, one per line."""
        rows = self.read(lambda conn: conn.execute("PRAGMA integrity_check").fetchall())
        return "\n".join(str(row[0]) for row in rows)

    def close(self) -> None:
        """Close the connection; closing twice is harmless."""
        with self._locked():
            # The last connection to close checkpoints the WAL into the main file.
            self._conn.close()


def _refuse_if_lost(path: Path, evidence: Sequence[Path]) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _lost_rows(path, "is missing", evidence) from None
    except OSError:
        return  # reported with its own error when SQLite opens it
    if size == 0:
        raise _lost_rows(path, "is empty (0 bytes)", evidence)


def _lost_rows(path: Path, what: str, evidence: Sequence[Path]) -> StateError:
    return StateError(
        f"the state database {path} {what}, but banger's files are on disk: "
        f"{', '.join(str(p) for p in evidence)}",
        details="starting on it would forget every image, kernel and VM",
        hint=f"restore {path.name} (with its -wal and -shm files) from a copy, or salvage it "
        f"with `sqlite3 {path.name} .recover`; to start afresh, move {path.parent} aside "
        "and register images and kernels again (`banger image pull`, `banger kernel import`)",
    )


def _create_private_file(path: Path) -> None:
    # SQLite creates the -wal and -shm files with the mode of the database file, so
    # creating it 0600 first keeps all three owner-only whatever the umask.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateError(
            f"cannot create the state database {path}: {exc.strerror}",
            hint=f"check that you own {path.parent} and that it has free space",
        ) from exc
    os.close(fd)


class AsyncDatabase:
    """A ``Database`` for asyncio code: every call runs on one dedicated worker thread.

    One thread keeps the SQLite work serialised in submission order and never blocks the
    event loop. A cancelled ``await`` does not stop a call already running: its
    transaction still commits or rolls back as a whole.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="banger-db")

    async def run(
        self,
        fn: Callable[Concatenate[Database, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``await adb.run(repo.get_vm, "name")`` calls ``repo.get_vm(db, "name")``."""
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, self.db, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    def close(self) -> None:
        """Wait for queued calls, then close the connection."""
        self._executor.shutdown(wait=True)
        self.db.close()
