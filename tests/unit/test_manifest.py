"""Manifests, indexes and configs (banger.oci.manifest): ADVERSARIAL 31, 33, 35, 37."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from banger.errors import BadResponse, NotFound
from banger.oci.digest import Digest
from banger.oci.http_transport import RetryPolicy, is_retryable_status, redact
from banger.oci.manifest import (
    ACCEPT,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageManifest,
    Index,
    Platform,
    parse_config,
    parse_manifest,
    select_platform,
)
from banger.oci.registry import parse_challenge


def _d(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def _desc(seed: str, media_type: str, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _d(seed), "size": size, **extra}


LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _manifest(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _desc("config", "application/vnd.oci.image.config.v1+json"),
        "layers": [_desc("l1", LAYER, 100), _desc("l2", LAYER, 200)],
    }
    doc.update(overrides)
    return doc


def _bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_oci_manifest_parses_with_layers_in_order() -> None:
    parsed = parse_manifest(_bytes(_manifest()), OCI_MANIFEST)
    assert isinstance(parsed, ImageManifest)
    assert [layer.digest for layer in parsed.layers] == [
        Digest(_d("l1")[7:]),
        Digest(_d("l2")[7:]),
    ]
    assert parsed.total_layer_bytes == 300
    assert parsed.config.size == 10


def test_docker_v2_manifest_and_media_type_from_the_header() -> None:
    doc = _manifest(mediaType=None)
    del doc["mediaType"]
    doc["layers"] = [_desc("l1", "application/vnd.docker.image.rootfs.diff.tar.gzip")]
    parsed = parse_manifest(_bytes(doc), DOCKER_MANIFEST)
    assert isinstance(parsed, ImageManifest)
    assert parsed.media_type == DOCKER_MANIFEST


def test_media_type_guessed_from_shape_when_header_is_generic() -> None:
    doc = _manifest()
    del doc["mediaType"]
    assert isinstance(parse_manifest(_bytes(doc), "application/json"), ImageManifest)
    index = {"schemaVersion": 2, "manifests": []}
    assert isinstance(parse_manifest(_bytes(index), ""), Index)


def test_accept_header_lists_oci_and_docker_types() -> None:
    for media_type in (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST):
        assert media_type in ACCEPT


def test_oversized_manifest_is_refused_before_parsing_e31() -> None:
    # Not even valid JSON: the size check must come first.
    data = b"{" + b" " * MAX_MANIFEST_BYTES
    with pytest.raises(BadResponse, match="more than the 4194304 allowed"):
        parse_manifest(data, OCI_MANIFEST)


def test_html_page_with_200_is_a_clear_error_e35() -> None:
    with pytest.raises(BadResponse, match="HTML page") as info:
        parse_manifest(b"<!DOCTYPE html><html><body>Login</body></html>", "text/html")
    assert info.value.hint and "proxy" in info.value.hint


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b"\xff\xfe", "not JSON"),
        (_bytes(_manifest(schemaVersion=1)), "schemaVersion"),
        (_bytes(_manifest(mediaType="application/x-weird")), "unsupported media type"),
        (
            _bytes(_manifest(mediaType="application/vnd.docker.distribution.manifest.v1+json")),
            "schema 1",
        ),
        (_bytes(_manifest(layers=[])), "no layers"),
        (_bytes(_manifest(layers="x")), "'layers'"),
        (_bytes(_manifest(config=None)), "not a JSON object"),
        (
            _bytes(_manifest(layers=[_desc("x", "application/vnd.oci.image.layer.v1.tar+foo")])),
            "cannot unpack",
        ),
        (
            _bytes(
                _manifest(
                    layers=[_desc("w", "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")]
                )
            ),
            "foreign",
        ),
        (
            _bytes(_manifest(layers=[{"mediaType": LAYER, "digest": _d("a"), "size": True}])),
            "'size'",
        ),
        (
            _bytes(_manifest(layers=[{"mediaType": LAYER, "digest": _d("a"), "size": -1}])),
            "out of range",
        ),
        (
            _bytes(_manifest(layers=[{"mediaType": LAYER, "digest": _d("a"), "size": 1 << 50}])),
            "out of range",
        ),
        (
            _bytes(
                _manifest(layers=[{"mediaType": LAYER, "digest": "sha256:" + "A" * 64, "size": 1}])
            ),
            "lowercase",
        ),
        (
            _bytes(_manifest(layers=[{"mediaType": LAYER, "digest": "sha256:../../x", "size": 1}])),
            "digest",
        ),
    ],
)
def test_malformed_manifests_are_bad_responses(doc: bytes, message: str) -> None:
    with pytest.raises(BadResponse) as info:
        parse_manifest(doc, OCI_MANIFEST)
    assert message in info.value.brief


def _index(*platforms: tuple[str, str, str | None]) -> bytes:
    entries = []
    for os_name, arch, variant in platforms:
        platform: dict[str, Any] = {"os": os_name, "architecture": arch}
        if variant:
            platform["variant"] = variant
        entries.append(_desc(f"{os_name}{arch}{variant}", OCI_MANIFEST, platform=platform))
    return _bytes({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})


def test_index_selects_linux_amd64() -> None:
    index = parse_manifest(
        _index(("linux", "arm64", "v8"), ("linux", "amd64", None), ("unknown", "unknown", None)),
        OCI_INDEX,
    )
    assert isinstance(index, Index)
    chosen = select_platform(index, "x:1")
    assert chosen.platform == Platform("linux", "amd64")
    assert chosen.digest == Digest(_d("linuxamd64None")[7:])


def test_index_without_our_platform_lists_what_it_has_e37() -> None:
    index = parse_manifest(
        _index(("linux", "arm64", "v8"), ("linux", "arm", "v7"), ("unknown", "unknown", None)),
        DOCKER_LIST,
    )
    assert isinstance(index, Index)
    with pytest.raises(NotFound) as info:
        select_platform(index, "example/app:1")
    assert info.value.brief == "no linux/amd64 manifest in example/app:1"
    assert info.value.details == "it has: linux/arm/v7, linux/arm64/v8"
    assert info.value.hint


def test_windows_amd64_is_not_linux_amd64() -> None:
    index = parse_manifest(_index(("windows", "amd64", None)), OCI_INDEX)
    assert isinstance(index, Index)
    with pytest.raises(NotFound, match="no linux/amd64"):
        select_platform(index, "x")


def _config(diff_ids: list[str], **overrides: Any) -> bytes:
    doc: dict[str, Any] = {
        "os": "linux",
        "architecture": "amd64",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    doc.update(overrides)
    return _bytes(doc)


def test_config_gives_diff_ids_matching_layers() -> None:
    manifest = parse_manifest(_bytes(_manifest()), OCI_MANIFEST)
    assert isinstance(manifest, ImageManifest)
    config = parse_config(_config([_d("u1"), _d("u2")]), manifest)
    assert [str(d) for d in config.diff_ids] == [_d("u1"), _d("u2")]


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        (_config([_d("u1")]), BadResponse, "1 diff_ids for 2 layers"),
        (_config([_d("u1"), "sha256:BAD"]), BadResponse, "invalid diff_id"),
        (_config([_d("u1"), _d("u2")], rootfs={"type": "x"}), BadResponse, "rootfs.type"),
        (_config([_d("u1"), _d("u2")], architecture="arm64"), NotFound, "linux/arm64"),
        (_config([_d("u1"), _d("u2")], os="windows"), NotFound, "windows/amd64"),
        (b"<html>", BadResponse, "HTML"),
    ],
)
def test_bad_configs(config: bytes, error: type[Exception], message: str) -> None:
    manifest = parse_manifest(_bytes(_manifest()), OCI_MANIFEST)
    assert isinstance(manifest, ImageManifest)
    with pytest.raises(error, match=message.replace("(", r"\(")):
        parse_config(config, manifest)


# -- small protocol pieces: challenges, retries, redaction ----------------------------------


def test_parse_bearer_challenge() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/debian:pull,push"'
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/debian:pull,push",
    }
    assert parse_challenge('Basic realm="x"').scheme == "basic"
    assert parse_challenge("").params == {}


def test_retry_policy_is_bounded_exponential() -> None:
    policy = RetryPolicy(attempts=5, base_delay_s=0.5, max_delay_s=3)
    assert [policy.delay_s(n) for n in range(1, 5)] == [0.5, 1.0, 2.0, 3]
    assert policy.delay_s(1, "2") == 2
    assert policy.delay_s(1, "3600") == 3  # Retry-After is honoured, within the bound
    assert policy.delay_s(1, "Wed, 21 Oct 2015 07:28:00 GMT") == 0.5


@pytest.mark.parametrize(
    ("status", "retry"),
    [(s, True) for s in (429, 500, 502, 503, 504)]
    + [(s, False) for s in (400, 401, 403, 404, 200)],
)
def test_only_429_and_5xx_are_retried(status: int, retry: bool) -> None:
    assert is_retryable_status(status) is retry


def test_redact_hides_query_values_and_user_info() -> None:
    url = "https://user:pw@blob.example:8443/a/b?X-Amz-Signature=secret&token=abc&x="
    text = redact(url)
    assert "secret" not in text
    assert "abc" not in text
    assert "pw" not in text
    assert text.startswith("https://blob.example:8443/a/b?")
    assert "X-Amz-Signature=REDACTED" in text
