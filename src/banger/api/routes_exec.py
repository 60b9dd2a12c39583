"""``POST /vms/{name}/exec``: a command in the guest, streamed both ways (``vm exec``).

The request is ordinary HTTP/1.1 with ``Connection: Upgrade`` and ``Upgrade:
banger-exec/1`` and a JSON body (``ExecBody``). Every failure before the command runs (no
such VM, not running, no agent answering, the command could not start) is an ordinary JSON
error reply, as is a ``Banger-Build`` header naming another build than the daemon's (409:
the fast ``vm exec`` then hands over to the CLI that restarts it). Once the guest said the
command started, the daemon answers ``101 Switching Protocols`` (header
``Banger-Exec-Pid``) and the connection carries frames (``banger.api.exec_relay``;
docs/explanation/guest-exec.md).

Owns: that sequence. Must not: hold the relay's or the service's logic.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from banger.api.deps import Services
from banger.api.exec_relay import ExecRelay
from banger.api.models import ExecBody
from banger.api.transport import UPGRADE_EXTENSION, RawUpgrade
from banger.errors import Conflict, InvalidRequest
from banger.model import limits

log = logging.getLogger("banger.exec")
router = APIRouter(tags=["vms"])
Name = Annotated[str, Path(min_length=1, max_length=limits.URL_NAME_MAX)]
PROTOCOL = "banger-exec/1"

UPGRADE: dict[int | str, dict[str, Any]] = {
    101: {
        "description": (
            "Switching Protocols (`Upgrade: banger-exec/1`): the command started; the "
            "connection now carries exec frames `[kind u8][channel u32][length u32][payload]` "
            "on channel 1 — from the client STDIN (3), STDIN_EOF (4), SIGNAL (5), CREDIT (6); "
            "from the daemon STDOUT (0x84), STDERR (0x85), STDIN_CREDIT (0x86), EXIT (0x87) "
            "and FAILED (0x83, a banger error as JSON). Output and stdin each start with a "
            "256 KiB window. See docs/explanation/guest-exec.md."
        ),
        "headers": {
            "Upgrade": {"schema": {"type": "string", "enum": [PROTOCOL]}},
            "Banger-Exec-Pid": {
                "description": "the command's pid in the guest",
                "schema": {"type": "integer"},
            },
        },
    },
}


@router.post(
    "/vms/{name}/exec",
    status_code=101,
    response_class=Response,
    responses=UPGRADE,
    openapi_extra={
        "parameters": [
            {
                "name": "Upgrade",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "enum": [PROTOCOL]},
            },
            {
                "name": "Connection",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "enum": ["Upgrade"]},
            },
            {
                "name": "Banger-Build",
                "in": "header",
                "required": False,
                "description": (
                    "`VERSION COMMIT BUILD_TIME` of the client; a daemon of another build "
                    "answers 409 `conflict` before running anything (the CLI then restarts it)"
                ),
                "schema": {"type": "string", "maxLength": 400},
            },
        ]
    },
)
async def exec_in_vm(request: Request, services: Services, name: Name, body: ExecBody) -> Response:
    """Run a command through the guest agent, its stdin and output streamed (see 101)."""
    upgrade = request.scope.get("extensions", {}).get(UPGRADE_EXTENSION)
    if not isinstance(upgrade, RawUpgrade):
        raise InvalidRequest(
            "this route switches protocols",
            hint=f"send `Connection: Upgrade` and `Upgrade: {PROTOCOL}` (`banger vm exec`)",
        )
    wanted = request.headers.get("banger-build")
    if wanted is not None and wanted != services.ctx.build.token():
        raise Conflict(
            "this daemon is another build than the CLI that asked "
            f"(daemon: {services.ctx.build.token()[:120]})",
            hint="the banger CLI restarts a daemon of another build: run the command again",
        )
    proc = await services.execs.start(
        name, body.argv, cwd=body.cwd, env=body.env, timeout_s=body.timeout_s
    )
    started = time.monotonic()
    try:
        reader, writer = upgrade.accept([(b"banger-exec-pid", str(proc.pid or 0).encode())])
    except BaseException:
        proc.kill()
        raise
    relay = ExecRelay(proc, reader, writer, timeout_s=body.timeout_s)
    upgrade.on_shutdown(relay.shutdown)
    try:
        await relay.run()
    finally:
        upgrade.finished()
        log.info(
            "exec ended",
            extra={
                "fields": {
                    "vm": name,
                    "program": body.argv[0][:200],
                    "outcome": relay.outcome,
                    "seconds": round(time.monotonic() - started, 3),
                }
            },
        )
    return Response(status_code=101)
