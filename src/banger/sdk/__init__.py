"""The Python SDK: banger VMs as objects for programs and coding agents (SPEC §11).

``from banger import Sandbox, AsyncSandbox`` (docs/sdk.md). ``Sandbox`` is blocking;
``AsyncSandbox`` has the same names for asyncio and runs each call in a worker thread.
Errors are the ``BangerError`` subclasses of ``banger.errors``, rebuilt by the client from
the daemon's error codes (each has ``.code``, ``.hint``), re-exported here.

Owns: the sandbox objects (``sandbox``, ``async_sandbox``), their commands
(``commands``), files and workspace (``sandbox_parts``). Must not: import ``banger.cli``
or the daemon's stack (``api``, ``services``): it is a client like the CLI, one rank above
``banger.client`` (tests/unit/test_layers.py).
"""

from banger.errors import (
    BangerError,
    CommandExitError,
    Conflict,
    DaemonUnavailable,
    ImageNotFound,
    InvalidArgument,
    InvalidState,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Timeout,
    VmNotFound,
)
from banger.sdk.async_sandbox import AsyncCommandHandle, AsyncSandbox
from banger.sdk.commands import CommandHandle, CommandResult
from banger.sdk.sandbox import Sandbox

__all__ = [
    "AsyncCommandHandle",
    "AsyncSandbox",
    "BangerError",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "Conflict",
    "DaemonUnavailable",
    "ImageNotFound",
    "InvalidArgument",
    "InvalidState",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Sandbox",
    "Timeout",
    "VmNotFound",
]
