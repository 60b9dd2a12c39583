"""The warm pool of TAP devices handed to VMs (SPEC §4, ADVERSARIAL 93 and 118).

Owns: choosing TAP names (the lowest free ``bgtap<N>``), keeping ``size`` TAPs created
ahead of time so starting a VM does not wait for one, handing each out to at most one
caller, deleting released ones and topping the pool back up in the background, and
deleting our orphaned TAPs at daemon start.

Must not: create or delete links itself (everything goes through ``PrivilegedOps``),
know about the database (callers pass the TAP names their VM rows hold), or touch any
TAP that is not provably ours: our naming, our owner uid, and no VM row using it.
Orphans that cannot be deleted because the root helper is down are left for the next
start, so that an owner daemon starts without its helper (SPEC §9 mode "none").

Thread-safe: any number of threads may call ``acquire``/``release`` at once (the daemon
calls them through ``asyncio.to_thread``); slow privileged work runs outside the lock,
names are reserved inside it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from banger.errors import AlreadyExists, BangerError, Conflict, HelperUnavailable
from banger.model.addressing import MAX_TAP_INDEX, tap_name, validate_tap_name
from banger.net.privileged import PrivilegedOps

log = logging.getLogger("banger.net.taps")

#: How many taken names (e.g. another user's leftover ``bgtap3``) to step over per
#: creation before giving up.
MAX_NAME_ATTEMPTS = 16
DEFAULT_WAIT_S = 60.0


class TapPool:
    def __init__(self, ops: PrivilegedOps, bridge: str, size: int, owner_uid: int) -> None:
        self._ops = ops
        self._bridge = bridge
        self._size = max(0, size)
        self._owner_uid = owner_uid
        self._lock = threading.Lock()
        # Only one refill runs at a time, so concurrent refills cannot overshoot ``size``.
        self._fill_lock = threading.Lock()
        self._warm: list[str] = []  # created, attached, handed to nobody
        self._busy: set[str] = set()  # being created or deleted by us, or handed out
        self._foreign: set[str] = set()  # existed when we tried to create them
        self._fillers: list[threading.Thread] = []

    @property
    def warm(self) -> list[str]:
        with self._lock:
            return list(self._warm)

    def acquire(self, used: Iterable[str] = ()) -> str:
        """A TAP for a new VM: a warm one if any, else a fresh one. Never one in ``used``."""
        used = set(used)
        with self._lock:
            name = next((n for n in self._warm if n not in used), None)
            if name is not None:
                self._warm.remove(name)
                self._busy.add(name)
        if name is None:
            name = self._create(used, warm=False)
        self._top_up_later()
        return name

    def release(self, name: str) -> None:
        """Delete a TAP whose VM is gone, then refill the pool in the background."""
        name = validate_tap_name(name)
        with self._lock:
            self._busy.add(name)  # no one may pick the name while it is being deleted
            if name in self._warm:
                self._warm.remove(name)
        try:
            self._ops.delete_tap(name)
        finally:
            with self._lock:
                self._busy.discard(name)
                self._foreign.discard(name)
        self._top_up_later()

    def fill(self) -> None:
        """Create TAPs until ``size`` are warm (synchronously)."""
        with self._fill_lock:
            while True:
                with self._lock:
                    if len(self._warm) >= self._size:
                        return
                self._create(set(), warm=True)

    def cleanup_orphans(self, in_use: Iterable[str]) -> list[str]:
        """Delete our TAPs that no VM row uses (daemon start); return their names."""
        in_use = set(in_use)
        deleted: list[str] = []
        for name in self._ops.list_taps(owner_uid=self._owner_uid):
            with self._lock:
                # Checked per name: a TAP created since list_taps() is in _busy or _warm.
                if name in in_use or name in self._busy or name in self._warm:
                    continue
                self._busy.add(name)
            try:
                self._ops.delete_tap(name)
                deleted.append(name)
            except HelperUnavailable as exc:
                # An owner daemon started while its root helper is down must still start
                # (VM creation is what fails, naming the fix); the next start retries.
                log.warning("orphaned TAPs left in place from %s on: %s", name, exc.brief)
                break
            finally:
                with self._lock:
                    self._busy.discard(name)
        if deleted:
            log.info("deleted %d orphaned TAPs: %s", len(deleted), ", ".join(deleted))
        return deleted

    def wait_idle(self, timeout_s: float = DEFAULT_WAIT_S) -> None:
        """Wait for background refills started so far (shutdown and tests)."""
        with self._lock:
            fillers = list(self._fillers)
        for thread in fillers:
            thread.join(timeout_s)

    # -- internals ------------------------------------------------------------------------

    def _create(self, used: set[str], *, warm: bool) -> str:
        for _ in range(MAX_NAME_ATTEMPTS):
            with self._lock:
                name = self._free_name(used)
                self._busy.add(name)
            try:
                self._ops.create_tap(name, bridge=self._bridge, owner_uid=self._owner_uid)
            except AlreadyExists:
                # A TAP of a VM from before a restart, another user's, or a manual one:
                # step over it rather than take it.
                log.info("interface %s already exists; trying the next TAP name", name)
                with self._lock:
                    self._busy.discard(name)
                    self._foreign.add(name)
                continue
            except BaseException:
                with self._lock:
                    self._busy.discard(name)
                raise
            if warm:
                with self._lock:
                    self._busy.discard(name)
                    self._warm.append(name)
            return name
        raise Conflict(
            f"no free TAP name after {MAX_NAME_ATTEMPTS} tries",
            hint="`ip -d link show type tun` lists the bgtap* TAPs of other users",
        )

    def _free_name(self, used: set[str]) -> str:
        taken = used | self._busy | self._foreign | set(self._warm)
        for index in range(MAX_TAP_INDEX + 1):
            name = tap_name(index)
            if name not in taken:
                return name
        raise Conflict("every TAP name is taken")  # unreachable with fewer than 10**10 VMs

    def _top_up_later(self) -> None:
        if self._size == 0:
            return
        thread = threading.Thread(target=self._fill_logged, name="banger-tap-fill", daemon=True)
        with self._lock:
            self._fillers = [t for t in self._fillers if t.is_alive()]
            self._fillers.append(thread)
        thread.start()

    def _fill_logged(self) -> None:
        try:
            self.fill()
        except BangerError as exc:
            # The pool only makes VM starts faster; acquire() still creates on demand.
            log.warning("could not refill the TAP pool: %s", exc.brief)
        except Exception:
            log.exception("could not refill the TAP pool")
