"""Reading and writing kernel, image and VM rows.

Owns: the SQL for each table, conversion between rows and ``banger.model.records``, and
turning constraint violations into errors that name the thing (``AlreadyExists`` naming
the field, ``InUse`` naming a user, a ``NotFound`` subclass naming what was asked for).
Must not: open connections or manage transactions beyond "one call, one transaction"
(that is ``banger.state.db``), or decide policy (whether a VM may be deleted is a
service's call).

Every function takes either a ``Database`` (the call then runs in its own transaction)
or the ``sqlite3.Connection`` of a ``db.transaction()`` the caller holds, to make several
calls atomic together.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, fields, replace
from datetime import datetime
from typing import Any, Generic, TypeVar

from banger.errors import (
    AlreadyExists,
    BangerError,
    ImageNotFound,
    InUse,
    InvalidArgument,
    KernelNotFound,
    NotFound,
    StateError,
    VmNotFound,
)
from banger.model.records import ImageRecord, KernelRecord, VmRecord, VmState, utc_now
from banger.state.db import Database

T = TypeVar("T")
R = TypeVar("R")
Target = Database | sqlite3.Connection

_UNIQUE = re.compile(r"UNIQUE constraint failed: \w+\.(\w+)")
_CHECK = re.compile(r"CHECK constraint failed: (.+)")
_BOOL_COLUMNS = frozenset({"has_initrd", "has_modules", "managed", "nat", "pool"})
_TIME_COLUMNS = frozenset({"imported_at", "created_at", "updated_at", "stopped_at"})


@dataclass(frozen=True)
class _Reference:
    """The one foreign key of a table: SQLite does not say which key failed."""

    column: str
    not_found: type[NotFound]
    label: str


@dataclass(frozen=True)
class _Table(Generic[R]):
    name: str
    kind: str  # how errors call one row: "VM", "image", "kernel"
    record: type[R]
    not_found: type[NotFound]
    # Columns a caller may change after insert; identity and creation time never move.
    updatable: frozenset[str]
    _: KW_ONLY
    reference: _Reference | None = None
    stamps_updated_at: bool = False


def _columns(record: type[Any], *fixed: str) -> frozenset[str]:
    return frozenset(f.name for f in fields(record)) - set(fixed)


_KERNELS = _Table("kernels", "kernel", KernelRecord, KernelNotFound, _columns(KernelRecord, "name"))
_IMAGES = _Table(
    "images",
    "image",
    ImageRecord,
    ImageNotFound,
    _columns(ImageRecord, "id", "name", "created_at"),
    reference=_Reference("kernel_name", KernelNotFound, "kernel"),
)
_VMS = _Table(
    "vms",
    "VM",
    VmRecord,
    VmNotFound,
    # A pool VM becomes the user's only through claim_vm (name and mark change together).
    _columns(VmRecord, "id", "name", "created_at", "updated_at", "pool"),
    reference=_Reference("image_id", ImageNotFound, "image with id"),
    stamps_updated_at=True,
)


# -- plumbing ---------------------------------------------------------------------------


def _write(target: Target, fn: Callable[[sqlite3.Connection], T]) -> T:
    return target.write(fn) if isinstance(target, Database) else fn(target)


def _read(target: Target, fn: Callable[[sqlite3.Connection], T]) -> T:
    return target.read(fn) if isinstance(target, Database) else fn(target)


def _to_sql(value: object) -> object:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamps in the state database must be timezone-aware")
        return value.isoformat()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, VmState):
        return value.value
    return value


def _from_sql(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in _BOOL_COLUMNS:
        return bool(value)
    if column in _TIME_COLUMNS:
        return datetime.fromisoformat(value)
    if column == "state":
        return VmState(value)
    return value


def _select(
    table: _Table[R], conn: sqlite3.Connection, where: str, params: tuple[object, ...]
) -> list[R]:
    cursor = conn.execute(f"SELECT * FROM {table.name} {where}", params)  # noqa: S608
    columns = [d[0] for d in cursor.description]
    return [
        table.record(**{c: _from_sql(c, v) for c, v in zip(columns, row, strict=True)})
        for row in cursor.fetchall()
    ]


def _get(table: _Table[R], conn: sqlite3.Connection, name: str) -> R:
    found = _select(table, conn, "WHERE name = ?", (name,))
    if not found:
        raise table.not_found(f"{table.kind} {name!r} not found")
    return found[0]


def _constraint_error(
    exc: sqlite3.IntegrityError, table: _Table[Any], values: Mapping[str, object]
) -> BangerError:
    """The error a user can act on for a violated constraint."""
    message = str(exc)
    ref = table.reference
    if "FOREIGN KEY" in message and ref is not None:
        return ref.not_found(f"{ref.label} {values.get(ref.column)!r} not found")
    if match := _UNIQUE.search(message):
        column = match.group(1)
        return AlreadyExists(f"a {table.kind} with {column} {values.get(column)!r} already exists")
    if match := _CHECK.search(message):
        return InvalidArgument(f"invalid {table.kind}: {match.group(1)} must hold")
    return StateError(f"{table.kind} row rejected by the state database: {message}")


def _insert(table: _Table[R], conn: sqlite3.Connection, record: R) -> int:
    row = {c: _to_sql(v) for c, v in vars(record).items() if c != "id"}
    marks = ", ".join(f":{c}" for c in row)
    sql = f"INSERT INTO {table.name} ({', '.join(row)}) VALUES ({marks})"  # noqa: S608
    try:
        return int(conn.execute(sql, row).lastrowid or 0)
    except sqlite3.IntegrityError as exc:
        raise _constraint_error(exc, table, row) from exc


def _update(
    table: _Table[R], conn: sqlite3.Connection, name: str, changes: Mapping[str, object]
) -> R:
    unknown = sorted(set(changes) - table.updatable)
    if unknown:
        raise InvalidArgument(
            f"cannot change {table.kind} field(s) {', '.join(unknown)}",
            hint=f"changeable fields: {', '.join(sorted(table.updatable))}",
        )
    values = {c: _to_sql(v) for c, v in changes.items()}
    if values and table.stamps_updated_at:
        values["updated_at"] = _to_sql(utc_now())
    if values:
        sets = ", ".join(f"{c} = :{c}" for c in values)
        sql = f"UPDATE {table.name} SET {sets} WHERE name = :_name"  # noqa: S608
        try:
            conn.execute(sql, {**values, "_name": name})
        except sqlite3.IntegrityError as exc:
            raise _constraint_error(exc, table, values) from exc
    return _get(table, conn, name)


def _delete(table: _Table[Any], conn: sqlite3.Connection, name: str, users: str | None) -> None:
    """Delete row ``name``; ``users`` selects labels of rows that still refer to it."""
    if users is not None:
        labels = [r[0] for r in conn.execute(users, (name,)).fetchmany(4)]
        if labels:
            more = " and more" if len(labels) > 3 else ""
            raise InUse(
                f"{table.kind} {name!r} is in use by {', '.join(labels[:3])}{more}",
                hint="delete those first",
            )
    sql = f"DELETE FROM {table.name} WHERE name = ?"  # noqa: S608
    try:
        deleted = conn.execute(sql, (name,)).rowcount
    except sqlite3.IntegrityError as exc:
        # A reference added by a table this check does not know about yet.
        raise InUse(f"{table.kind} {name!r} is still in use", details=str(exc)) from exc
    if deleted == 0:
        raise table.not_found(f"{table.kind} {name!r} not found")


# -- kernels ----------------------------------------------------------------------------


def insert_kernel(target: Target, kernel: KernelRecord) -> KernelRecord:
    _write(target, lambda conn: _insert(_KERNELS, conn, kernel))
    return kernel


def get_kernel(target: Target, name: str) -> KernelRecord:
    return _read(target, lambda conn: _get(_KERNELS, conn, name))


def list_kernels(target: Target) -> list[KernelRecord]:
    return _read(target, lambda conn: _select(_KERNELS, conn, "ORDER BY name", ()))


def update_kernel(target: Target, name: str, /, **changes: object) -> KernelRecord:
    return _write(target, lambda conn: _update(_KERNELS, conn, name, changes))


def delete_kernel(target: Target, name: str) -> None:
    """Delete kernel ``name``; ``InUse`` naming an image while one still uses it."""
    users = "SELECT 'image ' || name FROM images WHERE kernel_name = ? ORDER BY name"
    _write(target, lambda conn: _delete(_KERNELS, conn, name, users))


# -- images -----------------------------------------------------------------------------


def insert_image(target: Target, image: ImageRecord) -> ImageRecord:
    """Insert ``image`` and return it with its new ``id``."""
    image_id = _write(target, lambda conn: _insert(_IMAGES, conn, image))
    return replace(image, id=image_id)


def get_image(target: Target, name: str) -> ImageRecord:
    return _read(target, lambda conn: _get(_IMAGES, conn, name))


def get_image_by_id(target: Target, image_id: int) -> ImageRecord:
    found = _read(target, lambda conn: _select(_IMAGES, conn, "WHERE id = ?", (image_id,)))
    if not found:
        raise ImageNotFound(f"image with id {image_id} not found")
    return found[0]


def list_images(target: Target) -> list[ImageRecord]:
    return _read(target, lambda conn: _select(_IMAGES, conn, "ORDER BY name", ()))


def update_image(target: Target, name: str, /, **changes: object) -> ImageRecord:
    return _write(target, lambda conn: _update(_IMAGES, conn, name, changes))


def delete_image(target: Target, name: str) -> None:
    """Delete image ``name``; ``InUse`` naming a VM while one still uses it."""
    users = (
        "SELECT 'VM ' || v.name FROM vms v JOIN images i ON v.image_id = i.id "
        "WHERE i.name = ? ORDER BY v.name"
    )
    _write(target, lambda conn: _delete(_IMAGES, conn, name, users))


# -- VMs --------------------------------------------------------------------------------


def insert_vm(target: Target, vm: VmRecord) -> VmRecord:
    """Insert ``vm`` and return it with its new ``id``."""
    vm_id = _write(target, lambda conn: _insert(_VMS, conn, vm))
    return replace(vm, id=vm_id)


def get_vm(target: Target, name: str) -> VmRecord:
    return _read(target, lambda conn: _get(_VMS, conn, name))


def list_vms(
    target: Target, *, state: VmState | None = None, pool: bool | None = None
) -> list[VmRecord]:
    """VM rows by name; ``pool`` False gives the user's VMs, True the warm pool's, None all."""
    conditions: list[str] = []
    params: list[object] = []
    if state is not None:
        conditions.append("state = ?")
        params.append(state.value)
    if pool is not None:
        conditions.append("pool = ?")
        params.append(int(pool))
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    return _read(target, lambda conn: _select(_VMS, conn, where + "ORDER BY name", tuple(params)))


def claim_vm(target: Target, pool_name: str, name: str, *, vm_dir: str) -> VmRecord:
    """Pool VM ``pool_name`` becomes the user's VM ``name`` in one statement; NotFound
    when no pool VM has that name any more, AlreadyExists when ``name`` is taken."""

    def claim(conn: sqlite3.Connection) -> VmRecord:
        values = {"name": name, "vm_dir": vm_dir, "updated_at": _to_sql(utc_now())}
        sql = (
            "UPDATE vms SET name = :name, vm_dir = :vm_dir, pool = 0, updated_at = :updated_at "
            "WHERE name = :old AND pool = 1"
        )
        try:
            changed = conn.execute(sql, {**values, "old": pool_name}).rowcount
        except sqlite3.IntegrityError as exc:
            raise _constraint_error(exc, _VMS, values) from exc
        if changed != 1:
            raise VmNotFound(f"pool VM {pool_name!r} not found")
        return _get(_VMS, conn, name)

    return _write(target, claim)


def update_vm(target: Target, name: str, /, **changes: object) -> VmRecord:
    """Change whitelisted columns of VM ``name`` (``updated_at`` follows); return the row."""
    return _write(target, lambda conn: _update(_VMS, conn, name, changes))


def delete_vm(target: Target, name: str) -> None:
    _write(target, lambda conn: _delete(_VMS, conn, name, None))


def counts(target: Target) -> dict[str, int]:
    """Row counts per table, e.g. for ``doctor`` and the daemon's status."""

    def count(conn: sqlite3.Connection) -> dict[str, int]:
        return {
            t.name: int(conn.execute(f"SELECT count(*) FROM {t.name}").fetchone()[0])  # noqa: S608
            for t in (_KERNELS, _IMAGES, _VMS)
        }

    return _read(target, count)
