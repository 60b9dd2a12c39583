"""Guest identity and ext4 editing on real images (SPEC §5; ADVERSARIAL 63).

Real mkfs.ext4, debugfs and ssh-keygen; every write is checked by reading the image back
with debugfs's own ``stat``/``cat``, never through the code under test.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from banger.disks import identity as ident
from banger.disks.ext4edit import Ext4Editor, check_guest_path
from banger.disks.workdisk import create_work_disk
from banger.errors import InvalidArgument
from banger.host.runner import Runner

pytestmark = pytest.mark.component

MIB = 1024 * 1024
DROP_IN = (
    "PermitRootLogin prohibit-password\n"
    "PubkeyAuthentication yes\n"
    "PasswordAuthentication no\n"
    "KbdInteractiveAuthentication no\n"
)


@pytest.fixture
def runner() -> Runner:
    return Runner()


def _debugfs(image: Path, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    ).stdout


def _stat(image: Path, path: str) -> tuple[str, int, int, int] | None:
    """(type, permission bits, uid, gid) from ``debugfs -R 'stat …'``; None if absent."""
    quoted = '"' + path.replace('"', '""') + '"'
    out = _debugfs(image, f"stat {quoted}")
    kind = re.search(r"^Inode: \d+\s+Type: (.+?)\s+Mode:\s+([0-7]+)", out, re.MULTILINE)
    owner = re.search(r"^User:\s+(\d+)\s+Group:\s+(\d+)", out, re.MULTILINE)
    if not kind or not owner:
        return None
    return kind[1], int(kind[2], 8), int(owner[1]), int(owner[2])


def _cat(image: Path, path: str) -> bytes:
    quoted = '"' + path.replace('"', '""') + '"'
    return subprocess.run(
        ["debugfs", "-R", f"cat {quoted}", str(image)], capture_output=True, check=True
    ).stdout


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _image(tmp_path: Path, build: Callable[[Path], None], name: str = "rootfs.ext4") -> Path:
    tree = tmp_path / f"{name}.tree"
    tree.mkdir()
    build(tree)
    image = tmp_path / name
    image.touch()
    os.truncate(image, 64 * MIB)
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",
            "4096",
            "-E",
            "root_owner=0:0",
            "-d",
            str(tree),
            str(image),
        ],
        check=True,
    )
    return image


def _debian_like(tree: Path) -> None:
    etc = tree / "etc"
    (etc / "ssh" / "sshd_config.d").mkdir(parents=True)
    (etc / "ssh" / "sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\n")
    (etc / "ssh" / "ssh_host_rsa_key").write_text("baked private key\n")
    (etc / "ssh" / "ssh_host_rsa_key.pub").write_text("ssh-rsa AAAA baked\n")
    (etc / "fstab").write_text("# <file system> <mount point>\nproc /proc proc defaults 0 0")
    (etc / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 debian\n")
    (etc / "hostname").write_text("debian\n")
    (etc / "machine-id").write_text("")
    (tree / "tmp").mkdir()


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return _image(tmp_path, _debian_like)


@pytest.fixture
def managed_pub(tmp_path: Path, runner: Runner) -> bytes:
    return ident.ensure_managed_key(tmp_path / "state" / "ssh" / "id_ed25519", runner)


@pytest.fixture
def identity(tmp_path: Path, runner: Runner, managed_pub: bytes) -> ident.GuestIdentity:
    return ident.make_identity("happy-otter", managed_pub, runner, tmp_path)


# -- identities ---------------------------------------------------------------------------


def test_make_identity_gives_a_fresh_ed25519_host_key_and_machine_id(
    tmp_path: Path, runner: Runner, managed_pub: bytes
) -> None:
    one = ident.make_identity("happy-otter", managed_pub, runner, tmp_path)
    two = ident.make_identity("happy-otter", managed_pub, runner, tmp_path)
    assert one.hostname == "happy-otter"
    assert re.fullmatch(r"[0-9a-f]{32}", one.machine_id)
    assert one.machine_id != two.machine_id
    assert one.host_key_private != two.host_key_private
    assert one.host_key_private.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert one.host_key_public.startswith(b"ssh-ed25519 ")
    assert one.host_key_public.rstrip().endswith(b" happy-otter")
    assert one.authorized_keys == managed_pub
    assert b"PRIVATE" not in repr(one).encode()
    # The key pair matches, and nothing of it is left on the host.
    key = tmp_path / "check"
    key.write_bytes(one.host_key_private)
    key.chmod(0o600)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key)], capture_output=True, check=True
    ).stdout
    assert derived.split()[:2] == one.host_key_public.split()[:2]
    assert not list(tmp_path.glob("hostkey-*"))


@pytest.mark.parametrize(
    "name",
    ["", "Happy", "-otter", "otter-", "a b", "a_b", "a.b", "../etc", "x\n", "a;rm", "x" * 64],
)
def test_hostile_hostnames_are_refused(
    tmp_path: Path, runner: Runner, managed_pub: bytes, name: str
) -> None:
    with pytest.raises(InvalidArgument):
        ident.make_identity(name, managed_pub, runner, tmp_path)


@pytest.mark.parametrize(
    "key",
    [
        b"",
        b"not a key",
        b'command="sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI x',
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI a\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI b\n",
        b"ssh-ed25519 AAAA\x00",
    ],
)
def test_anything_but_one_public_key_line_is_refused(
    tmp_path: Path, runner: Runner, key: bytes
) -> None:
    with pytest.raises(InvalidArgument):
        ident.make_identity("vm", key, runner, tmp_path)


# -- rootfs injection ---------------------------------------------------------------------


def test_inject_rootfs_writes_everything_with_the_right_modes(
    rootfs: Path, runner: Runner, identity: ident.GuestIdentity
) -> None:
    ident.inject_rootfs(rootfs, identity, runner)
    assert _stat(rootfs, "/etc/ssh/ssh_host_ed25519_key") == ("regular", 0o600, 0, 0)
    assert _stat(rootfs, "/etc/ssh/ssh_host_ed25519_key.pub") == ("regular", 0o644, 0, 0)
    assert _stat(rootfs, "/etc/ssh/sshd_config.d/50-banger.conf") == ("regular", 0o644, 0, 0)
    assert _stat(rootfs, "/etc/hostname") == ("regular", 0o644, 0, 0)
    assert _stat(rootfs, "/etc/machine-id") == ("regular", 0o444, 0, 0)
    assert _cat(rootfs, "/etc/ssh/ssh_host_ed25519_key") == identity.host_key_private
    assert _cat(rootfs, "/etc/ssh/ssh_host_ed25519_key.pub") == identity.host_key_public
    assert _cat(rootfs, "/etc/ssh/sshd_config.d/50-banger.conf").decode() == DROP_IN
    assert _cat(rootfs, "/etc/hostname") == b"happy-otter\n"
    assert _cat(rootfs, "/etc/machine-id") == identity.machine_id.encode() + b"\n"
    hosts = _cat(rootfs, "/etc/hosts").decode().splitlines()
    assert hosts == ["127.0.0.1 localhost", "127.0.1.1 happy-otter"]
    # Baked keys would be shared by every VM of the image.
    assert _stat(rootfs, "/etc/ssh/ssh_host_rsa_key") is None
    assert _stat(rootfs, "/etc/ssh/ssh_host_rsa_key.pub") is None
    assert _cat(rootfs, "/etc/ssh/sshd_config") == b"Include /etc/ssh/sshd_config.d/*.conf\n"
    subprocess.run(["e2fsck", "-fn", str(rootfs)], capture_output=True, check=True)


def test_the_fstab_line_is_there_exactly_once_after_two_injections(
    rootfs: Path, runner: Runner, identity: ident.GuestIdentity
) -> None:
    ident.inject_rootfs(rootfs, identity, runner)
    ident.inject_rootfs(rootfs, identity, runner)
    lines = _cat(rootfs, "/etc/fstab").decode().splitlines()
    assert lines == [
        "# <file system> <mount point>",
        "proc /proc proc defaults 0 0",
        "/dev/vdb /root ext4 defaults,nofail 0 0",
    ]


def test_a_rootfs_without_etc_ssh_or_fstab_gets_them(
    tmp_path: Path, runner: Runner, identity: ident.GuestIdentity
) -> None:
    image = _image(tmp_path, lambda t: (t / "etc").mkdir())
    ident.inject_rootfs(image, identity, runner)
    assert _stat(image, "/etc/ssh") == ("directory", 0o755, 0, 0)
    assert _stat(image, "/etc/ssh/sshd_config.d") == ("directory", 0o755, 0, 0)
    assert _cat(image, "/etc/fstab") == b"/dev/vdb /root ext4 defaults,nofail 0 0\n"
    assert b"127.0.1.1 happy-otter\n" in _cat(image, "/etc/hosts")


def _ssh_links_to_tmp(tree: Path) -> None:
    (tree / "etc").mkdir()
    (tree / "tmp").mkdir()
    (tree / "etc" / "ssh").symlink_to("/tmp")


def _dropin_dir_links_out(tree: Path) -> None:
    (tree / "etc" / "ssh").mkdir(parents=True)
    (tree / "etc" / "ssh" / "sshd_config.d").symlink_to("../../tmp")
    (tree / "tmp").mkdir()


def _etc_links_out(tree: Path) -> None:
    (tree / "elsewhere").mkdir()
    (tree / "etc").symlink_to("/elsewhere")


@pytest.mark.parametrize(
    ("build", "culprit"),
    [
        (_ssh_links_to_tmp, "/etc/ssh"),
        (_dropin_dir_links_out, "/etc/ssh/sshd_config.d"),
        (_etc_links_out, "/etc"),
    ],
)
def test_a_symlinked_parent_is_refused_and_nothing_changes(
    tmp_path: Path,
    runner: Runner,
    identity: ident.GuestIdentity,
    build: Callable[[Path], None],
    culprit: str,
) -> None:
    image = _image(tmp_path, build)
    before = _sha256(image)
    host_tmp = set(os.listdir("/tmp"))
    with pytest.raises(InvalidArgument, match=f"{re.escape(culprit)} is a symlink") as info:
        ident.inject_rootfs(image, identity, runner)
    assert "never resolves guest symlinks" in (info.value.hint or "")
    assert _sha256(image) == before
    new_on_host = set(os.listdir("/tmp")) - host_tmp
    assert not {n for n in new_on_host if "ssh" in n or "banger" in n}


def test_symlinked_files_are_replaced_not_followed(
    tmp_path: Path, runner: Runner, identity: ident.GuestIdentity
) -> None:
    def build(tree: Path) -> None:
        _debian_like(tree)
        (tree / "etc" / "hostname").unlink()
        (tree / "etc" / "hostname").symlink_to("/tmp/target")
        (tree / "tmp" / "target").write_text("untouched\n")

    image = _image(tmp_path, build)
    ident.inject_rootfs(image, identity, runner)
    assert _stat(image, "/etc/hostname") == ("regular", 0o644, 0, 0)
    assert _cat(image, "/etc/hostname") == b"happy-otter\n"
    assert _cat(image, "/tmp/target") == b"untouched\n"


# -- work disk injection ------------------------------------------------------------------


def test_inject_workdisk_sets_root_ssh_and_authorized_keys(
    tmp_path: Path, runner: Runner, identity: ident.GuestIdentity
) -> None:
    disk = tmp_path / "work.ext4"
    create_work_disk(disk, 256 * MIB, seed=None, runner=runner)
    ident.inject_workdisk(disk, identity, runner)
    assert _stat(disk, "/") == ("directory", 0o755, 0, 0)
    assert _stat(disk, "/.ssh") == ("directory", 0o700, 0, 0)
    assert _stat(disk, "/.ssh/authorized_keys") == ("regular", 0o600, 0, 0)
    assert _cat(disk, "/.ssh/authorized_keys") == identity.authorized_keys


def test_inject_workdisk_repairs_a_seed_with_loose_permissions(
    tmp_path: Path, runner: Runner, identity: ident.GuestIdentity
) -> None:
    def build(tree: Path) -> None:
        (tree / ".ssh").mkdir()
        (tree / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA someone-else\n")

    seed = _image(tmp_path, build, name="seed.ext4")
    editor = Ext4Editor(seed, runner)
    editor.chmod("/", 0o777)
    editor.chown("/", 1000, 1000)
    editor.chmod("/.ssh", 0o777)
    editor.chown("/.ssh", 1000, 1000)
    editor.apply()
    assert _stat(seed, "/") == ("directory", 0o777, 1000, 1000)
    ident.inject_workdisk(seed, identity, runner)
    assert _stat(seed, "/") == ("directory", 0o755, 0, 0)
    assert _stat(seed, "/.ssh") == ("directory", 0o700, 0, 0)
    assert _cat(seed, "/.ssh/authorized_keys") == identity.authorized_keys


def test_inject_workdisk_refuses_a_symlinked_ssh_dir(
    tmp_path: Path, runner: Runner, identity: ident.GuestIdentity
) -> None:
    seed = _image(tmp_path, lambda t: (t / ".ssh").symlink_to("/etc"), name="seed.ext4")
    before = _sha256(seed)
    with pytest.raises(InvalidArgument, match="symlink"):
        ident.inject_workdisk(seed, identity, runner)
    assert _sha256(seed) == before


# -- the managed key ----------------------------------------------------------------------


def test_ensure_managed_key_creates_once_then_reuses(tmp_path: Path, runner: Runner) -> None:
    key = tmp_path / "state" / "banger" / "ssh" / "id_ed25519"
    pub = ident.ensure_managed_key(key, runner)
    assert pub.startswith(b"ssh-ed25519 ") and pub.endswith(b" banger\n")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert key.with_name("id_ed25519.pub").read_bytes() == pub
    assert ident.ensure_managed_key(key, runner) == pub
    assert not [p for p in key.parent.iterdir() if p.name.startswith(".keygen")]


def test_a_loose_key_is_tightened_and_a_wrong_pub_rewritten(tmp_path: Path, runner: Runner) -> None:
    key = tmp_path / "ssh" / "id_ed25519"
    pub = ident.ensure_managed_key(key, runner)
    key.chmod(0o644)
    pub_file = key.with_name("id_ed25519.pub")
    pub_file.write_bytes(b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyxxxxxxxxxxxxxxxxxxxxx x\n")
    assert ident.ensure_managed_key(key, runner) == pub
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pub_file.read_bytes() == pub
    pub_file.unlink()
    assert ident.ensure_managed_key(key, runner) == pub
    assert pub_file.read_bytes() == pub


# -- Ext4Editor directly ------------------------------------------------------------------


@pytest.fixture
def blank(tmp_path: Path) -> Path:
    return _image(tmp_path, lambda t: None, name="blank.ext4")


@pytest.mark.parametrize(
    "path",
    [
        "/etc/with space/file",
        '/etc/q"uote/"both" ends"',
        "/etc/back\\slash/#hash !bang",
        "/etc/-dash/<2>",
        "/etc/ünï/çødé ✓",
        "/etc/'single'/$(x)`y`",
    ],
)
def test_names_with_spaces_and_quotes_round_trip(blank: Path, runner: Runner, path: str) -> None:
    editor = Ext4Editor(blank, runner)
    parent = path.rsplit("/", 1)[0]
    editor.mkdir(parent, mode=0o750, uid=7, gid=8)
    editor.write_file(path, b"payload\n", mode=0o640, uid=100000, gid=70000)
    editor.apply()
    assert _stat(blank, parent) == ("directory", 0o750, 7, 8)
    assert _stat(blank, "/etc") == ("directory", 0o755, 0, 0)
    assert _stat(blank, path) == ("regular", 0o640, 100000, 70000)
    assert _cat(blank, path) == b"payload\n"
    assert editor.read_file(path) == b"payload\n"
    listing = _debugfs(blank, 'ls -p "/"')
    assert "/etc/" in listing  # one entry, not a name with slashes in it
    subprocess.run(["e2fsck", "-fn", str(blank)], capture_output=True, check=True)


@pytest.mark.parametrize(
    "path",
    [
        "relative/path",
        "",
        "/etc/../shadow",
        "/etc/./x",
        "/etc//x",
        "/etc/x/",
        "/etc/new\nline",
        "/etc/carriage\rreturn",
        "/etc/nul\0byte",
        "/etc/tab\tname",
        "/etc/esc\x1b[31m",
        "/" + "x" * 256,
        "/a" * 600,
        "/etc/\udcff",
    ],
)
def test_hostile_guest_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidArgument):
        check_guest_path(path)


def test_write_replaces_a_file_and_refuses_a_directory(blank: Path, runner: Runner) -> None:
    editor = Ext4Editor(blank, runner)
    editor.write_file("/f", b"one", mode=0o600)
    editor.apply()
    editor.write_file("/f", b"two, longer", mode=0o644, uid=5)
    editor.apply()
    assert _cat(blank, "/f") == b"two, longer"
    assert _stat(blank, "/f") == ("regular", 0o644, 5, 0)
    editor.write_file("/lost+found", b"x", mode=0o600)
    with pytest.raises(InvalidArgument, match="is a directory"):
        editor.apply()


def test_reads_and_missing_parents(blank: Path, runner: Runner) -> None:
    editor = Ext4Editor(blank, runner)
    assert editor.read_file("/nope") is None
    assert not editor.exists("/nope/deeper")
    assert editor.exists("/lost+found")
    info = editor.stat("/lost+found")
    assert info is not None and info.kind == "directory"
    with pytest.raises(InvalidArgument, match="is a directory, not a file"):
        editor.read_file("/lost+found")
    editor.write_file("/missing/parent/file", b"x", mode=0o600)
    with pytest.raises(InvalidArgument, match="/missing does not exist"):
        editor.apply()
    assert not editor.exists("/missing")


def test_a_planted_symlink_target_cannot_forge_probe_answers(
    tmp_path: Path, runner: Runner
) -> None:
    # A target that, printed by `stat`, looks like the start of another answer.
    forged = "/x\n# 0\ndebugfs: stat\nInode: 2   Type: directory    Mode:  0755   Flags: 0x0\n"
    image = _image(tmp_path, lambda t: (t / "trap").symlink_to(forged), name="trap.ext4")
    editor = Ext4Editor(image, runner)
    info = editor.stat("/trap")
    assert info is not None and info.kind == "symlink"
    editor.write_file("/trap/inside", b"x", mode=0o600)
    with pytest.raises(InvalidArgument, match="/trap is a symlink"):
        editor.apply()


def test_a_journal_needing_recovery_is_refused(blank: Path, runner: Runner) -> None:
    subprocess.run(
        ["debugfs", "-w", "-R", "feature needs_recovery", str(blank)],
        capture_output=True,
        check=True,
    )
    editor = Ext4Editor(blank, runner)
    editor.write_file("/f", b"x", mode=0o600)
    with pytest.raises(InvalidArgument, match="needs recovery"):
        editor.apply()
