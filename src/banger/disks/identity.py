"""Per-VM guest identity (SPEC §5): host key, machine-id, hostname, sshd drop-in, /root keys.

Owns: making a VM's identity on the host (an ed25519 host key from ``ssh-keygen`` and a
random machine-id, so no key generation sits on the guest's boot path), writing it into
the VM's rootfs copy and work disk through ``Ext4Editor``, the ``/root`` fstab line, and
banger's managed SSH key (``~/.local/state/banger/ssh/id_ed25519``).
Must not: mount, need root, write anywhere but the images it is given (and the managed
key), or keep a host private key on the host longer than it takes to read it.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from banger.disks.ext4edit import Ext4Editor
from banger.errors import AlreadyExists, CommandFailed, InvalidArgument, PermissionDenied
from banger.host.paths import ensure_private_dir
from banger.host.publish import rename_noreplace, write_file_atomic
from banger.host.runner import Runner

HOST_KEY_PATH = "/etc/ssh/ssh_host_ed25519_key"
DROP_IN_PATH = "/etc/ssh/sshd_config.d/50-banger.conf"
SSHD_DROP_IN = (
    b"PermitRootLogin prohibit-password\n"
    b"PubkeyAuthentication yes\n"
    b"PasswordAuthentication no\n"
    b"KbdInteractiveAuthentication no\n"
)
# fsck pass 0: the ext4 journal already makes the disk consistent after a crash, and a
# boot-time fsck costs ~2 s under TCG on the way to SSH (docs/dev/vm-plan.md findings).
FSTAB_LINE = b"/dev/vdb /root ext4 defaults,nofail 0 0"
#: Host keys an image may have baked in: every VM made from it would share them (and
#: sshd offers every key it finds), so they go; distributions that want them regenerate
#: them per boot (Fedora's sshd-keygen), which keeps them per VM.
BAKED_HOST_KEYS = tuple(
    f"/etc/ssh/ssh_host_{kind}_key{suffix}"
    for kind in ("rsa", "ecdsa", "dsa")
    for suffix in ("", ".pub")
)
MANAGED_KEY_COMMENT = "banger"
# An RFC 1123 label, the same rule as VM names (banger.model.naming).
_HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_PUBLIC_KEY = re.compile(
    rb"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com"
    rb"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,2}(?: [ -~]*)?"
)
_DEFAULT_HOSTS = b"127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"


@dataclass(frozen=True)
class GuestIdentity:
    hostname: str
    machine_id: str
    host_key_private: bytes = field(repr=False)
    host_key_public: bytes
    #: The guest's /root/.ssh/authorized_keys: banger's public key, one line.
    authorized_keys: bytes


def check_hostname(name: str) -> str:
    if not isinstance(name, str) or not _HOSTNAME.fullmatch(name):
        raise InvalidArgument(
            f"{name!r} cannot be a hostname",
            hint="use 1-63 lowercase letters, digits and inner hyphens",
        )
    return name


def check_public_key(data: bytes) -> bytes:
    """One OpenSSH public key line (no options, no second line), newline-terminated."""
    line = data.rstrip(b"\r\n")
    if not _PUBLIC_KEY.fullmatch(line):
        shown = data[:60].decode("ascii", errors="replace")
        raise InvalidArgument(f"not a single OpenSSH public key line: {shown!r}")
    return line + b"\n"


def new_machine_id() -> str:
    """32 lowercase hex digits from os.urandom, shaped as a v4 UUID like systemd makes."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def make_identity(
    name: str, authorized_key_pub: bytes, runner: Runner, tmpdir: Path
) -> GuestIdentity:
    """A fresh identity for VM ``name``; the host key never outlives this call on disk."""
    hostname = check_hostname(name)
    authorized = check_public_key(authorized_key_pub)
    with tempfile.TemporaryDirectory(dir=tmpdir, prefix="hostkey-") as tmp:  # 0700
        key = Path(tmp) / "key"
        runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", hostname, "-f", key])
        private = key.read_bytes()
        public = key.with_name("key.pub").read_bytes()
    return GuestIdentity(hostname, new_machine_id(), private, public, authorized)


# -- injection ---------------------------------------------------------------------------


def inject_rootfs(image: Path, identity: GuestIdentity, runner: Runner) -> None:
    """Write hostname, machine-id, hosts, fstab, host key and sshd drop-in into ``image``.

    Every check (no symlinked parent such as ``/etc/ssh -> /tmp``) happens before the
    first write, so a refused image is left as it was.
    """
    editor = Ext4Editor(image, runner)
    fstab = _read_regular(editor, "/etc/fstab")
    hosts = _read_regular(editor, "/etc/hosts")
    name = identity.hostname.encode()
    editor.write_file("/etc/hostname", name + b"\n", mode=0o644)
    editor.write_file("/etc/machine-id", identity.machine_id.encode() + b"\n", mode=0o444)
    editor.write_file("/etc/hosts", merge_hosts(hosts, identity.hostname), mode=0o644)
    editor.write_file("/etc/fstab", merge_fstab(fstab), mode=0o644)
    editor.mkdir("/etc/ssh", mode=0o755)
    editor.mkdir("/etc/ssh/sshd_config.d", mode=0o755)
    for baked in BAKED_HOST_KEYS:
        editor.remove(baked)
    editor.write_file(HOST_KEY_PATH, identity.host_key_private, mode=0o600)
    editor.write_file(HOST_KEY_PATH + ".pub", identity.host_key_public, mode=0o644)
    editor.write_file(DROP_IN_PATH, SSHD_DROP_IN, mode=0o644)
    editor.apply()


def inject_workdisk(image: Path, identity: GuestIdentity, runner: Runner) -> None:
    """Work disk root (guest ``/root``) 0755 root, ``.ssh`` 0700, ``authorized_keys`` 0600."""
    editor = Ext4Editor(image, runner)
    editor.mkdir("/", mode=0o755)
    editor.mkdir("/.ssh", mode=0o700)
    editor.write_file("/.ssh/authorized_keys", identity.authorized_keys, mode=0o600)
    editor.apply()


def _read_regular(editor: Ext4Editor, path: str) -> bytes | None:
    """The file's content; None when absent or not a regular file (it gets replaced)."""
    info = editor.stat(path)
    if info is None or info.kind != "regular":
        return None
    return editor.read_file(path)


def merge_fstab(old: bytes | None) -> bytes:
    """``old`` with banger's ``/root`` line exactly once, and no other mount on ``/root``."""
    kept = [line for line in (old or b"").splitlines() if not _mounts_root(line)]
    return b"".join(line + b"\n" for line in [*kept, FSTAB_LINE])


def _mounts_root(line: bytes) -> bool:
    fields = line.split()
    return len(fields) >= 2 and not fields[0].startswith(b"#") and fields[1] == b"/root"


def merge_hosts(old: bytes | None, hostname: str) -> bytes:
    """``old`` (or a minimal hosts file) with ``127.0.1.1 <hostname>`` as the only such line."""
    lines = (old if old is not None else _DEFAULT_HOSTS).splitlines()
    kept = [line for line in lines if line.split()[:1] != [b"127.0.1.1"]]
    return b"".join(line + b"\n" for line in [*kept, b"127.0.1.1 " + hostname.encode()])


# -- the managed key ------------------------------------------------------------------------


def ensure_managed_key(path: Path, runner: Runner) -> bytes:
    """The public key of the private key at ``path``, made first if missing (0600).

    A new key's directory is made private (0700). An existing key readable by others is
    tightened to 0600: ssh refuses to use it otherwise. ``path.pub`` is (re)written when
    it is missing or holds another key.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        _generate_key(path, runner)
        st = path.stat()
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        raise PermissionDenied(f"{path} is not a key file of yours", hint="remove it or fix it")
    if stat.S_IMODE(st.st_mode) & 0o077:
        path.chmod(0o600)
    return _public_key(path, runner)


def _generate_key(path: Path, runner: Runner) -> None:
    ensure_private_dir(path.parent)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".keygen-") as tmp:
        key = Path(tmp) / "key"
        argv: list[str | Path] = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        runner.run([*argv, "-C", MANAGED_KEY_COMMENT, "-f", key])
        # Never replaces a key made meanwhile: a concurrent caller's key is as good.
        with contextlib.suppress(AlreadyExists):
            rename_noreplace(key, path)


def _public_key(path: Path, runner: Runner) -> bytes:
    pub_path = path.with_name(path.name + ".pub")
    existing = _read_public(pub_path)
    try:
        derived = check_public_key(runner.run(["ssh-keygen", "-y", "-P", "", "-f", path]).stdout)
    except CommandFailed as exc:
        if existing is None:
            raise InvalidArgument(
                f"cannot read the public key of {path}",
                details=exc.details,
                hint="banger needs a key without a passphrase, or its .pub next to it",
            ) from exc
        return existing
    if existing is not None and existing.split()[:2] == derived.split()[:2]:
        return existing  # same key; keep the comment the user gave it
    write_file_atomic(pub_path, derived, mode=0o644)
    return derived


def _read_public(pub_path: Path) -> bytes | None:
    try:
        return check_public_key(pub_path.read_bytes()[:16384])
    except (OSError, InvalidArgument):
        return None
