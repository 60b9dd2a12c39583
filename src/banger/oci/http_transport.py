"""The HTTP seam of the registry client (DESIGN.md rule 2), on the stdlib's http.client.

Owns: one request → one ``Response`` with connect and read timeouts, an overall
deadline on reading a body (a slow-drip server cannot hold a pull forever), bounded
reads, redirects (at most ``max_redirects``; another host is fine, as blob storage
lives elsewhere, but ``Authorization`` is never sent to it), retries with bounded
exponential backoff on 429, 5xx and dropped or timed-out connections (never on another
4xx), the rule "plain http only to loopback registries", and log lines whose URLs have
their query values replaced by ``REDACTED`` (signed blob URLs and token requests carry
secrets there). Headers are never logged.
Must not: know the registry protocol (``banger.oci.registry`` does) or raise anything
but ``BangerError`` at its edge, except ``ConnectionError``/``TimeoutError`` from
``Response.read`` so a caller streaming a body can retry it.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import SplitResult, parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from banger.errors import BadResponse, BangerError, InvalidArgument, Timeout
from banger.host import buildinfo
from banger.model.hosts import is_loopback_host

log = logging.getLogger("banger.oci.http_transport")

REDIRECTS = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 1 << 20
#: A body is read at no less than this average rate (plus a grace period) or dropped.
MIN_RATE_BPS = 32 * 1024
BODY_GRACE_S = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried."""

    attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay_s(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before try number ``attempt + 1`` (``attempt`` counts from 1)."""
        wanted = self.base_delay_s * 2.0 ** (attempt - 1)
        if retry_after is not None and retry_after.strip().isdigit():
            wanted = max(wanted, float(retry_after.strip()))
        return min(wanted, self.max_delay_s)


def is_retryable_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def redact(url: str) -> str:
    """``url`` fit for a log: no user info, every query value ``REDACTED``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = urlencode([(k, "REDACTED") for k, _ in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class Response:
    """A response whose body is read in bounded pieces; close it (or use ``with``)."""

    def __init__(
        self,
        conn: http.client.HTTPConnection,
        raw: http.client.HTTPResponse,
        url: str,
        *,
        body_grace_s: float = BODY_GRACE_S,
        min_rate_bps: int = MIN_RATE_BPS,
    ) -> None:
        self._conn = conn
        self._raw = raw
        self._grace_s = body_grace_s
        self._min_rate_bps = min_rate_bps
        self._started = time.monotonic()
        self.url = url
        self.status = raw.status
        self.headers = {k.lower(): v for k, v in raw.getheaders()}
        self.received = 0

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length", "")
        return int(value) if value.isdigit() else None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def read(self, size: int = CHUNK_BYTES) -> bytes:
        """Up to ``size`` bytes; ``b""`` at the end of a complete body.

        A connection dropped or stalled mid-body raises ``ConnectionError`` /
        ``TimeoutError``, so the caller may retry the whole body.
        """
        self._check_deadline()
        try:
            # read1: one recv at most, so the deadline is checked while a body drips in.
            chunk = self._raw.read1(size) if size else b""
        except http.client.IncompleteRead as exc:
            raise ConnectionResetError(f"connection closed mid-body by {self._host}") from exc
        except TimeoutError as exc:
            raise TimeoutError(f"no data from {self._host} for a while") from exc
        except (http.client.HTTPException, ssl.SSLError) as exc:
            raise ConnectionResetError(f"broken response from {self._host}: {exc}") from exc
        self.received += len(chunk)
        expected = self.content_length
        if not chunk and size and expected is not None and self.received < expected:
            raise ConnectionResetError(
                f"{self._host} closed the connection after {self.received} of {expected} bytes"
            )
        return chunk

    def _check_deadline(self) -> None:
        expected = self.content_length or 0
        budget = self._grace_s + max(expected, self.received) / self._min_rate_bps
        if time.monotonic() - self._started > budget:
            raise TimeoutError(f"{self._host} is sending too slowly (slow-drip body)")

    def read_all(self, max_bytes: int, *, what: str) -> bytes:
        """The whole body, refused (BadResponse) once it passes ``max_bytes``.

        A dropped or stalled body raises ``ConnectionError``/``TimeoutError`` like
        ``read``, so the caller can retry; ``stream_error`` turns it into a BangerError.
        """
        declared = self.content_length
        if declared is not None and declared > max_bytes:
            raise BadResponse(f"{what} is {declared} bytes, more than the {max_bytes} allowed")
        parts: list[bytes] = []
        total = 0
        while chunk := self.read(min(CHUNK_BYTES, max_bytes + 1 - total)):
            parts.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise BadResponse(f"{what} is more than the {max_bytes} bytes allowed")
        return b"".join(parts)

    def snippet(self, limit: int = 200) -> str:
        """The start of an error body, printable, for error details."""
        with contextlib.suppress(BangerError, OSError):
            body = self.read_all(64 * 1024, what="error body")
            return body[:limit].decode("utf-8", "replace").replace("\n", " ").strip()
        return ""

    def close(self) -> None:
        self._raw.close()
        self._conn.close()

    @property
    def _host(self) -> str:
        return urlsplit(self.url).netloc or "the registry"


def stream_error(exc: BaseException, what: str) -> BangerError:
    if isinstance(exc, TimeoutError):
        return Timeout(f"reading {what} timed out: {exc}")
    return BadResponse(f"reading {what} failed: {exc}")


class Transport(Protocol):
    """What the registry client needs: open a request, redirects and retries done."""

    def open(self, method: str, url: str, headers: Mapping[str, str]) -> Response: ...


class HttpTransport:
    """``Transport`` over http.client; construct one per pull."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 15.0,
        read_timeout_s: float = 30.0,
        max_redirects: int = 5,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        ssl_context: ssl.SSLContext | None = None,
        body_grace_s: float = BODY_GRACE_S,
        min_rate_bps: int = MIN_RATE_BPS,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.body_grace_s = body_grace_s
        self.min_rate_bps = min_rate_bps
        self.max_redirects = max_redirects
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._ssl = ssl_context
        self._agent = f"banger/{buildinfo.current().version}"

    def open(self, method: str, url: str, headers: Mapping[str, str]) -> Response:
        sent = dict(headers)
        origin = urlsplit(url).netloc
        for _ in range(self.max_redirects + 1):
            response = self._with_retries(method, url, sent)
            location = response.headers.get("location")
            if response.status not in REDIRECTS or not location:
                return response
            response.close()
            url = urljoin(url, location)
            if urlsplit(url).netloc != origin:
                sent.pop("Authorization", None)  # credentials stay with the registry
            if response.status == 303:
                method = "GET"
        raise BadResponse(
            f"more than {self.max_redirects} redirects for {redact(url)}",
            hint="the registry or a proxy redirects in a loop",
        )

    def _with_retries(self, method: str, url: str, headers: Mapping[str, str]) -> Response:
        for attempt in range(1, self.retry.attempts + 1):
            last = attempt == self.retry.attempts
            try:
                response = self._once(method, url, headers)
            except ConnectionRefusedError as exc:  # nothing listens: retrying will not help
                raise _connect_error(exc, url) from exc
            except (ConnectionError, TimeoutError) as exc:  # reset, aborted, broken pipe
                if last:
                    raise _connect_error(exc, url) from exc
                self._pause(attempt, None, url, str(exc))
                continue
            except OSError as exc:  # unreachable, DNS: retrying will not help
                raise _connect_error(exc, url) from exc
            if last or not is_retryable_status(response.status):
                return response
            retry_after = response.headers.get("retry-after")
            response.close()
            self._pause(attempt, retry_after, url, f"HTTP {response.status}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _pause(self, attempt: int, retry_after: str | None, url: str, why: str) -> None:
        delay = self.retry.delay_s(attempt, retry_after)
        log.info("retrying %s in %.1fs after %s", redact(url), delay, why)
        self._sleep(delay)

    def _once(self, method: str, url: str, headers: Mapping[str, str]) -> Response:
        parts = check_url(url)
        conn = self._connection(parts)
        try:
            target = parts.path or "/"
            if parts.query:
                target += f"?{parts.query}"
            conn.request(method, target, headers={"User-Agent": self._agent, **headers})
            raw = conn.getresponse()
        except (http.client.HTTPException, ssl.SSLError) as exc:
            conn.close()
            if isinstance(exc, ssl.SSLCertVerificationError):
                raise BadResponse(f"TLS certificate of {parts.netloc} not trusted: {exc}") from exc
            raise ConnectionResetError(f"broken HTTP exchange: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        if conn.sock is not None:
            conn.sock.settimeout(self.read_timeout_s)
        log.debug("%s %s -> %d", method, redact(url), raw.status)
        return Response(
            conn, raw, url, body_grace_s=self.body_grace_s, min_rate_bps=self.min_rate_bps
        )

    def _connection(self, parts: SplitResult) -> http.client.HTTPConnection:
        host = parts.hostname or ""
        if parts.scheme == "https":
            context = self._ssl or ssl.create_default_context()
            return http.client.HTTPSConnection(
                host, parts.port, timeout=self.connect_timeout_s, context=context
            )
        return http.client.HTTPConnection(host, parts.port, timeout=self.connect_timeout_s)


def check_url(url: str) -> SplitResult:
    """Only https, or plain http to a loopback host; no user info in URLs."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise BadResponse(f"refusing to fetch {redact(url)}: not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument(f"refusing {redact(url)}: credentials do not go in URLs")
    if parts.scheme == "http" and not is_loopback_host(parts.netloc):
        raise BadResponse(
            f"refusing plain http to {parts.hostname}: only loopback registries may skip TLS",
            hint="registries other than localhost/127.0.0.0/8 must serve https",
        )
    return parts


def _connect_error(exc: BaseException, url: str) -> BangerError:
    host = urlsplit(url).netloc
    if isinstance(exc, TimeoutError):
        return Timeout(
            f"{host} did not answer in time",
            details=redact(url),
            hint="check this host's network and the registry, then pull again",
        )
    if isinstance(exc, socket.gaierror):
        return BadResponse(
            f"cannot resolve {urlsplit(url).hostname}: {exc.strerror}",
            hint="check the registry's name and this host's DNS",
        )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return BadResponse(
        f"cannot reach {host}: {reason}",
        details=redact(url),
        hint="check this host's network and the registry, then pull again",
    )
