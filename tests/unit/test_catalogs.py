"""The kernel and image catalogs (ADVERSARIAL 44) and reading the host's apt sources.

The embedded catalogs are checked here the way CI must check them: every sha256 is 64
lowercase hex or an explicit null with ``"verified": false``, (name, version, arch) is
unique, URLs are https. Then the rules one by one on bad entries, the environment
overrides, and the two apt source formats (one-line and deb822) the local build reads.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from banger.config.catalog_file import MAX_CATALOG_BYTES
from banger.config.settings import load_config
from banger.errors import InvalidArgument, KernelNotFound, UnsupportedHost
from banger.host.paths import Layout
from banger.images import image_catalog as images
from banger.images import localbuild
from banger.images.localbuild import AptSource
from banger.kernels import kernel_catalog as kernels
from banger.kernels.kernel_catalog import SHA256_HEX, ArtifactFormat

GOOD_SHA = "a" * 64


def embedded_kernels() -> dict[str, Any]:
    return json.loads(kernels.CATALOG_FILE.embedded_bytes())


def embedded_images() -> dict[str, Any]:
    return json.loads(Path(images.__file__).with_name("catalog.json").read_bytes())


def kernel_entry(**changes: Any) -> dict[str, Any]:
    entry = {
        "name": "k1",
        "distro": "test",
        "arch": "x86_64",
        "version": "6.1.1",
        "format": "tar.zst",
        "url": "https://example.invalid/k1.tar.zst",
        "sha256": GOOD_SHA,
        "size_bytes": 1000,
        "description": "a kernel",
    }
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not ...}


def problems(*entries: dict[str, Any], embedded: bool = True) -> list[str]:
    return kernels.catalog_problems({"schema": 1, "kernels": list(entries)}, embedded=embedded)


# -- the embedded catalogs: the CI self-test ---------------------------------------------------


def test_embedded_kernel_catalog_passes_its_own_rules() -> None:
    raw = embedded_kernels()
    assert kernels.catalog_problems(raw, embedded=True) == []
    catalog = kernels.load_catalog(env={})
    assert catalog.origin == "embedded" and catalog.entries
    keys = [(e.name, e.version, e.arch) for e in catalog.entries]
    assert len(keys) == len(set(keys))
    for entry in catalog.entries:
        if entry.format is ArtifactFormat.DEB:
            assert entry.package and entry.suite and entry.url is None
            assert entry.verified  # apt checks the archive's signature
            continue
        assert entry.url is not None and entry.url.startswith("https://")
        assert "latest" not in entry.url  # exact artifact keys only
        if entry.sha256 is None:
            assert entry.verified is False
        else:
            assert SHA256_HEX.fullmatch(entry.sha256) and entry.verified


def test_embedded_kernel_catalog_json_says_verified_false_next_to_every_null_hash() -> None:
    for item in embedded_kernels()["kernels"]:
        if "sha256" in item and item["sha256"] is None:
            assert item["verified"] is False, item["name"]


def test_embedded_image_catalog_holds_the_default_image_with_kernels_from_the_catalog() -> None:
    assert images.catalog_problems(embedded_images(), embedded=True) == []
    catalog = images.load_catalog(env={})
    default = load_config(
        env={}, layout=Layout.from_env({"HOME": "/nonexistent"})
    ).default_image_name
    entry = catalog.find(default)
    assert entry is not None and entry.name == "debian-bookworm"
    kinds = [s.type for s in entry.sources]
    assert kinds == [images.SourceType.OCI, images.SourceType.LOCAL_DEBIAN]
    oci, local = entry.sources
    assert oci.ref == "docker.io/library/debian:bookworm"
    assert {"openssh-server", "systemd-sysv"} <= set(oci.packages)
    assert local.suite == "bookworm" and local.variant == "minbase"
    minimal = catalog.find("debian-bookworm-minimal")
    assert minimal is not None
    small = {
        "systemd-sysv", "udev", "openssh-server", "iproute2", "python3-minimal",
        "ca-certificates", "kmod",
    }  # fmt: skip
    assert [set(s.packages) for s in minimal.sources] == [small, small]
    # The default is the development image (issue 10): the minimal set plus tools and
    # Docker, the same for both sources (the OCI one installs them at first boot).
    dev = {
        "git", "make", "build-essential", "python3", "python3-venv", "python3-pip", "curl",
        "wget", "openssh-client", "rsync", "jq", "unzip", "xz-utils", "zstd", "tmux", "less",
        "vim-tiny", "procps", "sudo", "docker.io", "containerd", "iptables", "apparmor",
    }  # fmt: skip
    assert set(oci.packages) == set(local.packages) == small | dev
    assert entry.size_bytes > minimal.size_bytes
    known = {e.name for e in kernels.load_catalog(env={}).entries}
    for source in (*entry.sources, *minimal.sources):
        assert set(source.kernels) <= known
    assert catalog.find("no-such-image") is None


# -- kernel catalog rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"sha256": "A" * 64}, "64 lowercase hex"),
        ({"sha256": "a" * 63}, "64 lowercase hex"),
        ({"sha256": "sha256:" + "a" * 64}, "64 lowercase hex"),
        ({"sha256": None}, '"verified": false'),
        ({"sha256": None, "verified": True}, '"verified": false'),
        ({"sha256": GOOD_SHA, "verified": False}, "drop verified"),
        ({"url": "http://example.invalid/k.tar.zst"}, "https"),
        ({"url": "ftp://example.invalid/k"}, "https"),
        ({"url": "https://user:pw@example.invalid/k"}, "credentials"),
        ({"url": "https://example.invalid/"}, "name a file"),
        ({"name": "../etc"}, "invalid name"),
        ({"name": ".hidden"}, "invalid name"),
        ({"arch": "mips"}, "arch"),
        ({"version": None}, "version is required"),
        ({"version": "1.0 beta"}, "invalid version"),
        ({"size_bytes": 0}, "size_bytes"),
        ({"size_bytes": True}, "size_bytes"),
        ({"format": "zip"}, "format must be one of"),
        ({"extra": 1}, "unknown key"),
        ({"description": ...}, "missing description"),
    ],
)
def test_bad_kernel_entries_are_named(changes: dict[str, Any], fragment: str) -> None:
    found = problems(kernel_entry(**changes))
    assert found and any(fragment in p for p in found), found
    with pytest.raises(InvalidArgument) as err:
        kernels.parse_catalog(
            json.dumps({"schema": 1, "kernels": [kernel_entry(**changes)]}).encode(),
            origin="/tmp/c.json",
        )
    assert "BANGER_KERNEL_CATALOG" in (err.value.hint or "")


def test_an_explicit_null_hash_marked_unverified_is_accepted() -> None:
    assert problems(kernel_entry(sha256=None, verified=False)) == []
    catalog = kernels.parse_catalog(
        json.dumps({"schema": 1, "kernels": [kernel_entry(sha256=None, verified=False)]}).encode(),
        origin="x",
    )
    assert catalog.entries[0].verified is False


def test_names_are_unique_per_arch() -> None:
    found = problems(kernel_entry(), kernel_entry(version="6.1.2"))
    assert any("appears twice" in p for p in found)
    assert problems(kernel_entry(), kernel_entry(arch="aarch64")) == []


def test_an_override_may_fetch_plain_http_only_from_loopback() -> None:
    assert problems(kernel_entry(url="http://127.0.0.1:8080/k.tar.zst"), embedded=False) == []
    assert problems(kernel_entry(url="http://localhost/k.tar.zst"), embedded=False) == []
    assert problems(kernel_entry(url="http://127.0.0.1:8080/k.tar.zst"), embedded=True)
    assert problems(kernel_entry(url="http://mirror.lan/k.tar.zst"), embedded=False)


def test_deb_entries_name_a_package_and_a_suite() -> None:
    deb = {
        "name": "d", "distro": "debian", "arch": "x86_64", "version": None,
        "format": "deb", "package": "linux-image-cloud-amd64", "suite": "bookworm",
        "description": "x",
    }  # fmt: skip
    assert problems(deb) == []
    assert problems({**deb, "package": "Bad Name"})
    assert problems({**deb, "suite": "../x"})
    assert any("unknown key 'url'" in p for p in problems({**deb, "url": "https://a/b"}))


def test_the_top_level_shape_is_checked() -> None:
    for raw in ([], {"kernels": []}, {"schema": 2, "kernels": []}, {"schema": 1, "kernels": {}}):
        assert kernels.catalog_problems(raw, embedded=True)
    with pytest.raises(InvalidArgument, match="invalid"):
        kernels.parse_catalog(b"{not json", origin="x")


def test_an_unknown_kernel_is_an_error_listing_the_available_ones() -> None:
    catalog = kernels.load_catalog(env={})
    with pytest.raises(KernelNotFound) as err:
        catalog.find("no-such-kernel")
    for entry in catalog.entries:
        assert entry.name in (err.value.details or "")
    assert "--available" in (err.value.hint or "")


def test_the_override_is_read_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "kernels.json"
    path.write_text(json.dumps({"schema": 1, "kernels": [kernel_entry(name="mine")]}))
    catalog = kernels.load_catalog(env={"BANGER_KERNEL_CATALOG": str(path)})
    assert catalog.origin == str(path) and [e.name for e in catalog.entries] == ["mine"]
    with pytest.raises(InvalidArgument, match="absolute"):
        kernels.load_catalog(env={"BANGER_KERNEL_CATALOG": "kernels.json"})
    with pytest.raises(InvalidArgument, match="cannot read"):
        kernels.load_catalog(env={"BANGER_KERNEL_CATALOG": str(tmp_path / "missing.json")})
    path.write_bytes(b" " * (MAX_CATALOG_BYTES + 1))
    with pytest.raises(InvalidArgument, match="larger than"):
        kernels.load_catalog(env={"BANGER_KERNEL_CATALOG": str(path)})


# -- image catalog rules -----------------------------------------------------------------------


def test_bad_image_entries_are_named(tmp_path: Path) -> None:
    raw = embedded_images()
    cases: list[tuple[str, Any, str]] = [
        ("name", "a/b", "invalid name"),
        ("size_bytes", 1, "size_bytes"),
        ("sources", [], "non-empty"),
        ("extra", 1, "unknown key"),
    ]
    for key, value, fragment in cases:
        bad = copy.deepcopy(raw)
        bad["images"][0][key] = value
        found = images.catalog_problems(bad, embedded=True)
        assert any(fragment in p for p in found), (key, found)
    local = {"type": "local-debian", "suite": "bookworm", "kernels": ["k"]}
    bundle = {"type": "bundle", "url": "https://h/b.tar.zst", "sha256": GOOD_SHA, "kernels": ["k"]}
    source_cases: list[tuple[dict[str, Any], str]] = [
        ({"type": "ftp"}, "type must be one of"),
        ({"type": "oci", "ref": "Not A Ref", "kernels": ["k"]}, "invalid OCI reference"),
        ({"type": "oci", "ref": "debian:bookworm", "kernels": []}, "kernels"),
        ({**local, "variant": "x"}, "variant"),
        ({**local, "include": ["a b"]}, "include"),
        ({**bundle, "sha256": "x"}, "64 lowercase"),
        ({**bundle, "url": "http://h/b"}, "https"),
    ]
    for source, fragment in source_cases:
        bad = copy.deepcopy(raw)
        bad["images"][0]["sources"] = [source]
        found = images.catalog_problems(bad, embedded=True)
        assert any(fragment in p for p in found), (source, found)
    dup = copy.deepcopy(raw)
    dup["images"].append(copy.deepcopy(raw["images"][0]))
    assert any("appears twice" in p for p in images.catalog_problems(dup, embedded=True))
    path = tmp_path / "images.json"
    path.write_text(json.dumps(dup))
    with pytest.raises(InvalidArgument, match="image catalog"):
        images.load_catalog(env={"BANGER_IMAGE_CATALOG": str(path)})


# -- the host's apt sources --------------------------------------------------------------------

ONE_LINE = """\
# the main archive
deb http://mirror.example/debian bookworm main contrib
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm-updates main
deb-src http://mirror.example/debian bookworm main
deb http://security.example/debian-security bookworm-security main # trailing comment
deb https://thirdparty.example/apt cloud-sdk-bookworm main
deb http://mirror.example/debian bookworm contrib
deb broken
"""  # noqa: E501

DEB822 = """\
Types: deb deb-src
# a comment line inside the stanza
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBF...
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no
"""


def test_one_line_sources_are_parsed_with_options_and_comments() -> None:
    found = localbuild.parse_one_line(ONE_LINE, "sources.list")
    assert [(s.type, s.uri, s.suite) for s in found] == [
        ("deb", "http://mirror.example/debian", "bookworm"),
        ("deb", "http://mirror.example/debian", "bookworm-updates"),
        ("deb-src", "http://mirror.example/debian", "bookworm"),
        ("deb", "http://security.example/debian-security", "bookworm-security"),
        ("deb", "https://thirdparty.example/apt", "cloud-sdk-bookworm"),
        ("deb", "http://mirror.example/debian", "bookworm"),
    ]
    assert found[0].components == ("main", "contrib") and found[0].signed_by is None
    assert found[1].signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_deb822_sources_are_parsed_and_disabled_stanzas_skipped() -> None:
    found = localbuild.parse_deb822(DEB822, "debian.sources")
    assert [(s.type, s.suite) for s in found] == [
        ("deb", "bookworm"),
        ("deb", "bookworm-updates"),
        ("deb-src", "bookworm"),
        ("deb-src", "bookworm-updates"),
        ("deb", "bookworm-security"),
    ]
    assert found[0].signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert found[-1].signed_by is None  # an inline key cannot go in a one-line entry
    assert all("disabled" not in s.uri for s in found)


@pytest.mark.parametrize("fmt", ["one-line", "deb822"])
def test_the_suite_entries_become_one_line_sources_without_third_parties(fmt: str) -> None:
    text = ONE_LINE if fmt == "one-line" else DEB822
    parse = localbuild.parse_one_line if fmt == "one-line" else localbuild.parse_deb822
    lines = localbuild.suite_sources(parse(text), "bookworm")
    assert any(
        line.endswith(
            "http://mirror.example/debian bookworm main" + " contrib" * (fmt == "one-line")
        )
        for line in lines
    )
    assert any("bookworm-updates" in line for line in lines)
    assert any(
        "http://security.example/debian-security bookworm-security main" in line for line in lines
    )
    assert not any("thirdparty" in line or line.startswith("deb-src") for line in lines)
    assert len(lines) == len(set(lines))


def test_a_debian_host_of_another_release_lends_its_mirror() -> None:
    trixie = [
        AptSource("deb", "http://mirror.example/debian", "trixie", ("main",)),
        AptSource("deb", "http://mirror.example/debian-security", "trixie-security", ("main",)),
        AptSource("deb", "https://other.example/apt", "stable", ("main",)),
    ]
    lines = localbuild.suite_sources(trixie, "bookworm", host=("debian", "trixie"))
    assert lines == [
        "deb http://mirror.example/debian bookworm main",
        "deb http://mirror.example/debian-security bookworm-security main",
    ]
    with pytest.raises(UnsupportedHost, match="no Debian archive for 'bookworm'"):
        localbuild.suite_sources(trixie, "bookworm", host=("ubuntu", "noble"))


def test_the_host_files_are_read_in_apt_order(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb http://a.example/debian bookworm main\n")
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "b.sources").write_text(DEB822)
    (parts / "c.list").write_text("deb http://c.example/debian bookworm main\n")
    (parts / "d.list.disabled").write_text("deb http://d.example/debian bookworm main\n")
    uris = [s.uri for s in localbuild.host_sources(tmp_path)]
    assert uris[0] == "http://a.example/debian" and uris[-1] == "http://c.example/debian"
    assert "http://d.example/debian" not in uris
    release = tmp_path / "os-release"
    release.write_text('ID=debian\nVERSION_CODENAME="bookworm"\n')
    assert localbuild.host_release(release) == ("debian", "bookworm")
    assert localbuild.host_release(tmp_path / "missing") == ("", "")


def test_this_hosts_sources_yield_a_bookworm_archive() -> None:
    if not Path("/etc/apt").is_dir():
        pytest.skip("no apt on this host")
    lines = localbuild.suite_sources(
        localbuild.host_sources(), "bookworm", host=localbuild.host_release()
    )
    assert lines and all(line.startswith("deb ") for line in lines)


def test_the_versioned_kernel_package_is_read_from_apt_cache_depends() -> None:
    depends = (
        "linux-image-cloud-amd64\n"
        "  Depends: linux-image-6.1.0-56-cloud-amd64\n"
        "  Depends: other-package\n"
    )
    assert localbuild._versioned(depends, "linux-image-cloud-amd64") == (
        "linux-image-6.1.0-56-cloud-amd64"
    )
    assert localbuild._versioned("", "linux-image-6.1.0-1-amd64") == "linux-image-6.1.0-1-amd64"
    with pytest.raises(InvalidArgument, match="cannot tell"):
        localbuild._versioned("nothing", "linux-image-cloud-amd64")
