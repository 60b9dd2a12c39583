"""Stopping one VMM: the backend's graceful stop, then SIGKILL, and what to record.

Owns: the order of a stop (ask the guest, then end the VMM whatever went wrong: a stop
never leaves a VM half-stopped, ADVERSARIAL 96, 97) and the ``last_error`` wording of how
the VMM ended. Must not: change rows or take VM locks (``VmService.stop`` does).
"""

from __future__ import annotations

import logging
import signal as signals

from banger.errors import BangerError, CommandFailed
from banger.host import procinfo
from banger.services.vmm_factory import VmmFactory
from banger.vmm import spawn
from banger.vmm.base import VmmHandle

log = logging.getLogger("banger.vms")

STOP_TIMEOUT_S = 20.0
#: How long a SIGKILLed VMM may take to be gone (it frees the guest's memory first).
KILL_WAIT_S = 10.0


async def shut_down(vmms: VmmFactory, name: str, handle: VmmHandle) -> None:
    """The backend's graceful stop; whatever goes wrong there (its binary gone, say), the
    VMM ends."""
    try:
        await vmms.installed(handle.backend).shutdown(handle, timeout_s=STOP_TIMEOUT_S)
    except BangerError as exc:
        log.warning("graceful stop failed", extra={"fields": {"vm": name, "error": exc.brief}})
    if not procinfo.is_running(handle.process):
        return
    spawn.signal_if_ours(handle.process, signals.SIGKILL)
    if not await spawn.wait_exit(handle.process, timeout_s=KILL_WAIT_S):
        raise CommandFailed(
            f"the VMM of {name!r} (pid {handle.process.pid}) survived SIGKILL",
            hint="it is stuck in the kernel (state D in /proc); `banger vm stop` again later",
        )


async def stop_outcome(handle: VmmHandle) -> str | None:
    """What ``last_error`` says after a stop: nothing for a clean exit (or one we cannot
    know: a VMM adopted after a daemon restart is not our child)."""
    status = await spawn.exit_status(handle.process)
    pid = handle.process.pid
    if not status:
        return None
    if status < 0:
        try:
            sig = signals.Signals(-status).name
        except ValueError:
            sig = f"signal {-status}"
        return f"forcefully terminated: the VMM (pid {pid}) ended by {sig}, not by the guest"
    return f"the VMM (pid {pid}) exited with status {status} while stopping"
