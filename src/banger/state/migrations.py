"""The schema of the state database, as numbered migrations.

Owns: the SQL that creates and evolves tables. Migration N brings a database from
``PRAGMA user_version`` N-1 to N; ``banger.state.db`` runs each one in its own
transaction together with the version bump.
Must not: ever change a migration that has shipped (databases in the field already ran
it): add a new one instead. Must not import the record types: a migration is frozen in
time, so the VM state list below is spelled out even though ``VmState`` mirrors it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

# STRICT tables (SQLite >= 3.37) reject a value of the wrong type instead of storing it
# with "type affinity"; older libraries get the same schema without that guard.
_STRICT = " STRICT" if sqlite3.sqlite_version_info >= (3, 37, 0) else ""


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    # One statement per item: sqlite3's executescript() would COMMIT the transaction the
    # runner opened, so statements are executed one by one.
    statements: tuple[str, ...]


_KERNELS = f"""
CREATE TABLE kernels (
    name        TEXT NOT NULL PRIMARY KEY,
    distro      TEXT,
    arch        TEXT NOT NULL,
    version     TEXT,
    sha256      TEXT,
    source      TEXT NOT NULL,
    dir_path    TEXT NOT NULL,
    has_initrd  INTEGER NOT NULL DEFAULT 0 CHECK (has_initrd IN (0, 1)),
    has_modules INTEGER NOT NULL DEFAULT 0 CHECK (has_modules IN (0, 1)),
    imported_at TEXT NOT NULL
){_STRICT}
"""

_IMAGES = f"""
CREATE TABLE images (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    managed        INTEGER NOT NULL CHECK (managed IN (0, 1)),
    rootfs_path    TEXT NOT NULL,
    work_seed_path TEXT,
    kernel_name    TEXT REFERENCES kernels(name) ON DELETE RESTRICT,
    kernel_path    TEXT,
    initrd_path    TEXT,
    modules_path   TEXT,
    source         TEXT NOT NULL,
    source_digest  TEXT,
    size_bytes     INTEGER CHECK (size_bytes IS NULL OR size_bytes >= 0),
    created_at     TEXT NOT NULL
){_STRICT}
"""

_VMS = f"""
CREATE TABLE vms (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    image_id        INTEGER REFERENCES images(id) ON DELETE RESTRICT,
    state           TEXT NOT NULL CHECK (state IN
                        ('creating', 'starting', 'running', 'stopping', 'stopped', 'error')),
    vmm             TEXT,
    vcpu            INTEGER NOT NULL CHECK (vcpu > 0),
    memory_mib      INTEGER NOT NULL CHECK (memory_mib > 0),
    disk_size_bytes INTEGER NOT NULL CHECK (disk_size_bytes > 0),
    nat             INTEGER NOT NULL DEFAULT 0 CHECK (nat IN (0, 1)),
    ip              TEXT UNIQUE,
    mac             TEXT UNIQUE,
    tap             TEXT UNIQUE,
    vm_dir          TEXT,
    pid             INTEGER CHECK (pid IS NULL OR pid > 0),
    pid_start_ticks INTEGER,
    boot_id         TEXT,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    stopped_at      TEXT
){_STRICT}
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="kernels, images and vms",
        statements=(
            _KERNELS,
            _IMAGES,
            _VMS,
            # Foreign-key checks on DELETE scan the child table without these indexes.
            "CREATE INDEX images_kernel_name ON images(kernel_name)",
            "CREATE INDEX vms_image_id ON vms(image_id)",
        ),
    ),
    Migration(
        version=2,
        description="images: the init a pulled image boots with (init= on the command line)",
        statements=("ALTER TABLE images ADD COLUMN init_path TEXT",),
    ),
    Migration(
        version=3,
        description="vms: the loopback port a rootless VM's SSH is forwarded from",
        statements=(
            "ALTER TABLE vms ADD COLUMN ssh_port INTEGER "
            "CHECK (ssh_port IS NULL OR (ssh_port BETWEEN 1 AND 65535))",
            # SQLite cannot add a UNIQUE column; NULLs (bridged VMs) never collide here.
            "CREATE UNIQUE INDEX vms_ssh_port ON vms(ssh_port)",
        ),
    ),
    Migration(
        version=4,
        description="vms: warm-pool VMs (ready, not yet handed to the user) are marked",
        statements=(
            "ALTER TABLE vms ADD COLUMN pool INTEGER NOT NULL DEFAULT 0 CHECK (pool IN (0, 1))",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
