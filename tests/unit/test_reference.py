"""Image references and digests (banger.oci.reference, banger.oci.digest): ADVERSARIAL 33."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from banger.errors import InvalidArgument
from banger.model.artifact_names import is_valid_name
from banger.model.hosts import is_loopback_host
from banger.oci.digest import Digest, Hasher, digest_of, parse_digest
from banger.oci.reference import Reference, default_name, parse_reference

HEX = "a" * 64
DIGEST = f"sha256:{HEX}"


@pytest.mark.parametrize(
    ("text", "domain", "repository", "tag", "digest"),
    [
        ("debian:bookworm", "docker.io", "library/debian", "bookworm", None),
        ("debian", "docker.io", "library/debian", "latest", None),
        ("library/debian", "docker.io", "library/debian", "latest", None),
        ("docker.io/debian:12", "docker.io", "library/debian", "12", None),
        ("index.docker.io/library/debian", "docker.io", "library/debian", "latest", None),
        ("someone/app:v1", "docker.io", "someone/app", "v1", None),
        (f"ghcr.io/org/app@{DIGEST}", "ghcr.io", "org/app", None, HEX),
        (f"ghcr.io/org/app:1.0@{DIGEST}", "ghcr.io", "org/app", "1.0", HEX),
        ("localhost:5000/x:y", "localhost:5000", "x", "y", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None),
        ("[::1]:5000/a/b:c", "[::1]:5000", "a/b", "c", None),
        ("quay.io/a/b/c__d-e.f:Tag_1.x-y", "quay.io", "a/b/c__d-e.f", "Tag_1.x-y", None),
        ("Registry.Example/x", "Registry.Example", "x", "latest", None),
    ],
)
def test_parse_reference(
    text: str, domain: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert ref.domain == domain
    assert ref.repository == repository
    assert ref.tag == tag
    assert (ref.digest.hex if ref.digest else None) == digest


def test_docker_hub_api_host_and_canonical_form() -> None:
    ref = parse_reference("debian:bookworm")
    assert ref.api_host == "registry-1.docker.io"
    assert str(ref) == "docker.io/library/debian:bookworm"
    assert ref.target == "bookworm"
    pinned = ref.pinned(Digest(HEX))
    assert pinned.target == DIGEST
    assert str(pinned) == f"docker.io/library/debian:bookworm@{DIGEST}"
    assert parse_reference("ghcr.io/o/a:1").api_host == "ghcr.io"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("", "empty"),
        ("Debian:12", "lowercase"),
        ("debian:", "tag"),
        ("debian:.hidden", "tag"),
        ("debian:" + "a" * 129, "tag"),
        ("de//bian", "rule"),
        ("debian-:1", "rule"),
        ("-debian", "rule"),
        ("a/b/../c", "rule"),
        ("debian@sha256:" + "A" * 64, "lowercase"),
        ("debian@sha256:" + "a" * 63, "63 hex digits"),
        ("debian@md5:" + "a" * 32, "not supported"),
        ("localhost:99999/x", "port"),
        ("localhost:abc/x", "port"),
        ("bad_host.io/x", "host name"),
        ("[::zz]:5000/x", "IPv6"),
        ("x" * 600, "longer than"),
        ("example.com/" + "a" * 250, "longer than 255"),
        ("debian bookworm", "rule"),
        ("debian:book\nworm", "tag"),
    ],
)
def test_invalid_references_name_the_rule(text: str, rule: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_reference(text)
    assert rule in info.value.brief
    assert info.value.hint


def test_non_string_reference_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        parse_reference(None)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("128.0.0.1", False),
        ("localhost.example.com", False),
        ("docker.io", False),
        ("10.0.0.1:5000", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("debian:bookworm", "debian-bookworm"),
        ("debian", "debian-latest"),
        ("ghcr.io/org/app:V1.2", "app-v1.2"),
        (f"ghcr.io/org/app@{DIGEST}", f"app-{HEX[:12]}"),
        (f"ghcr.io/org/app:edge@{DIGEST}", "app-edge"),
        ("localhost:5000/a/b__c:x_y", "b__c-x_y"),
        ("x/" + "a" * 60 + ":" + "t" * 100, ("a" * 60 + "-tt")),
    ],
)
def test_default_name(text: str, name: str) -> None:
    assert default_name(parse_reference(text)) == name


_component = st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}", fullmatch=True)


@given(st.lists(_component, min_size=1, max_size=3), _tag)
def test_default_name_is_always_a_valid_image_name(parts: list[str], tag: str) -> None:
    # A first component with a '.' would be a registry host: give one explicitly.
    ref = parse_reference("registry.example:5000/" + "/".join(parts) + ":" + tag)
    name = default_name(ref)
    assert is_valid_name(name)
    assert name == name.lower()
    assert len(name) <= 63
    assert parse_reference(str(ref)) == ref


# -- digests (ADVERSARIAL 33) ---------------------------------------------------------------


def test_parse_digest_accepts_only_lowercase_sha256() -> None:
    assert parse_digest(DIGEST) == Digest(HEX)
    assert str(parse_digest(DIGEST)) == DIGEST
    assert parse_digest(DIGEST).short == HEX[:12]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("sha256:" + "A" * 64, "lowercase"),
        ("sha256:" + "a" * 63, "63 hex digits"),
        ("sha256:" + "a" * 65, "65 hex digits"),
        ("SHA256:" + "a" * 64, "lowercase"),
        ("sha512:" + "a" * 128, "not supported"),
        ("md5:" + "a" * 32, "not supported"),
        ("a" * 64, "no algorithm"),
        ("sha256:" + "g" * 64, "not hex"),
        ("sha256:" + "a" * 62 + "/.", "not hex"),
        ("", "no algorithm"),
        ("sha256:", "0 hex digits"),
    ],
)
def test_parse_digest_rejects_e33(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_digest(text)
    assert reason in info.value.brief
    assert "64 lowercase hex" in (info.value.hint or "")


def test_parse_digest_rejects_non_strings() -> None:
    for value in (None, 5, b"sha256:" + b"a" * 64, ["x"]):
        with pytest.raises(InvalidArgument):
            parse_digest(value)


def test_digest_value_checks_itself() -> None:
    with pytest.raises(InvalidArgument):
        Digest("../../etc/passwd")


def test_hasher_counts_and_hashes() -> None:
    hasher = Hasher()
    for part in (b"abc", b"", b"def"):
        hasher.update(part)
    assert hasher.size == 6
    assert hasher.digest() == digest_of(b"abcdef")
    assert (
        str(digest_of(b""))
        == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_reference_is_a_value() -> None:
    assert parse_reference("debian") == Reference("docker.io", "library/debian", "latest")
