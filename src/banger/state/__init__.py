"""Persistent state: the SQLite database (``db``), its schema (``migrations``), typed rows
(``records``) and the queries over them (``repo``).

Owns: everything banger remembers across daemon restarts.
Must not: touch the filesystem beyond the database files, the host, or VMs.
"""

from banger.model.records import ImageRecord, KernelRecord, VmRecord, VmState
from banger.state.db import AsyncDatabase, Database

__all__ = ["AsyncDatabase", "Database", "ImageRecord", "KernelRecord", "VmRecord", "VmState"]
