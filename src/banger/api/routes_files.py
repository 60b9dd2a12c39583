"""Routes of files in a running VM's guest (docs/explanation/guest-files.md).

``GET``/``PUT`` ``/vms/{name}/files?path=…`` read and write one file as a raw
``application/octet-stream`` body, streamed both ways (the daemon holds a window of it,
not the file); ``…/files/list``, ``…/files/stat`` and ``DELETE …/files`` are JSON;
``…/files/archive`` carries a directory tree in the agent's archive format (``vm cp``).
A read's failure after its first byte cuts the reply short (the client sees a chunked
body without its end and reports it); failures before it are ordinary error replies.
Must not: hold the logic of a transfer (``banger.services.vm_files``) or buffer a body.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import StreamingResponse

from banger.api.deps import Services
from banger.api.models import GuestFile, GuestFileList, GuestFileRemoved, GuestFileWritten
from banger.errors import InvalidRequest
from banger.guest.file_ops import GuestStream
from banger.model import limits
from banger.model.guest_paths import (
    LIST_MAX_ENTRIES,
    MAX_PATH_BYTES,
    READ_MAX_BYTES_DEFAULT,
    TRANSFER_MAX_BYTES,
)
from banger.model.record import as_dict
from banger.model.wire import OCTET_STREAM

log = logging.getLogger("banger.api")
router = APIRouter(tags=["files"])
Name = Annotated[str, Path(min_length=1, max_length=limits.URL_NAME_MAX)]
GuestPath = Annotated[str, Query(min_length=1, max_length=MAX_PATH_BYTES, description="absolute")]
MaxBytes = Annotated[int, Query(ge=0, le=TRANSFER_MAX_BYTES)]
RAW: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        "description": "the bytes; X-Banger-File-Size/-Mode/-Mtime give the file's stat",
    }
}
RAW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        "description": "the raw bytes, with a Content-Length",
    }
}


@router.get("/vms/{name}/files", response_class=StreamingResponse, responses=RAW)
async def read_file(
    services: Services,
    name: Name,
    path: GuestPath,
    max_bytes: MaxBytes = READ_MAX_BYTES_DEFAULT,
    offset: Annotated[int, Query(ge=0, le=TRANSFER_MAX_BYTES)] = 0,
) -> StreamingResponse:
    """A regular file of the guest, at most ``max_bytes`` (a larger one: 413)."""
    stream = await services.files.open_read(name, path, max_bytes=max_bytes, offset=offset)
    assert stream.info is not None
    headers = {
        "X-Banger-File-Size": str(stream.info.size),
        "X-Banger-File-Mode": f"{stream.info.mode:o}",
        "X-Banger-File-Mtime": repr(stream.info.mtime),
    }
    return StreamingResponse(_body(stream), media_type=OCTET_STREAM, headers=headers)


@router.get("/vms/{name}/files/archive", response_class=StreamingResponse, responses=RAW)
async def read_archive(
    services: Services, name: Name, path: GuestPath, max_bytes: MaxBytes = READ_MAX_BYTES_DEFAULT
) -> StreamingResponse:
    """The directory tree under ``path`` in the agent's archive format (guest-files.md)."""
    stream = await services.files.open_pack(name, path, max_bytes=max_bytes)
    return StreamingResponse(_body(stream), media_type=OCTET_STREAM)


async def _body(stream: GuestStream) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream.chunks():
            yield chunk
    except Exception:
        # The head is gone: cutting the chunked body short is how the client learns.
        log.warning("a guest file transfer failed mid-way", exc_info=True)
        raise


@router.put("/vms/{name}/files", response_model=GuestFileWritten, openapi_extra=RAW_BODY)
async def write_file(
    *,
    services: Services,
    request: Request,
    name: Name,
    path: GuestPath,
    mode: Annotated[str, Query(pattern="^[0-7]{1,4}$", description="octal")] = "644",
    parents: Annotated[bool, Query()] = True,
) -> dict[str, Any]:
    """Replace a guest file with the body (atomically: a temporary file, then a rename)."""
    size = _content_length(request)
    await services.files.write(
        name, path, request.stream(), size=size, mode=int(mode, 8), parents=parents
    )
    return {"vm": name, "path": path, "size": size}


@router.put("/vms/{name}/files/archive", response_model=GuestFileWritten, openapi_extra=RAW_BODY)
async def write_archive(
    services: Services,
    request: Request,
    name: Name,
    path: GuestPath,
    parents: Annotated[bool, Query()] = True,
) -> dict[str, Any]:
    """Create an archive (guest-files.md's format) under the guest directory ``path``."""
    size = _content_length(request)
    await services.files.unpack(name, path, request.stream(), size=size, parents=parents)
    return {"vm": name, "path": path, "size": size}


@router.get("/vms/{name}/files/list", response_model=GuestFileList)
async def list_files(
    services: Services,
    name: Name,
    path: GuestPath,
    limit: Annotated[int, Query(ge=1, le=LIST_MAX_ENTRIES)] = LIST_MAX_ENTRIES,
) -> dict[str, Any]:
    """A guest directory's entries (symlinks reported, not followed), sorted by name."""
    files, truncated = await services.files.list(name, path, limit=limit)
    return {"vm": name, "path": path, "files": [as_dict(f) for f in files], "truncated": truncated}


@router.get("/vms/{name}/files/stat", response_model=GuestFile)
async def stat_file(services: Services, name: Name, path: GuestPath) -> dict[str, Any]:
    """One guest path (a symlink is reported as one)."""
    info: dict[str, Any] = as_dict(await services.files.stat(name, path))
    return info


@router.delete("/vms/{name}/files", response_model=GuestFileRemoved)
async def remove_file(
    services: Services,
    name: Name,
    path: GuestPath,
    recursive: Annotated[bool, Query()] = False,
) -> dict[str, Any]:
    """A file, a symlink (not its target), an empty directory or, ``recursive``, a tree."""
    await services.files.remove(name, path, recursive=recursive)
    return {"vm": name, "path": path}


def _content_length(request: Request) -> int:
    value = request.headers.get("content-length")
    if value is None or not value.isdigit():
        raise InvalidRequest(
            "a file upload needs a Content-Length", hint="send the size; chunked is not taken"
        )
    return int(value)
