"""Test helpers: Debian's real ``docker-registry`` on 127.0.0.1, OCI layouts built from
layer tars (including multi-arch indexes), pushing them with ``skopeo``, and a small
token server of our own that the registry's *token auth* trusts.

The registry always runs with a config written here (``http.addr: 127.0.0.1:<port>``,
filesystem storage in a temp dir), never Debian's default config, which listens on all
interfaces. It is stopped by its pid. With ``token=True`` the registry itself demands
bearer tokens (``auth.token``): our ``TokenServer`` issues RS256 JWTs signed with
``openssl`` for a throwaway self-signed certificate that the registry's
``rootcertbundle`` holds, so the flow is checked by the real registry, not a stand-in.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"


def have_registry_tools() -> bool:
    return all(shutil.which(t) for t in ("docker-registry", "skopeo", "openssl"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- layers and OCI layouts -----------------------------------------------------------------


def tar_layer(files: Mapping[str, bytes | None], *, mode: int = 0o644) -> bytes:
    """An uncompressed layer tar: ``None`` makes a directory, bytes a regular file."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = mode
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class OciLayout:
    """An OCI image layout directory being written (``skopeo copy oci:DIR:TAG`` reads it)."""

    root: Path
    refs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self._write_index()

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = sha256(data)
        (self.root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def image(
        self,
        layers: Sequence[bytes],
        *,
        arch: str = "amd64",
        os_name: str = "linux",
        compress: bool = True,
    ) -> dict[str, Any]:
        """Push layer tars (oldest first) as one image; its manifest descriptor."""
        descriptors = [
            self.blob(gzip.compress(t, mtime=0), LAYER_GZIP)
            if compress
            else self.blob(t, LAYER_TAR)
            for t in layers
        ]
        config = {
            "architecture": arch,
            "os": os_name,
            # A label of its own keeps two test images from sharing a manifest digest.
            "config": {"Cmd": ["/bin/sh"], "Labels": {"test.id": secrets.token_hex(8)}},
            "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in layers]},
        }
        config_desc = self.blob(json.dumps(config).encode(), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc,
            "layers": descriptors,
        }
        desc = self.blob(json.dumps(manifest).encode(), OCI_MANIFEST)
        desc["platform"] = {"architecture": arch, "os": os_name}
        return desc

    def index(self, manifests: Sequence[dict[str, Any]]) -> dict[str, Any]:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(manifests)}
        return self.blob(json.dumps(doc).encode(), OCI_INDEX)

    def tag(self, descriptor: Mapping[str, Any], tag: str) -> None:
        entry = {k: v for k, v in descriptor.items() if k != "platform"}
        entry["annotations"] = {REF_NAME: tag}
        self.refs.append(entry)
        self._write_index()

    def _write_index(self) -> None:
        doc = {"schemaVersion": 2, "manifests": self.refs}
        (self.root / "index.json").write_text(json.dumps(doc))


# -- the token server -----------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues anonymous pull (and push, for skopeo) tokens the registry verifies."""

    issuer = "banger-test-issuer"
    service = "banger-test-registry"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.key = workdir / "token.key"
        self.cert = workdir / "token.crt"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-keyout", str(self.key), "-out", str(self.cert), "-subj", "/CN=banger-test"),
            ],
            check=True,
            capture_output=True,
        )
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
        self._x5c = base64.b64encode(der).decode()
        self.issued: list[str] = []
        self.requests: list[dict[str, list[str]]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def start(self) -> TokenServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def sign(self, scopes: Sequence[str]) -> str:
        now = int(time.time())
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        claims = {
            "iss": self.issuer,
            "sub": "",
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        token = f"{signing_input}.{_b64url(sig)}"
        self.issued.append(token)
        return token

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                server.requests.append(query)
                if urlsplit(self.path).path != "/token":
                    self.send_error(404)
                    return
                body = json.dumps({"token": server.sign(query.get("scope", [])), "expires_in": 300})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


# -- the registry ---------------------------------------------------------------------------

_GET_BLOB = re.compile(
    r'"GET /v2/(?P<repo>[^ ]+)/blobs/(?P<digest>sha256:[0-9a-f]{64}) HTTP/1\.1" (?P<status>\d+)'
)


@dataclass
class LocalRegistry:
    """A running ``docker-registry serve`` on 127.0.0.1 with its own config and storage."""

    workdir: Path
    port: int
    proc: subprocess.Popen[bytes]
    token: TokenServer | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage" / "docker" / "registry" / "v2"

    def blob_data(self, digest: str) -> Path:
        hex_digest = digest.split(":")[1]
        return self.storage / "blobs" / "sha256" / hex_digest[:2] / hex_digest / "data"

    def push(self, layout: OciLayout, tag: str, repo_tag: str) -> None:
        """``skopeo copy`` the layout's ``tag`` to ``<host>/<repo_tag>``, digests kept."""
        argv = ["skopeo", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false"]
        if self.token is not None:
            argv.append("--dest-no-creds")
        argv += [f"oci:{layout.root}:{tag}", f"docker://{self.host}/{repo_tag}"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr

    def blob_gets(self, digest: str | None = None) -> list[str]:
        """Digests of successful blob GETs in the registry's access log (in order)."""
        text = self.log_path.read_text(errors="replace")
        found = [
            m.group("digest")
            for m in _GET_BLOB.finditer(text)
            if m.group("status") in {"200", "206"}
        ]
        return [d for d in found if digest is None or d == digest]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.token is not None:
            self.token.stop()


def _config(workdir: Path, port: int, token: TokenServer | None) -> str:
    text = f"""version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {workdir / "storage"}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
"""
    if token is not None:
        text += f"""auth:
  token:
    realm: {token.realm}
    service: {token.service}
    issuer: {token.issuer}
    rootcertbundle: {token.cert}
"""
    return text


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError as exc:
        return exc.code == 401  # token auth: serving, and asking for a token
    except OSError:
        return False
    return True


def _wait_serving(reg: LocalRegistry, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if reg.proc.poll() is not None:
            return False
        if _answers(f"http://{reg.host}/v2/"):
            return True
        time.sleep(0.05)
    return False


def start_registry(workdir: Path, *, token: bool = False) -> LocalRegistry:
    workdir.mkdir(parents=True, exist_ok=True)
    server = TokenServer(workdir).start() if token else None
    for _ in range(3):  # a free port can be taken between the probe and the bind
        port = free_port()
        config = workdir / "config.yml"
        config.write_text(_config(workdir, port, server))
        log = (workdir / "registry.log").open("ab")
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        reg = LocalRegistry(workdir=workdir, port=port, proc=proc, token=server)
        if _wait_serving(reg):
            return reg
        reg.token = None
        reg.stop()
    if server is not None:
        server.stop()
    raise RuntimeError(f"docker-registry did not start; see {workdir / 'registry.log'}")


@contextlib.contextmanager
def running_registry(workdir: Path, *, token: bool = False) -> Iterator[LocalRegistry]:
    reg = start_registry(workdir, token=token)
    try:
        yield reg
    finally:
        reg.stop()


# -- a fault-injecting proxy in front of the registry ---------------------------------------

_PASSED_HEADERS = (
    "content-type",
    "content-length",
    "docker-content-digest",
    "www-authenticate",
    "location",
    "docker-distribution-api-version",
)


@dataclass
class Fault:
    """What to do, ``times`` times, with a request whose path contains ``match``.

    ``action``: ``status`` (answer ``status`` with a short body), ``reset`` (send the
    headers and half the body, then drop the connection), ``drip`` (send the body one
    byte every ``delay_s``), ``redirect`` (to ``location``; ``{self}`` is this proxy),
    ``html`` (200 with an HTML page), ``body`` (200 with ``body``, chunked without a
    Content-Length when ``chunked``).
    """

    match: str
    action: str
    times: int = 1
    status: int = 503
    location: str = ""
    delay_s: float = 0.05
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunked: bool = False


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 forwarding to ``upstream`` (host:port), with faults."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def paths(self, contains: str = "") -> list[str]:
        return [path for _, path, _ in self.seen if contains in path]

    def _take(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.match in path and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                with proxy._lock:
                    proxy.seen.append(("GET", self.path, headers))
                fault = proxy._take(self.path)
                if fault is not None and fault.action in {"status", "redirect", "html", "body"}:
                    self._answer_fault(fault)
                    return
                status, passed, body = self._forward(headers)
                if fault is None:
                    self._send(status, passed, body)
                elif fault.action == "reset":
                    self._send_head(status, passed, len(body))
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                elif fault.action == "drip":
                    self._send_head(status, passed, len(body))
                    with contextlib.suppress(OSError):
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(fault.delay_s)

            def _forward(self, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
                import http.client

                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                sent = {k: v for k, v in headers.items() if k in {"accept", "authorization"}}
                conn.request("GET", self.path, headers=sent)
                resp = conn.getresponse()
                body = resp.read()
                passed = {k: v for k, v in resp.getheaders() if k.lower() in _PASSED_HEADERS}
                conn.close()
                return resp.status, passed, body

            def _answer_fault(self, fault: Fault) -> None:
                if fault.action == "status":
                    self._send(fault.status, fault.headers, b'{"errors":[]}')
                elif fault.action == "body" and fault.chunked:
                    self._send_chunked(fault)
                elif fault.action == "body":
                    self._send(200, {"Content-Type": OCI_MANIFEST}, fault.body)
                elif fault.action == "html":
                    page = b"<!DOCTYPE html><html><body>Please log in</body></html>"
                    self._send(200, {"Content-Type": "text/html"}, page)
                else:
                    location = fault.location.replace("{self}", proxy.host)
                    self._send(fault.status, {"Location": location, **fault.headers}, b"")

            def _send_head(self, status: int, headers: Mapping[str, str], length: int) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(length))
                self.end_headers()

            def _send_chunked(self, fault: Fault) -> None:
                self.send_response(200)
                self.send_header("Content-Type", OCI_MANIFEST)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                with contextlib.suppress(OSError):
                    for i in range(0, len(fault.body), 1 << 16):
                        part = fault.body[i : i + (1 << 16)]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True

            def _send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
                self._send_head(status, headers, len(body))
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextlib.contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()
