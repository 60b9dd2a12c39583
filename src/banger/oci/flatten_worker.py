"""What ``banger.oci.ext4build`` runs inside fakeroot: ``python -m banger.oci.flatten_worker``.

Owns: the worker's protocol. One JSON request on stdin (layers, tree, out, size_bytes,
inject, limits, timeout_s); one JSON line on stdout: ``{"ok": true, "result": {...}}``,
or ``{"ok": false, "payload": <BangerError payload>}`` for an error banger understands,
which the parent raises again as the same typed error. Anything else is a crash: a
traceback on stderr and exit status 1 (the parent's Runner reports the stderr tail).
While the session runs, stdout is redirected to stderr so that an inject hook's prints
cannot corrupt the reply. Also, with ``--die-with-parent``, that nothing of the session
outlives the daemon (ADVERSARIAL 94, ``die_with_session``).
Must not: run outside fakeroot unless it is root (ownership would be the real user's,
silently), or be imported by the daemon.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from banger.errors import BangerError, CommandFailed
from banger.host.runner import die_with_parent

#: What ``banger.oci.ext4build`` passes: the parent is the ``fakeroot`` script, which
#: Runner started as the leader of a new session.
DIE_WITH_PARENT = "--die-with-parent"
IPC_RMID = 0  # <sys/ipc.h>


def _request(text: str) -> dict[str, Any]:
    request = json.loads(text)
    if not isinstance(request, dict) or not isinstance(request.get("layers"), list):
        raise CommandFailed("the flatten worker got a malformed request")
    return request


def serve(stdin_text: str) -> dict[str, Any]:
    from banger.oci.ext4build import run_session

    if "FAKEROOTKEY" not in os.environ and os.geteuid() != 0:
        raise CommandFailed("the flatten worker must run inside fakeroot or as root")
    with contextlib.redirect_stdout(sys.stderr):
        return run_session(_request(stdin_text))


def die_with_session() -> None:
    """Exit, and make faked exit, when the fakeroot script dies or the session is stopped.

    Runner gives the script PR_SET_PDEATHSIG, so it dies with the daemon; but that is
    cleared on fork, and this worker would live on as an orphan. So it asks for its own:
    SIGTERM when the script dies (the script is single-threaded, so the thread that forked
    us lives exactly as long as it does). Runner made the script a session leader, so the
    parent expected is ``os.getsid(0)``; if it is gone already, the signal comes at once.
    Runner's SIGTERM to the session on a timeout lands in the same handler. The tree and
    the partial image are the daemon's to remove (or its staging sweep's, after a crash).
    """
    stop_faked = _faked_stopper()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop_faked()
        os._exit(128 + signum)  # mkfs, our child, follows by its own PDEATHSIG

    signal.signal(signal.SIGTERM, on_term)
    die_with_parent(os.getsid(0), sig=signal.SIGTERM)


def _faked_stopper() -> Callable[[], None]:
    """What makes this session's faked exit; resolved up front, not in the handler.

    faked daemonizes into a session of its own, so neither a group kill nor PDEATHSIG
    reaches it, and the fakeroot script kills it only from its EXIT trap, which a killed
    script never runs. faked-sysv leaves its ``msgrcv`` loop when the queue it reads is
    removed, and then removes its other queue and its semaphore (fakeroot 1.31, faked.c
    ``get_msg``/``cleanup``). faked-tcp, whose key is a port, has no such handle.
    """
    key = os.environ.get("FAKEROOTKEY", "")
    if not key.lstrip("-").isdigit() or "libfakeroot-tcp" in os.environ.get("LD_PRELOAD", ""):
        return lambda: None
    import ctypes

    libc = ctypes.CDLL(None)
    msgget, msgctl = libc.msgget, libc.msgctl

    def stop() -> None:
        msqid = msgget(int(key), 0)
        if msqid >= 0:
            msgctl(msqid, IPC_RMID, None)

    return stop


def main(argv: Sequence[str] | None = None) -> int:
    if DIE_WITH_PARENT in (sys.argv[1:] if argv is None else argv):
        die_with_session()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    try:
        reply: dict[str, Any] = {"ok": True, "result": serve(sys.stdin.read())}
    except BangerError as exc:
        reply = {"ok": False, "payload": exc.to_payload()}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
