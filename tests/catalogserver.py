"""A kernel catalog served over HTTP on 127.0.0.1 for the pull tests: a server of the
test's own (routes with a body, an announced length, a drip rate), zstd tarballs and
catalog entries pointing at it."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.kernelfiles import fake_elf

VERSION = "6.6.6-pull"


# -- the server ----------------------------------------------------------------------------


@dataclass
class Route:
    body: bytes
    announce: int | None = None  # Content-Length to send instead of len(body)
    drip_s: float = 0.0  # pause between 64 KiB chunks
    hits: int = 0
    sent: threading.Event = field(default_factory=threading.Event)


class Server:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                route = routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                route.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(route.announce or len(route.body)))
                self.end_headers()
                try:
                    for start in range(0, len(route.body), 65536):
                        self.wfile.write(route.body[start : start + 65536])
                        self.wfile.flush()
                        route.sent.set()
                        time.sleep(route.drip_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- artifacts ------------------------------------------------------------------------------


def tar_zst(members: list[tuple[str, bytes | str | None]]) -> bytes:
    """A zstd tar; a str value makes a symlink to it, None a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return subprocess.run(
        ["zstd", "-q", "-c"], input=buf.getvalue(), capture_output=True, check=True
    ).stdout


VMLINUX = fake_elf(200_000)
MODULE = "modules/kernel/drivers/virtio/virtio.ko"
GOOD = [
    ("vmlinux", VMLINUX),
    ("config", b"CONFIG_VIRTIO_MMIO=y\n"),
    ("modules", None),
    ("modules/modules.dep", b""),
    (MODULE, b"\x7fELF fake module"),
    ("banger-kernel.json", json.dumps({"version": VERSION, "distro": "testdistro"}).encode()),
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(name: str, url: str, data: bytes | None, **extra: Any) -> dict[str, Any]:
    item = {
        "name": name,
        "distro": "testdistro",
        "arch": "x86_64",
        "version": VERSION,
        "format": "tar.zst",
        "url": url,
        "sha256": sha(data) if data is not None else None,
        "size_bytes": None,
        "description": f"test kernel {name}",
    }
    if data is None:
        item["verified"] = False
    item.update(extra)
    return item
