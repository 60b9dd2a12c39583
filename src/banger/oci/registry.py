"""A small client of the distribution (registry v2) API: manifests and blobs, anonymously.

Owns: the registry's base URL (https; plain http only for loopback registries), the
anonymous bearer-token flow (a 401 with ``WWW-Authenticate: Bearer realm=…,service=…,
scope=…`` → GET the realm → retry with the token; a token that expires mid-pull is
fetched again once), manifest requests with the OCI and Docker v2 Accept types, the
manifest size cap checked before parsing (ADVERSARIAL 31), checking that the bytes
hash to the digest asked for or announced (34), and turning HTTP statuses into clear
errors.
Must not: cache anything (``banger.oci.blobcache`` does), log tokens or headers, or
parse manifests beyond their bytes (``banger.oci.manifest`` does).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from banger.errors import BadResponse, BangerError, NotFound, PermissionDenied
from banger.oci.digest import Digest, digest_of, parse_digest
from banger.oci.http_transport import Response, RetryPolicy, Transport, redact, stream_error
from banger.oci.manifest import ACCEPT, MAX_MANIFEST_BYTES
from banger.oci.reference import Reference

log = logging.getLogger("banger.oci.registry")

MAX_TOKEN_BYTES = 1 << 20
_CHALLENGE_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)')


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge:
    """A ``WWW-Authenticate`` value: scheme and its ``key="value"`` parameters."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for key, raw in _CHALLENGE_PARAM.findall(rest):
        value = raw[1:-1] if raw.startswith('"') else raw
        params[key.lower()] = re.sub(r"\\(.)", r"\1", value)
    return Challenge(scheme=scheme.lower(), params=params)


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    content_type: str
    digest: Digest


class RegistryClient:
    """Talks to one registry for one pull; holds the bearer tokens it was given."""

    def __init__(
        self,
        transport: Transport,
        *,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._transport = transport
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._tokens: dict[tuple[str, str], str] = {}

    def base_url(self, ref: Reference) -> str:
        scheme = "http" if ref.is_loopback else "https"
        return f"{scheme}://{ref.api_host}/v2/{ref.repository}"

    # -- manifests --------------------------------------------------------------------

    def get_manifest(self, ref: Reference, target: str | None = None) -> FetchedManifest:
        """The manifest of ``target`` (a tag or a digest; default ``ref.target``).

        Fetched by digest, the bytes must hash to it. Fetched by tag, they must hash to
        the ``Docker-Content-Digest`` the registry announces, if it does.
        """
        target = target or ref.target
        data, content_type, announced = self._read_manifest(ref, target)
        actual = digest_of(data)
        expected = parse_digest(target) if target.startswith("sha256:") else None
        if expected is None and announced:
            expected = _announced(announced, ref)
        if expected is not None and expected != actual:
            raise BadResponse(
                f"manifest of {ref.name} does not match its digest: expected {expected}, "
                f"got {actual}",
                hint="the registry (or something between) altered the manifest",
            )
        return FetchedManifest(data=data, content_type=content_type, digest=actual)

    def _read_manifest(self, ref: Reference, target: str) -> tuple[bytes, str, str | None]:
        """Bytes, Content-Type and announced digest; a body cut off is fetched again."""
        url = f"{self.base_url(ref)}/manifests/{target}"
        what = f"manifest of {ref.name}:{target}"
        for attempt in range(1, self._retry.attempts + 1):
            with self._open(ref, url, {"Accept": ACCEPT}) as resp:
                self._check_status(resp, ref, f"manifest {target}")
                try:
                    data = resp.read_all(MAX_MANIFEST_BYTES, what=what)
                except (ConnectionError, TimeoutError) as exc:
                    if attempt == self._retry.attempts:
                        raise stream_error(exc, what) from exc
                    log.info("%s interrupted (%s); retrying", what, exc)
                else:
                    return data, resp.content_type, resp.headers.get("docker-content-digest")
            self._sleep(self._retry.delay_s(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- blobs ------------------------------------------------------------------------

    def open_blob(self, ref: Reference, digest: Digest) -> Response:
        """A response streaming the blob; the caller verifies size and digest."""
        url = f"{self.base_url(ref)}/blobs/{digest}"
        resp = self._open(ref, url, {"Accept": "*/*", "Accept-Encoding": "identity"})
        try:
            self._check_status(resp, ref, f"blob {digest}")
        except BaseException:
            resp.close()
            raise
        return resp

    # -- plumbing ---------------------------------------------------------------------

    def _open(self, ref: Reference, url: str, headers: Mapping[str, str]) -> Response:
        key = (ref.api_host, ref.repository)
        token = self._tokens.get(key)
        resp = self._transport.open("GET", url, _with_token(headers, token))
        if resp.status != 401:
            return resp
        challenge = parse_challenge(resp.headers.get("www-authenticate", ""))
        resp.close()
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise PermissionDenied(
                f"{ref.api_host} requires credentials ({challenge.scheme or 'no'} auth)",
                hint="banger pulls anonymously; use a public image or another registry",
            )
        token = self._fetch_token(ref, challenge)
        self._tokens[key] = token
        return self._transport.open("GET", url, _with_token(headers, token))

    def _fetch_token(self, ref: Reference, challenge: Challenge) -> str:
        params = {"scope": f"repository:{ref.repository}:pull"}
        params.update({k: v for k, v in challenge.params.items() if k in {"service", "scope"}})
        realm = challenge.params["realm"]
        url = f"{realm}{'&' if urlsplit(realm).query else '?'}{urlencode(params)}"
        log.debug("asking %s for an anonymous pull token", redact(url))
        with self._transport.open("GET", url, {"Accept": "application/json"}) as resp:
            if resp.status != 200:
                raise PermissionDenied(
                    f"token service {urlsplit(url).netloc} refused an anonymous token "
                    f"for {ref.name} (HTTP {resp.status})",
                    details=resp.snippet(),
                    hint="the image may be private or not exist",
                )
            try:
                body = resp.read_all(MAX_TOKEN_BYTES, what="token reply")
            except (ConnectionError, TimeoutError) as exc:
                raise stream_error(exc, "the token reply") from exc
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadResponse("the token service sent something that is not JSON") from exc
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token or not token.isprintable():
            raise BadResponse("the token service's reply holds no usable token")
        return token

    def _check_status(self, resp: Response, ref: Reference, what: str) -> None:
        if resp.status == 200:
            return
        details = resp.snippet()
        if resp.status == 404:
            raise NotFound(
                f"{what} of {ref.name} not found on {ref.api_host}",
                details=details or None,
                hint="check the image name and tag (`skopeo inspect` or the registry's web UI)",
            )
        if resp.status in {401, 403}:
            raise PermissionDenied(
                f"{ref.api_host} refused access to {ref.name} (HTTP {resp.status})",
                details=details or None,
                hint="the image may be private; banger pulls anonymously",
            )
        raise _status_error(resp.status, ref, what, details)


def _status_error(status: int, ref: Reference, what: str, details: str) -> BangerError:
    if status == 429:
        return BadResponse(
            f"{ref.api_host} is rate-limiting requests (HTTP 429) for {what}",
            details=details or None,
            hint="wait a while and pull again",
        )
    return BadResponse(
        f"{ref.api_host} answered HTTP {status} for {what} of {ref.name}",
        details=details or None,
        hint="retry later; the registry may be having trouble" if status >= 500 else None,
    )


def _with_token(headers: Mapping[str, str], token: str | None) -> dict[str, str]:
    sent = dict(headers)
    if token:
        sent["Authorization"] = f"Bearer {token}"
    return sent


def _announced(value: str, ref: Reference) -> Digest:
    try:
        return parse_digest(value.strip(), what="Docker-Content-Digest")
    except BangerError as exc:
        raise BadResponse(f"{ref.api_host} announced a malformed digest: {exc.brief}") from exc
