"""A container image for ``docker load``, made here from busybox-static (no registry).

``busybox_archive(out, tag)`` writes a docker-archive tar (what ``docker save`` writes and
``docker load`` reads): ``manifest.json``, the image config, and one uncompressed layer
holding ``/bin/busybox`` and a symlink per applet the tests use. The guest's Docker loads
it offline, so "Docker works in the guest" is tested with no network to a registry.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "true", "false", "echo", "cat", "ip", "wget", "ping", "hostname", "ls")


def _layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("bin", "tmp", "etc"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        data = BUSYBOX.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(link)
    return buf.getvalue()


def busybox_archive(out: Path, tag: str = "banger-test/busybox:latest") -> str:
    """Write the archive to ``out``; returns the image id (``sha256:<config digest>``)."""
    layer = _layer()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "tests/dockerimg.py"}],
        },
        sort_keys=True,
    ).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    layer_dir = diff_id.removeprefix("sha256:")
    manifest = json.dumps(
        [{"Config": f"{config_hex}.json", "RepoTags": [tag], "Layers": [f"{layer_dir}/layer.tar"]}]
    ).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            (f"{layer_dir}/layer.tar", layer),
            (f"{config_hex}.json", config),
            ("manifest.json", manifest),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return f"sha256:{config_hex}"
