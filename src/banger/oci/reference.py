"""Image references (``debian:bookworm``, ``ghcr.io/org/app@sha256:…``), parsed strictly.

Owns: the grammar of the distribution reference (domain, path components, tag, digest),
Docker Hub's defaults (``docker.io`` → ``registry-1.docker.io``, ``library/`` for
one-component names, tag ``latest`` when neither tag nor digest is given), whether a
registry is on the loopback interface, and the default image name a pull records.
Must not: do I/O or decide how to reach a registry (``banger.oci.registry`` does).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from banger.errors import InvalidArgument
from banger.model.artifact_names import is_valid_name
from banger.model.hosts import is_loopback_host, split_port
from banger.model.units import describe_input
from banger.oci.digest import Digest, parse_digest

DOCKER_HUB = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DEFAULT_TAG = "latest"
MAX_NAME_CHARS = 255
MAX_TAG_CHARS = 128
#: The longest reference the grammar below can accept: a full name, a tag and a digest
#: (``@sha256:`` and 64 hex digits). The API schema uses it as ``ref``'s maxLength, so
#: the two agree (issue 14 item 12).
MAX_REFERENCE_CHARS = MAX_NAME_CHARS + 1 + MAX_TAG_CHARS + len("@sha256:") + 64
#: The image name rule (``banger.kernels.NAME_PATTERN``) allows 64; config's
#: ``default_image_name`` is lowercase and at most 63, so a default name fits both.
_DEFAULT_NAME_CHARS = 63

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_DOMAIN_COMPONENT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?", re.ASCII)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_NAME_UNSAFE = re.compile(r"[^a-z0-9._-]+", re.ASCII)

PATH_RULE = "path components of lowercase letters and digits, separated by '.', '_', '__' or '-'"
TAG_RULE = "1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"


@dataclass(frozen=True)
class Reference:
    """A parsed reference; ``domain`` is as written (``docker.io`` for Docker Hub)."""

    domain: str
    repository: str
    tag: str | None
    digest: Digest | None = None

    @property
    def api_host(self) -> str:
        """Host (and port) that serves the registry API for ``domain``."""
        return DOCKER_HUB_API_HOST if self.domain == DOCKER_HUB else self.domain

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.repository}"

    @property
    def target(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest wins over a tag."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or DEFAULT_TAG

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.domain)

    def pinned(self, digest: Digest) -> Reference:
        """The same reference fixed to ``digest`` (the tag is kept for display)."""
        return replace(self, digest=digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(text: object) -> Reference:
    """``text`` as a Reference; ``InvalidArgument`` naming the rule it breaks."""
    if not isinstance(text, str) or not text:
        raise _invalid(text, "it is empty")
    if len(text) > MAX_REFERENCE_CHARS:
        raise _invalid(text, f"longer than {MAX_REFERENCE_CHARS} characters")
    rest, at, digest_text = text.partition("@")
    digest = parse_digest(digest_text, what="digest of the reference") if at else None
    rest, tag = _split_tag(rest, text)
    domain, path = _split_domain(rest)
    _check_domain(domain, text)
    _check_path(path, text)
    if len(domain) + 1 + len(path) > MAX_NAME_CHARS:
        raise _invalid(text, f"the name is longer than {MAX_NAME_CHARS} characters")
    if domain in {DOCKER_HUB, "index.docker.io"}:
        domain = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain=domain, repository=path, tag=tag, digest=digest)


def _invalid(text: object, reason: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid image reference {describe_input(text, limit=80)}: {reason}",
        hint="use [REGISTRY[:PORT]/]NAME[:TAG][@sha256:DIGEST], like debian:bookworm",
    )


def _split_tag(rest: str, text: str) -> tuple[str, str | None]:
    colon = rest.rfind(":")
    if colon <= rest.rfind("/"):  # no colon after the last slash: a port, or nothing
        return rest, None
    tag = rest[colon + 1 :]
    if _TAG.fullmatch(tag) is None:
        raise _invalid(text, f"tag {describe_input(tag)} breaks the rule: {TAG_RULE}")
    return rest[:colon], tag


def _split_domain(rest: str) -> tuple[str, str]:
    """Docker's rule: the first component is a registry when it looks like a host."""
    first, slash, remainder = rest.partition("/")
    if not slash:
        return DOCKER_HUB, rest
    if "." in first or ":" in first or first == "localhost" or first != first.lower():
        return first, remainder
    return DOCKER_HUB, rest


def _check_domain(domain: str, text: str) -> None:
    host, port = split_port(domain)
    if port is not None and (_PORT.fullmatch(port) is None or not 0 < int(port) < 65536):
        raise _invalid(text, f"registry port {describe_input(port)} is not a number 1-65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _invalid(text, f"{describe_input(host)} is not an IPv6 address") from None
        return
    if not all(_DOMAIN_COMPONENT.fullmatch(part) for part in host.split(".")):
        raise _invalid(
            text,
            f"registry {describe_input(host)} is not a host name: use letters, digits and "
            "'-' between dots",
        )


def _check_path(path: str, text: str) -> None:
    for component in path.split("/"):
        if _PATH_COMPONENT.fullmatch(component) is not None:
            continue
        if component and _PATH_COMPONENT.fullmatch(component.lower()) is not None:
            raise _invalid(text, f"repository {describe_input(path)} must be lowercase")
        raise _invalid(text, f"repository {describe_input(path)} breaks the rule: {PATH_RULE}")


def default_name(ref: Reference) -> str:
    """The image name a pull records when none is given: ``debian:bookworm`` →
    ``debian-bookworm``, ``ghcr.io/org/app@sha256:abc…`` → ``app-abc…`` (12 hex)."""
    last = ref.repository.rsplit("/", 1)[-1]
    suffix = ref.tag if ref.tag is not None else (ref.digest.short if ref.digest else "")
    name = _NAME_UNSAFE.sub("-", f"{last}-{suffix}".lower())[:_DEFAULT_NAME_CHARS]
    # Path components start with [a-z0-9] and only safe characters are left.
    assert is_valid_name(name), name
    return name
