"""What ``banger.oci.ext4build`` runs inside fakeroot: ``python -m banger.oci.flatten_worker``.

Owns: the worker's protocol. One JSON request on stdin (layers, tree, out, size_bytes,
inject, limits, timeout_s); one JSON line on stdout: ``{"ok": true, "result": {...}}``,
or ``{"ok": false, "payload": <BangerError payload>}`` for an error banger understands,
which the parent raises again as the same typed error. Anything else is a crash: a
traceback on stderr and exit status 1 (the parent's Runner reports the stderr tail).
While the session runs, stdout is redirected to stderr so that an inject hook's prints
cannot corrupt the reply.
Must not: run outside fakeroot (ownership would be the real user's, silently), or be
imported by the daemon.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import Any

from banger.errors import BangerError, CommandFailed


def _request(text: str) -> dict[str, Any]:
    request = json.loads(text)
    if not isinstance(request, dict) or not isinstance(request.get("layers"), list):
        raise CommandFailed("the flatten worker got a malformed request")
    return request


def serve(stdin_text: str) -> dict[str, Any]:
    from banger.oci.ext4build import run_session

    if "FAKEROOTKEY" not in os.environ:
        raise CommandFailed("the flatten worker must run inside fakeroot")
    with contextlib.redirect_stdout(sys.stderr):
        return run_session(_request(stdin_text))


def main() -> int:
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
