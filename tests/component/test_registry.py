"""The registry client and blob cache against Debian's real ``docker-registry`` on
127.0.0.1 (ADVERSARIAL 31-35, 37, 117), plus a fault proxy of ours for what a healthy
registry never does (503s, resets, slow drips, redirect loops, HTML pages).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.errors import BadResponse, NotFound, PermissionDenied, StateError, Timeout
from banger.images.pull_steps import Resolved, fetch_layer, preflight, resolve
from banger.oci.blobcache import BlobCache, Fetched
from banger.oci.digest import Digest, digest_of
from banger.oci.http_transport import HttpTransport, RetryPolicy, check_url
from banger.oci.manifest import MAX_MANIFEST_BYTES
from banger.oci.reference import parse_reference
from banger.oci.registry import RegistryClient
from tests.registry import (
    Fault,
    FaultProxy,
    LocalRegistry,
    OciLayout,
    fault_proxy,
    have_registry_tools,
    running_registry,
    sha256,
    tar_layer,
)

pytestmark = [
    pytest.mark.component,
    pytest.mark.skipif(not have_registry_tools(), reason="docker-registry/skopeo missing"),
]

FAST = RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def _layers(tag: str, count: int = 3) -> list[bytes]:
    base = tar_layer({"bin/": None, "bin/sh": b"#!fake shell\n", "etc/": None})
    rest = [tar_layer({f"etc/{tag}-{i}": secrets.token_bytes(2048)}) for i in range(count - 1)]
    return [base, *rest]


def _push_image(
    reg: LocalRegistry, tmp: Path, repo_tag: str, layers: list[bytes], arch: str = "amd64"
) -> dict[str, object]:
    layout = OciLayout(tmp / f"layout-{secrets.token_hex(4)}")
    desc = layout.image(layers, arch=arch)
    layout.tag(desc, "t")
    reg.push(layout, "t", repo_tag)
    return desc


def _client(transport: HttpTransport | None = None) -> RegistryClient:
    transport = transport or HttpTransport(retry=FAST, sleep=lambda _: None)
    return RegistryClient(transport, retry=FAST, sleep=lambda _: None)


def _pull(
    ref: str, cache_dir: Path, client: RegistryClient | None = None
) -> tuple[Resolved, list[Fetched]]:
    client = client or _client()
    cache = BlobCache(cache_dir, retry=FAST, sleep=lambda _: None)
    resolved = resolve(client, cache, parse_reference(ref))
    fetched = [
        fetch_layer(client, cache, resolved.ref, layer) for layer in resolved.manifest.layers
    ]
    return resolved, fetched


def _cache_files(cache_dir: Path) -> list[str]:
    blobs = cache_dir / "blobs" / "sha256"
    return sorted(p.name for p in blobs.iterdir()) if blobs.exists() else []


def test_multi_arch_index_resolves_amd64_with_all_layers(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    layout = OciLayout(tmp_path / "layout")
    amd64_layers = _layers("amd", 4)
    amd64 = layout.image(amd64_layers, arch="amd64")
    arm64 = layout.image(_layers("arm", 2), arch="arm64")
    index = layout.index([arm64, amd64])
    layout.tag(index, "multi")
    registry.push(layout, "multi", "test/multi:v1")

    cache_dir = tmp_path / "cache"
    resolved, fetched = _pull(f"{registry.host}/test/multi:v1", cache_dir)
    assert str(resolved.digest) == amd64["digest"]
    assert resolved.ref.digest == resolved.digest
    assert [str(d) for d in resolved.config.diff_ids] == [sha256(t) for t in amd64_layers]
    assert len(fetched) == 4 and all(f.downloaded for f in fetched)
    for f, layer in zip(fetched, resolved.manifest.layers, strict=True):
        assert digest_of(f.path.read_bytes()) == layer.digest
        assert f.path == cache_dir / "blobs" / "sha256" / layer.digest.hex
    assert (cache_dir / "oci-layout").is_file()
    # Pulled again: everything comes from the cache, no blob is asked for twice.
    gets = len(registry.blob_gets())
    _, again = _pull(f"{registry.host}/test/multi:v1", cache_dir)
    assert not any(f.downloaded for f in again)
    assert len(registry.blob_gets()) == gets
    assert not [n for n in _cache_files(cache_dir) if n.endswith(".partial")]


def test_pull_by_digest_and_tag_plus_digest(registry: LocalRegistry, tmp_path: Path) -> None:
    desc = _push_image(registry, tmp_path, "test/bydigest:v1", _layers("d", 2))
    for ref in (
        f"{registry.host}/test/bydigest@{desc['digest']}",
        f"{registry.host}/test/bydigest:v1@{desc['digest']}",
    ):
        resolved, _ = _pull(ref, tmp_path / "cache")
        assert str(resolved.digest) == desc["digest"]


def test_index_without_linux_amd64_e37_caches_nothing(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    layout = OciLayout(tmp_path / "layout")
    index = layout.index(
        [layout.image(_layers("a", 1), arch="arm64"), layout.image(_layers("s", 1), arch="s390x")]
    )
    layout.tag(index, "noamd")
    registry.push(layout, "noamd", "test/noamd:v1")
    cache_dir = tmp_path / "cache"
    with pytest.raises(NotFound) as info:
        _pull(f"{registry.host}/test/noamd:v1", cache_dir)
    assert info.value.brief.startswith("no linux/amd64 manifest in")
    assert info.value.details == "it has: linux/arm64, linux/s390x"
    assert _cache_files(cache_dir) == []


def test_blob_with_wrong_digest_e32_is_not_cached(registry: LocalRegistry, tmp_path: Path) -> None:
    layers = _layers("wd", 2)
    _push_image(registry, tmp_path, "test/wrongdigest:v1", layers)
    cache_dir = tmp_path / "cache"
    resolved, _ = _pull(f"{registry.host}/test/wrongdigest:v1", tmp_path / "first")
    victim = resolved.manifest.layers[1]
    data = registry.blob_data(str(victim.digest))
    original = data.read_bytes()
    data.write_bytes(bytes(b ^ 0xFF for b in original))  # same size, other bytes
    try:
        with pytest.raises(BadResponse) as info:
            _pull(f"{registry.host}/test/wrongdigest:v1", cache_dir)
    finally:
        data.write_bytes(original)
    assert f"expected {victim.digest}, got sha256:" in info.value.brief
    names = _cache_files(cache_dir)
    assert victim.digest.hex not in names
    assert not [n for n in names if n.endswith(".partial")]


def test_truncated_blob_e32_names_expected_and_actual_size(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    _push_image(registry, tmp_path, "test/truncated:v1", _layers("tr", 2))
    resolved, _ = _pull(f"{registry.host}/test/truncated:v1", tmp_path / "first")
    victim = resolved.manifest.layers[1]
    data = registry.blob_data(str(victim.digest))
    original = data.read_bytes()
    data.write_bytes(original[:-100])
    cache_dir = tmp_path / "cache"
    try:
        with pytest.raises(BadResponse) as info:
            _pull(f"{registry.host}/test/truncated:v1", cache_dir)
    finally:
        data.write_bytes(original)
    assert f"expected {victim.size} bytes, got {victim.size - 100} bytes" in info.value.brief
    assert victim.digest.hex not in _cache_files(cache_dir)
    assert not [n for n in _cache_files(cache_dir) if n.endswith(".partial")]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_manifest_e31_is_refused_before_parsing(
    proxied: tuple[str, FaultProxy], tmp_path: Path, chunked: bool
) -> None:
    # docker-registry itself refuses to store or serve such a manifest: the proxy sends it.
    ref, proxy = proxied
    doc = {"schemaVersion": 2, "layers": [], "annotations": {"pad": "x" * MAX_MANIFEST_BYTES}}
    proxy.add(Fault("/manifests/", "body", body=json.dumps(doc).encode(), chunked=chunked))
    with pytest.raises(BadResponse, match=r"more than the 4194304 (bytes )?allowed"):
        _pull(ref, tmp_path / "cache")
    assert _cache_files(tmp_path / "cache") == []


def test_manifest_bytes_not_matching_the_digest_e34(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    desc = _push_image(registry, tmp_path, "test/lying:v1", _layers("ly", 1))
    data = registry.blob_data(str(desc["digest"]))
    original = data.read_bytes()
    data.write_bytes(original.replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    try:
        for ref in (f"test/lying@{desc['digest']}", "test/lying:v1"):
            with pytest.raises(BadResponse, match="does not match its digest") as info:
                _pull(f"{registry.host}/{ref}", tmp_path / "cache")
            assert f"expected {desc['digest']}" in info.value.brief
    finally:
        data.write_bytes(original)


def test_tag_repointed_mid_pull_e34_keeps_the_first_digest(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    first = _push_image(registry, tmp_path, "test/moving:v1", _layers("one", 2))
    client = _client()
    cache = BlobCache(tmp_path / "cache")
    resolved = resolve(client, cache, parse_reference(f"{registry.host}/test/moving:v1"))
    _push_image(registry, tmp_path, "test/moving:v1", _layers("two", 3))  # re-pointed
    fetched = [
        fetch_layer(client, cache, resolved.ref, layer) for layer in resolved.manifest.layers
    ]
    assert str(resolved.digest) == first["digest"]
    assert resolved.ref.target == first["digest"]
    assert len(fetched) == 2


def test_missing_repository_and_tag_are_not_found(registry: LocalRegistry, tmp_path: Path) -> None:
    for ref in ("test/nothing-here:v1", "test/multi:no-such-tag"):
        with pytest.raises(NotFound, match=r"not found on 127\.0\.0\.1"):
            _pull(f"{registry.host}/{ref}", tmp_path / "cache")


def test_concurrent_fetches_of_one_blob_download_it_once_e117(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    big = tar_layer({"bin/": None, "bin/sh": b"x", "big": os.urandom(24 << 20)})
    _push_image(registry, tmp_path, "test/shared:v1", [big])
    cache_dir = tmp_path / "cache"
    resolved, _ = _pull(f"{registry.host}/test/shared:v1", tmp_path / "warm")
    layer = resolved.manifest.layers[0]
    before = len(registry.blob_gets(str(layer.digest)))
    results: list[Fetched] = []
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            results.append(fetch_layer(_client(), BlobCache(cache_dir), resolved.ref, layer))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.downloaded for r in results) == [False, False, False, True]
    assert len(registry.blob_gets(str(layer.digest))) == before + 1


_FETCH_SCRIPT = """
import sys
from pathlib import Path
from banger.images.pull_steps import fetch_layer, resolve
from banger.oci.blobcache import BlobCache
from banger.oci.reference import parse_reference
from banger.oci.registry import RegistryClient
from banger.oci.http_transport import HttpTransport
client = RegistryClient(HttpTransport())
cache = BlobCache(Path(sys.argv[2]))
resolved = resolve(client, cache, parse_reference(sys.argv[1]))
for layer in resolved.manifest.layers:
    print(fetch_layer(client, cache, resolved.ref, layer).downloaded)
"""


def test_two_processes_share_the_cache_with_one_download_e117(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    big = tar_layer({"bin/": None, "bin/sh": b"x", "big": os.urandom(24 << 20)})
    _push_image(registry, tmp_path, "test/shared2:v1", [big, tar_layer({"a": b"a"})])
    ref = f"{registry.host}/test/shared2:v1"
    before = len(registry.blob_gets())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FETCH_SCRIPT, ref, str(tmp_path / "cache")],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    # Each blob (config + 2 layers) is downloaded by exactly one of the three processes.
    assert sorted(out.count("True") for out in outputs).count(0) >= 1
    assert sum(out.count("True") for out in outputs) == 2
    assert len(registry.blob_gets()) - before == 3


def test_partial_files_never_count_and_are_cleaned(registry: LocalRegistry, tmp_path: Path) -> None:
    _push_image(registry, tmp_path, "test/partial:v1", _layers("p", 1))
    cache_dir = tmp_path / "cache"
    cache = BlobCache(cache_dir)
    client = _client()
    resolved = resolve(client, cache, parse_reference(f"{registry.host}/test/partial:v1"))
    layer = resolved.manifest.layers[0]
    stale = cache.blobs_dir / f"{layer.digest.hex}.{'0' * 16}.partial"
    stale.write_bytes(b"half")
    other = cache.blobs_dir / f"{'b' * 64}.{'1' * 16}.partial"
    other.write_bytes(b"half")
    assert cache.lookup(layer.digest, layer.size) is None
    assert fetch_layer(client, cache, resolved.ref, layer).downloaded
    assert not stale.exists()  # removed under the digest's lock
    assert cache.clean_partials() == [other]
    assert not other.exists()


# -- the token flow against the registry's own token auth -------------------------------------


def test_anonymous_bearer_token_flow_and_no_token_in_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_registry(tmp_path / "reg", token=True) as reg:
        assert reg.token is not None
        _push_image(reg, tmp_path, "test/private:v1", _layers("tok", 2))
        pushed_tokens = len(reg.token.issued)
        caplog.set_level(logging.DEBUG, logger="banger")
        resolved, fetched = _pull(f"{reg.host}/test/private:v1", tmp_path / "cache")
        assert len(fetched) == 2
        ours = reg.token.issued[pushed_tokens:]
        assert len(ours) == 1, "one token serves the whole pull"
        query = reg.token.requests[-1]
        assert query["scope"] == ["repository:test/private:pull"]
        assert query["service"] == [reg.token.service]
        text = caplog.text
        assert ours[0] not in text
        assert ours[0][:20] not in text
        assert "Bearer" not in text
        # Without a token, the registry itself refuses: the flow was really needed.
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://{reg.host}/v2/test/private/manifests/v1")
        assert info.value.code == 401
        assert resolved.digest


def test_token_service_refusing_is_permission_denied(tmp_path: Path) -> None:
    with running_registry(tmp_path / "reg") as reg, fault_proxy(reg.host) as proxy:
        realm = f"http://{proxy.host}/token"
        challenge = f'Bearer realm="{realm}",service="x",scope="repository:test/x:pull"'
        proxy.add(
            Fault(
                "/v2/test/x/",
                "status",
                times=5,
                status=401,
                headers={"WWW-Authenticate": challenge},
            )
        )
        proxy.add(Fault("/token", "status", times=5, status=403))
        with pytest.raises(PermissionDenied, match="refused an anonymous token"):
            _pull(f"{proxy.host}/test/x:v1", tmp_path / "cache")


def test_basic_auth_registry_is_a_clear_error(tmp_path: Path) -> None:
    with running_registry(tmp_path / "reg") as reg, fault_proxy(reg.host) as proxy:
        basic = {"WWW-Authenticate": 'Basic realm="corp"'}
        proxy.add(Fault("/v2/", "status", times=5, status=401, headers=basic))
        with pytest.raises(PermissionDenied, match="requires credentials"):
            _pull(f"{proxy.host}/test/x:v1", tmp_path / "cache")


# -- faults through the proxy (ADVERSARIAL 35) ----------------------------------------------


@pytest.fixture
def proxied(registry: LocalRegistry, tmp_path: Path) -> Iterator[tuple[str, FaultProxy]]:
    _push_image(registry, tmp_path, "test/faults:v1", _layers("f", 2))
    with fault_proxy(registry.host) as proxy:
        yield f"{proxy.host}/test/faults:v1", proxy


def test_503_and_429_are_retried_then_succeed(
    proxied: tuple[str, FaultProxy], tmp_path: Path
) -> None:
    ref, proxy = proxied
    proxy.add(Fault("/manifests/", "status", times=2, status=503))
    proxy.add(Fault("/blobs/", "status", times=1, status=429, headers={"Retry-After": "0"}))
    _, fetched = _pull(ref, tmp_path / "cache")
    assert len(fetched) == 2
    assert len(proxy.paths("/manifests/v1")) == 3


def test_persistent_5xx_gives_up_after_bounded_retries(
    proxied: tuple[str, FaultProxy], tmp_path: Path
) -> None:
    ref, proxy = proxied
    proxy.add(Fault("/manifests/", "status", times=100, status=502))
    with pytest.raises(BadResponse, match="answered HTTP 502") as info:
        _pull(ref, tmp_path / "cache")
    assert info.value.hint and "retry later" in info.value.hint
    assert len(proxy.paths("/manifests/")) == FAST.attempts


def test_other_4xx_are_not_retried(proxied: tuple[str, FaultProxy], tmp_path: Path) -> None:
    ref, proxy = proxied
    proxy.add(Fault("/manifests/", "status", times=100, status=400))
    with pytest.raises(BadResponse, match="HTTP 400"):
        _pull(ref, tmp_path / "cache")
    assert len(proxy.paths("/manifests/")) == 1


def test_connection_reset_mid_blob_is_retried(
    proxied: tuple[str, FaultProxy], tmp_path: Path
) -> None:
    ref, proxy = proxied
    proxy.add(Fault("/blobs/", "reset", times=2))
    _, fetched = _pull(ref, tmp_path / "cache")
    for f in fetched:
        assert digest_of(f.path.read_bytes()) == Digest(f.path.name)


def test_connection_reset_mid_manifest_is_retried(
    proxied: tuple[str, FaultProxy], tmp_path: Path
) -> None:
    ref, proxy = proxied
    proxy.add(Fault("/manifests/", "reset", times=2))
    resolved, _ = _pull(ref, tmp_path / "cache")
    assert len(proxy.paths("/manifests/v1")) == 3
    assert resolved.layer_count == 2


def test_reset_every_time_fails_cleanly(proxied: tuple[str, FaultProxy], tmp_path: Path) -> None:
    ref, proxy = proxied
    proxy.add(Fault("/blobs/", "reset", times=100))
    with pytest.raises(BadResponse, match="closed the connection after"):
        _pull(ref, tmp_path / "cache")
    assert _cache_files(tmp_path / "cache") == []


def test_slow_drip_body_times_out(proxied: tuple[str, FaultProxy], tmp_path: Path) -> None:
    ref, proxy = proxied
    proxy.add(Fault("/manifests/", "drip", times=100, delay_s=0.05))
    transport = HttpTransport(
        retry=RetryPolicy(attempts=2, base_delay_s=0.01), body_grace_s=0.5, min_rate_bps=1 << 20
    )
    with pytest.raises(Timeout, match="too slowly"):
        _pull(ref, tmp_path / "cache", _client(transport))


def test_redirect_loop_is_bounded(proxied: tuple[str, FaultProxy], tmp_path: Path) -> None:
    ref, proxy = proxied
    loop = Fault(
        "/manifests/",
        "redirect",
        times=100,
        status=302,
        location="http://{self}/v2/test/faults/manifests/v1",
    )
    proxy.add(loop)
    with pytest.raises(BadResponse, match="more than 5 redirects"):
        _pull(ref, tmp_path / "cache")


def test_blob_redirect_to_another_host_drops_authorization(
    registry: LocalRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _push_image(registry, tmp_path, "test/redir:v1", _layers("r", 1))
    caplog.set_level(logging.DEBUG, logger="banger")
    with fault_proxy(registry.host) as front, fault_proxy(registry.host) as storage:
        client = _client()
        cache = BlobCache(tmp_path / "cache")
        resolved = resolve(client, cache, parse_reference(f"{front.host}/test/redir:v1"))
        layer = resolved.manifest.layers[0]
        # "localhost" is another host than 127.0.0.1 as far as the client can tell, like
        # blob storage behind a registry; its URL carries a signature in the query.
        port = storage.host.split(":")[1]
        location = f"http://localhost:{port}/v2/test/redir/blobs/{layer.digest}?X-Sig=s3cr3t"
        front.add(Fault("/blobs/", "redirect", times=10, status=307, location=location))
        client._tokens[(front.host, "test/redir")] = "secret-token"  # as after a token flow
        assert fetch_layer(client, cache, resolved.ref, layer).downloaded
    front_auth = [h.get("authorization") for _, p, h in front.seen if str(layer.digest) in p]
    storage_auth = [h.get("authorization") for _, _, h in storage.seen]
    assert front_auth == ["Bearer secret-token"]
    assert storage_auth == [None]
    assert "s3cr3t" not in caplog.text
    assert "secret-token" not in caplog.text


def test_html_page_instead_of_manifest(proxied: tuple[str, FaultProxy], tmp_path: Path) -> None:
    ref, proxy = proxied
    proxy.add(Fault("/manifests/", "html", times=1))
    with pytest.raises(BadResponse, match=r"HTML page|does not match"):
        _pull(ref, tmp_path / "cache")


def test_connection_refused_is_a_clear_error(tmp_path: Path) -> None:
    from tests.registry import free_port

    with pytest.raises(BadResponse, match=r"cannot reach 127\.0\.0\.1"):
        _pull(f"127.0.0.1:{free_port()}/x/y:z", tmp_path / "cache")


def test_plain_http_only_to_loopback() -> None:
    check_url("http://127.0.0.1:5000/v2/")
    check_url("http://localhost/v2/")
    check_url("https://registry.example/v2/")
    for url in ("http://registry.example/v2/", "http://10.0.0.1:5000/v2/", "ftp://x/"):
        with pytest.raises(BadResponse):
            check_url(url)
    client = _client()
    assert client.base_url(parse_reference("ghcr.io/a/b")).startswith("https://ghcr.io/v2/")
    assert client.base_url(parse_reference("debian")).startswith(
        "https://registry-1.docker.io/v2/library/debian"
    )
    assert client.base_url(parse_reference("localhost:5000/a")).startswith("http://")


# -- disk full (ADVERSARIAL 106-108) --------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs with 2048 inodes, mounted for this test only (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=2048,mode=0700", "tmpfs", str(mount)],
        check=True,
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_download_e106_names_the_filesystem(
    registry: LocalRegistry, tmp_path: Path, small_fs: Path
) -> None:
    big = tar_layer({"bin/": None, "bin/sh": b"x", "big": os.urandom(3 << 20)})
    _push_image(registry, tmp_path, "test/full:v1", [big])
    with pytest.raises(StateError) as info:
        _pull(f"{registry.host}/test/full:v1", small_fs / "oci")
    assert f"no space left on the filesystem holding {small_fs / 'oci'}" in info.value.brief
    assert "needed" in info.value.brief and "free" in info.value.brief
    blobs = small_fs / "oci" / "blobs" / "sha256"
    # Only the (small) config made it; the layer and its partial file are gone.
    assert len(list(blobs.iterdir())) == 1
    assert not list(blobs.glob("*.partial"))


def test_no_inodes_left_e108_is_its_own_error(
    registry: LocalRegistry, tmp_path: Path, small_fs: Path
) -> None:
    _push_image(registry, tmp_path, "test/inodes:v1", _layers("in", 3))
    filler = small_fs / "fill"
    filler.mkdir()
    with contextlib.suppress(OSError):
        for i in range(5000):
            (filler / str(i)).touch()
    with pytest.raises(StateError, match="no free inodes left on the filesystem holding"):
        _pull(f"{registry.host}/test/inodes:v1", small_fs / "oci-x")


def test_preflight_e107_refuses_before_downloading(
    registry: LocalRegistry, tmp_path: Path, small_fs: Path
) -> None:
    _push_image(registry, tmp_path, "test/pf-small:v1", _layers("pf", 2))
    big = tar_layer({"bin/": None, "bin/sh": b"x", "big": os.urandom(300 << 10)})
    _push_image(registry, tmp_path, "test/pf-big:v1", [big])
    client = _client()
    cache = BlobCache(tmp_path / "cache")
    small = resolve(client, cache, parse_reference(f"{registry.host}/test/pf-small:v1"))
    preflight(cache, small_fs / "images", small, size_bytes=None)
    resolved = resolve(client, cache, parse_reference(f"{registry.host}/test/pf-big:v1"))
    # ~300 KiB of incompressible layer needs ~6x that in staging: more than 1 MiB.
    with pytest.raises(StateError, match="not enough disk space for building the image") as info:
        preflight(cache, small_fs / "images", resolved, size_bytes=None)
    assert str(small_fs / "images") in info.value.brief
    # The cache side: the layer itself does not fit on the small filesystem's cache.
    small_cache = BlobCache(small_fs / "oci")
    big_layer = tar_layer({"big": os.urandom(2 << 20)})
    _push_image(registry, tmp_path, "test/pf-cache:v1", [big_layer])
    huge = resolve(client, cache, parse_reference(f"{registry.host}/test/pf-cache:v1"))
    with pytest.raises(StateError, match="not enough disk space for the blob cache"):
        preflight(small_cache, tmp_path / "images", huge, size_bytes=None)
    assert list(small_cache.blobs_dir.iterdir()) == []


def test_damaged_cached_blob_is_evicted_and_downloaded_again(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    """Issue 14 item 20: same name and size, wrong bytes (bit rot) used to poison every
    later pull; now the copy is re-verified, evicted and fetched again, and the caller is
    told the local cache was damaged."""
    _push_image(registry, tmp_path, "test/rot:v1", _layers("rot", 3))
    cache_dir = tmp_path / "cache"
    resolved, first = _pull(f"{registry.host}/test/rot:v1", cache_dir)
    victim = first[1].path
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    config = cache_dir / "blobs" / "sha256" / resolved.manifest.config.digest.hex
    config_data = bytearray(config.read_bytes())
    config_data[0] ^= 0x01
    config.write_bytes(bytes(config_data))
    gets = len(registry.blob_gets())

    resolved, again = _pull(f"{registry.host}/test/rot:v1", cache_dir)
    assert [f.repaired for f in again] == [False, True, False]
    assert [f.downloaded for f in again] == [False, True, False]
    for f, layer in zip(again, resolved.manifest.layers, strict=True):
        assert digest_of(f.path.read_bytes()) == layer.digest
    assert digest_of(config.read_bytes()) == resolved.manifest.config.digest
    assert len(registry.blob_gets()) == gets + 2  # the layer and the config, once each
    assert not [n for n in _cache_files(cache_dir) if n.endswith(".partial")]
