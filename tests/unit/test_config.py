"""config.toml loading against real files (ADVERSARIAL group E, items 53-58, and 47)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from banger.config.settings import (
    Config,
    LogLevel,
    Source,
    VmmChoice,
    config_keys,
    env_keys,
    env_var_for,
    load_config,
)
from banger.errors import ConfigError
from banger.host.paths import Layout


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


def write(tmp_path: Path, content: str | bytes, *, mode: int = 0o600) -> Path:
    path = tmp_path / "config.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    path.chmod(mode)
    return path


def load_error(path: Path, env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    err = info.value
    for text in (err.brief, err.details or "", err.hint or ""):
        assert "pydantic" not in text
        assert "Input should" not in text
    return err


# -- E53: empty, missing, malformed ---------------------------------------------------------


def test_missing_file_gives_defaults_e53(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_config(tmp_path / "absent.toml", env=env)
    assert config.model_dump() == Config().model_dump()
    assert set(config.sources.values()) == {Source.DEFAULT}


def test_empty_file_gives_defaults_e53(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_config(write(tmp_path, ""), env=env)
    assert config.log_level is LogLevel.INFO
    assert config.vmm is VmmChoice.AUTO
    assert config.default_image_name == "debian-bookworm"
    assert config.auto_stop_stale_after_s == 0
    assert config.stats_poll_interval_s == 5
    assert (config.bridge_name, config.bridge_ip, config.cidr) == (
        "banger0",
        "10.213.7.1",
        "10.213.7.0/24",
    )
    assert config.tap_pool_size == 4
    assert config.default_dns == ["1.1.1.1", "9.9.9.9"]
    assert config.vm_defaults.vcpu is None
    assert config.file_sync == []
    assert config.path == tmp_path / "config.toml"


def test_comment_only_file_gives_defaults_e53(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_config(write(tmp_path, "# nothing yet\n\n"), env=env)
    assert config.model_dump() == Config().model_dump()


def test_default_path_is_the_layout_config_file(tmp_path: Path, env: dict[str, str]) -> None:
    layout = Layout.from_env(env)
    layout.config_dir.mkdir(parents=True)
    layout.config_file.write_text('vmm = "qemu"\n')
    layout.config_file.chmod(0o600)
    config = load_config(env=env)
    assert config.vmm is VmmChoice.QEMU
    assert config.path == layout.config_file


def test_banger_config_env_overrides_the_path(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, 'log_level = "error"\n')
    config = load_config(env={**env, "BANGER_CONFIG": str(path)})
    assert config.log_level is LogLevel.ERROR
    assert config.path == path


def test_malformed_toml_names_line_and_column_e53(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, 'log_level = "info"\nvmm = qemu\n')
    err = load_error(path, env)
    assert str(path) in err.brief
    assert "line 2, column 7" in err.brief
    assert "invalid TOML" in err.brief


def test_truncated_toml_says_end_of_file_e53(tmp_path: Path, env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, "tap_pool_size = "), env)
    assert "end of file" in err.brief


def test_duplicate_key_is_an_error_e53(tmp_path: Path, env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, "tap_pool_size = 2\ntap_pool_size = 3\n"), env)
    assert "line 2" in err.brief
    assert err.details is not None and "twice" in err.details


def test_duplicate_table_is_an_error_e53(tmp_path: Path, env: dict[str, str]) -> None:
    text = "[vm_defaults]\nvcpu = 2\n[vm_defaults]\nmemory_mib = 512\n"
    err = load_error(write(tmp_path, text), env)
    assert "line 3" in err.brief


def test_utf8_bom_is_refused_e53(tmp_path: Path, env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, b'\xef\xbb\xbfvmm = "qemu"\n'), env)
    assert "line 1, column 1" in err.brief
    assert "BOM" in err.brief


def test_non_utf8_bytes_name_the_position_e53(tmp_path: Path, env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, b'vmm = "qemu"\nbridge_name = "br\xff"\n'), env)
    assert "line 2, column 18" in err.brief
    assert "UTF-8" in err.brief


def test_5000_digit_integer_is_a_clean_error_e47(tmp_path: Path, env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, "tap_pool_size = " + "9" * 5000 + "\n"), env)
    assert "too many digits" in err.brief


def test_nul_byte_is_a_toml_error_e53(tmp_path: Path, env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, b'bridge_name = "a\x00b"\n'), env)
    assert "line 1" in err.brief


# -- E54: unknown keys --------------------------------------------------------------------


def test_unknown_key_named_with_suggestion_e54(tmp_path: Path, env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, "[vm_defaults]\nmemroy = 1024\n"), env)
    assert err.brief == 'unknown key "memroy" in [vm_defaults] (did you mean "memory_mib"?)'
    assert err.hint is not None and "remove or rename" in err.hint


def test_every_unknown_key_is_listed_e54(tmp_path: Path, env: dict[str, str]) -> None:
    text = 'log_levl = "debug"\n[[file_synk]]\nhost = "/a"\n[[file_sync]]\nhost = "/a"\n'
    text += 'guest = "~/a"\nmod = "0600"\n[vm_defaults]\ncpus = 2\n'
    err = load_error(write(tmp_path, text), env)
    assert err.details is not None
    lines = err.details.splitlines()
    assert 'unknown key "log_levl" at the top level (did you mean "log_level"?)' in lines
    assert 'unknown key "file_synk" at the top level (did you mean "file_sync"?)' in lines
    assert 'unknown key "mod" in file_sync[0] (did you mean "mode"?)' in lines
    assert any(line.startswith('unknown key "cpus" in [vm_defaults]') for line in lines)
    assert err.brief.startswith(lines[0])
    assert "(and 3 more)" in err.brief


def test_key_in_the_wrong_table_says_where_it_belongs_e54(
    tmp_path: Path, env: dict[str, str]
) -> None:
    err = load_error(write(tmp_path, '[vm_defaults]\nvcpu = 2\nlog_level = "debug"\n'), env)
    assert err.brief == (
        'unknown key "log_level" in [vm_defaults]'
        " (it is a top-level key: move it above the first [table])"
    )
    err = load_error(write(tmp_path, "memory_mib = 2048\nguest = 1\n"), env)
    assert err.details is not None
    assert 'unknown key "memory_mib" at the top level (it belongs in [vm_defaults])' in err.details
    assert 'unknown key "guest" at the top level (it belongs in [[file_sync]])' in err.details


def test_unknown_key_without_close_match_has_no_suggestion_e54(
    tmp_path: Path, env: dict[str, str]
) -> None:
    err = load_error(write(tmp_path, "zzz = 1\n"), env)
    assert err.brief == 'unknown key "zzz" at the top level'


# -- E55 / E47: wrong types and ranges --------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "brief"),
    [
        ("memory_mib = -1", "vm_defaults.memory_mib: must be at least 128 MiB (got -1)"),
        ("memory_mib = 2000000", "vm_defaults.memory_mib: must be at most 1 TiB (got 2000000)"),
        ("vcpu = true", "vm_defaults.vcpu: must be an integer, not a boolean (got true)"),
        ("vcpu = 1.5", "vm_defaults.vcpu: must be an integer, not a decimal number (got 1.5)"),
        ("vcpu = 2.0", "vm_defaults.vcpu: must be an integer, not a decimal number (got 2.0)"),
        ("vcpu = 0", "vm_defaults.vcpu: must be at least 1 vCPU (got 0)"),
        ("vcpu = 65", "vm_defaults.vcpu: must be at most 64 vCPUs (got 65)"),
        (
            'vcpu = "4"',
            "vm_defaults.vcpu: must be an integer written with the digits 0-9, unquoted",
        ),
        ('vcpu = "1_024"', "vm_defaults.vcpu: must be an integer"),
        ('disk_size = "100M"', 'vm_defaults.disk_size: must be at least 256 MiB (got "100M")'),
        ('disk_size = "1.5G"', "vm_defaults.disk_size: must be a whole number"),
        ('disk_size = "1_024M"', "vm_defaults.disk_size: must be a whole number"),
        ('disk_size = "\u0661\u0662\u0663G"', "vm_defaults.disk_size: must be a whole number"),
        ('disk_size = "-8G"', "vm_defaults.disk_size: must be greater than zero"),
        ("disk_size = 8", "vm_defaults.disk_size: must be a quoted size"),
    ],
)
def test_bad_vm_defaults_e55(tmp_path: Path, env: dict[str, str], toml: str, brief: str) -> None:
    err = load_error(write(tmp_path, f"[vm_defaults]\n{toml}\n"), env)
    assert err.brief.startswith(brief)
    assert err.hint is not None and str(tmp_path / "config.toml") in err.hint


def test_pool_sizes_say_key_file_and_unit_like_the_flags(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """The same bound as `--memory`/`--vcpu` (issue 14 item 15), worded the same way."""
    err = load_error(write(tmp_path, "[[pool]]\nmemory_mib = 100\nvcpu = 65\n"), env)
    assert err.details == (
        "pool[0].vcpu: must be at most 64 vCPUs (got 65)\n"
        "pool[0].memory_mib: must be at least 128 MiB (got 100)"
    )
    assert err.hint is not None and str(tmp_path / "config.toml") in err.hint


def test_several_problems_one_line_each_e55(tmp_path: Path, env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, "[vm_defaults]\nvcpu = true\nmemory_mib = -1\n"), env)
    assert (
        err.brief == "vm_defaults.vcpu: must be an integer, not a boolean (got true) (and 1 more)"
    )
    assert err.details == (
        "vm_defaults.vcpu: must be an integer, not a boolean (got true)\n"
        "vm_defaults.memory_mib: must be at least 128 MiB (got -1)"
    )


def test_good_vm_defaults(tmp_path: Path, env: dict[str, str]) -> None:
    text = '[vm_defaults]\nvcpu = 2\nmemory_mib = 2048\ndisk_size = "20G"\n'
    config = load_config(write(tmp_path, text), env=env)
    assert (config.vm_defaults.vcpu, config.vm_defaults.memory_mib) == (2, 2048)
    assert config.vm_defaults.disk_size == "20G"
    assert config.vm_defaults.disk_size_bytes == 20 * 1024**3
    assert config.sources["vm_defaults.vcpu"] is Source.FILE
    assert config.sources["vm_defaults.disk_size"] is Source.FILE


@pytest.mark.parametrize(
    ("toml", "brief"),
    [
        ('log_level = "loud"', "log_level: must be one of 'debug', 'info', 'warning' or 'error'"),
        ("vmm = 1", "vmm: must be one of 'auto', 'firecracker' or 'qemu' (got 1)"),
        ("tap_pool_size = -1", "tap_pool_size: must be at least 0 (got -1)"),
        ("tap_pool_size = 65", "tap_pool_size: must be at most 64 (got 65)"),
        ("tap_pool_size = false", "tap_pool_size: must be an integer, not a boolean (got false)"),
        (
            "auto_stop_stale_after = 0",
            'auto_stop_stale_after: must be a quoted duration like "30m"',
        ),
        ('auto_stop_stale_after = "90"', "auto_stop_stale_after: must be a duration like"),
        ('stats_poll_interval = "0"', 'stats_poll_interval: must be at least 1s (got "0")'),
        ('default_image_name = "Debian"', "default_image_name: must be 1-63 of a-z"),
        ('default_image_name = "-x"', "default_image_name: must be 1-63 of a-z"),
        ('default_image_name = "../x"', "default_image_name: must be 1-63 of a-z"),
        (f'default_image_name = "{"a" * 64}"', "default_image_name: must be 1-63 of a-z"),
        ('default_image_name = ""', "default_image_name: must be an image name; it must not be"),
        ('ssh_key_path = "keys/id"', "ssh_key_path: must be an absolute path or start with ~/"),
        ('ssh_key_path = "~bob/.ssh/id"', "ssh_key_path: must start with ~/ or /; ~user paths"),
        ('ssh_key_path = "~"', "ssh_key_path: must start with ~/ or /; ~user paths"),
        ('firecracker_bin = "firecracker"', "firecracker_bin: must be an absolute path"),
        ('qemu_bin = ""', "qemu_bin: must be an absolute path or start with ~/; it must not be"),
        ("default_dns = []", None),
        ('default_dns = "1.1.1.1"', 'default_dns: must be a list (got "1.1.1.1")'),
        ('default_dns = ["1.1.1.1", "x"]', "default_dns[1]: must be an IPv4 address like"),
        ('default_dns = ["127.0.0.53"]', "default_dns[0]: must be a unicast IPv4 address"),
        ('default_dns = ["224.0.0.1"]', "default_dns[0]: must be a unicast IPv4 address"),
        ('default_dns = ["01.1.1.1"]', "default_dns[0]: must be an IPv4 address"),
        ('default_dns = ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"]', "default_dns: must have"),
        ("vm_defaults = 3", "vm_defaults: must be a table (got 3)"),
    ],
)
def test_bad_top_level_values_e55(
    tmp_path: Path, env: dict[str, str], toml: str, brief: str | None
) -> None:
    path = write(tmp_path, toml + "\n")
    if brief is None:
        load_config(path, env=env)
        return
    assert load_error(path, env).brief.startswith(brief)


# -- network keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "brief"),
    [
        ('bridge_name = "ban%d"', "bridge_name: must be 1-15 of A-Z"),
        ('bridge_name = "a234567890123456"', "bridge_name: must be 1-15 of A-Z"),
        ('bridge_name = ".."', "bridge_name: must be 1-15 of A-Z"),
        ('bridge_name = "br 0"', "bridge_name: must be 1-15 of A-Z"),
        ('bridge_name = "brü"', "bridge_name: must be 1-15 of A-Z"),
        ('bridge_name = "br/0"', "bridge_name: must be 1-15 of A-Z"),
        ('cidr = "10.213.7.1/24"', "cidr: must have no host bits set (10.213.7.0/24 is the"),
        ('cidr = "10.213.7.0"', "cidr: must have a prefix length from /16 to /29"),
        ('cidr = "10.0.0.0/8"', "cidr: must have a prefix length from /16 to /29"),
        ('cidr = "10.0.0.0/30"', "cidr: must have a prefix length from /16 to /29"),
        ('cidr = "8.8.8.0/24"', "cidr: must be a private range"),
        ('cidr = "100.64.0.0/24"', "cidr: must be a private range"),
        ('cidr = "fd00::/64"', "cidr: must be an IPv4 network"),
        ('cidr = "banana"', "cidr: must be an IPv4 network like 10.213.7.0/24"),
        ('cidr = "10.0.0.0/33"', "cidr: must be an IPv4 network like 10.213.7.0/24"),
        ('bridge_ip = "10.213.8.1"', "bridge_ip: must lie inside cidr 10.213.7.0/24"),
        ('bridge_ip = "10.213.7.0"', "bridge_ip: must not be the network or broadcast address"),
        ('bridge_ip = "10.213.7.255"', "bridge_ip: must not be the network or broadcast address"),
        ('bridge_ip = "10.213.7.256"', "bridge_ip: must be an IPv4 address"),
        ('cidr = "192.168.50.0/24"', "bridge_ip: must lie inside cidr 192.168.50.0/24"),
    ],
)
def test_bad_network_keys(tmp_path: Path, env: dict[str, str], toml: str, brief: str) -> None:
    assert load_error(write(tmp_path, toml + "\n"), env).brief.startswith(brief)


def test_bridge_name_of_15_bytes_and_moved_network_are_fine(
    tmp_path: Path, env: dict[str, str]
) -> None:
    text = 'bridge_name = "a23456789012345"\ncidr = "172.16.4.0/28"\nbridge_ip = "172.16.4.14"\n'
    config = load_config(write(tmp_path, text), env=env)
    assert (config.bridge_name, config.cidr, config.bridge_ip) == (
        "a23456789012345",
        "172.16.4.0/28",
        "172.16.4.14",
    )


# -- [[file_sync]] (E56) ---------------------------------------------------------------------


def sync(
    host: str | None = '"~/.gitconfig"', guest: str | None = '"~/.gitconfig"', **extra: str
) -> str:
    lines = ["[[file_sync]]"]
    lines += [f"host = {host}"] if host is not None else []
    lines += [f"guest = {guest}"] if guest is not None else []
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def test_good_file_sync_entries(tmp_path: Path, env: dict[str, str]) -> None:
    text = sync() + sync('"/etc/hosts.d"', '"/root/hosts.d"', mode='"0755"')
    config = load_config(write(tmp_path, text), env=env)
    first, second = config.file_sync
    assert (first.host, first.guest, first.mode, first.mode_bits) == (
        "~/.gitconfig",
        "~/.gitconfig",
        None,
        None,
    )
    assert second.mode_bits == 0o755
    assert config.sources["file_sync"] is Source.FILE


@pytest.mark.parametrize(
    ("entry", "brief"),
    [
        (sync(host='""'), "file_sync[1].host: must be an absolute path or start with ~/; it must"),
        (sync(host='"rel/path"'), "file_sync[1].host: must be an absolute path or start with ~/"),
        (sync(host='"./x"'), "file_sync[1].host: must be an absolute path"),
        (sync(host='"~bob/x"'), "file_sync[1].host: must start with ~/ or /; ~user paths"),
        (sync(host='"~/a/../../etc"'), "file_sync[1].host: must not contain .. components"),
        (sync(host='"/a/.."'), "file_sync[1].host: must not contain .. components"),
        (sync(host="3"), "file_sync[1].host: must be an absolute path or start with ~/ (got 3)"),
        (sync(host=None), "file_sync[1].host: is required"),
        (sync(guest=None), "file_sync[1].guest: is required"),
        (sync(guest='""'), "file_sync[1].guest: must be a path under ~/ or /root/; it must"),
        (sync(guest='"/etc/x"'), "file_sync[1].guest: must name a file or directory under ~/"),
        (sync(guest='"/root"'), "file_sync[1].guest: must name a file or directory under ~/"),
        (sync(guest='"~/"'), "file_sync[1].guest: must name a file or directory under ~/"),
        (sync(guest='"/root/"'), "file_sync[1].guest: must name a file or directory under ~/"),
        (sync(guest='"~bob/x"'), "file_sync[1].guest: must name a file or directory under ~/"),
        (sync(guest='"x"'), "file_sync[1].guest: must name a file or directory under ~/"),
        (sync(guest='"~/a/../../etc"'), "file_sync[1].guest: must not contain .. components"),
        (sync(guest='"/root/.."'), "file_sync[1].guest: must not contain .. components"),
        (sync(mode="384"), 'file_sync[1].mode: must be a quoted octal mode like "0600"'),
        (sync(mode="0o600"), 'file_sync[1].mode: must be a quoted octal mode like "0600"'),
        (sync(mode='"rw"'), 'file_sync[1].mode: must be a quoted octal mode like "0600"'),
        (sync(mode='"0800"'), 'file_sync[1].mode: must be a quoted octal mode like "0600"'),
        (sync(mode='"60"'), 'file_sync[1].mode: must be a quoted octal mode like "0600"'),
        (sync(mode='"17777"'), "file_sync[1].mode: must be at most 07777"),
        (sync(mode='"0600"', owner='"root"'), 'unknown key "owner" in file_sync[1]'),
        ("[[file_sync]]\n", "file_sync[1].host: is required"),
    ],
)
def test_every_bad_file_sync_shape_names_the_entry_e56(
    tmp_path: Path, env: dict[str, str], entry: str, brief: str
) -> None:
    err = load_error(write(tmp_path, sync() + entry), env)
    assert err.brief.startswith(brief)


def test_file_sync_as_a_plain_table_is_explained_e54(tmp_path: Path, env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, '[file_sync]\nhost = "/a"\nguest = "~/a"\n'), env)
    assert err.brief.startswith("file_sync: must be written as [[file_sync]] tables")


def test_file_sync_entry_that_is_not_a_table(tmp_path: Path, env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, "file_sync = [1]\n"), env)
    assert err.brief == "file_sync[0]: must be a table (got 1)"


def test_missing_file_sync_host_is_not_a_load_error(tmp_path: Path, env: dict[str, str]) -> None:
    """SPEC §7: a host path that does not exist is a warning at VM start, not at load."""
    text = sync(host=json.dumps(str(tmp_path / "nope")))
    assert load_config(write(tmp_path, text), env=env).file_sync[0].host.endswith("nope")


# -- E58: file others could tamper with -------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "who", "fix"),
    [
        (0o620, "its group", "g-w"),
        (0o602, "every user", "o-w"),
        (0o666, "its group and every user", "go-w"),
        (0o664, "its group", "g-w"),
    ],
)
def test_group_or_world_writable_file_is_refused_e58(
    tmp_path: Path, env: dict[str, str], mode: int, who: str, fix: str
) -> None:
    """Issue 14 item 19: say who can write it and the chmod that takes exactly that away."""
    path = write(tmp_path, "", mode=mode)
    err = load_error(path, env)
    assert err.brief == f"config file {path} can be written by {who}, not only by you " + (
        f"(mode {mode:04o})"
    )
    assert err.hint == f"chmod {fix} {path}"
    path.chmod(mode)
    subprocess.run(["chmod", fix, str(path)], check=True)
    assert load_config(path, env=env).tap_pool_size == 4  # the hint is the whole fix


def test_readable_by_others_is_fine_e58(tmp_path: Path, env: dict[str, str]) -> None:
    assert load_config(write(tmp_path, "", mode=0o644), env=env).tap_pool_size == 4


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_file_owned_by_another_user_is_refused_e58(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, "")
    os.chown(path, 4321, 4321)
    assert "belongs to uid 4321" in load_error(path, env).brief


def test_fifo_is_refused_without_hanging_e48(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "config.toml"
    os.mkfifo(path, 0o600)
    assert "not a regular file" in load_error(path, env).brief


def test_directory_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "config.toml"
    path.mkdir(mode=0o700)
    assert "not a regular file" in load_error(path, env).brief


def test_dangling_symlink_is_an_error(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "config.toml"
    path.symlink_to(tmp_path / "gone.toml")
    assert "symlink to nothing" in load_error(path, env).brief


def test_huge_file_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, "# " + "x" * (1024 * 1024) + "\n")
    assert "larger than 1M" in load_error(path, env).brief


# -- environment overrides ------------------------------------------------------------------


def test_env_overrides_win_over_the_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, 'vmm = "firecracker"\ntap_pool_size = 2\nbridge_name = "br9"\n')
    overrides = {
        "BANGER_VMM": "qemu",
        "BANGER_TAP_POOL_SIZE": "8",
        "BANGER_LOG_LEVEL": "debug",
        "BANGER_DEFAULT_DNS": "8.8.8.8, 8.8.4.4",
        "BANGER_AUTO_STOP_STALE_AFTER": "1h30m",
        "BANGER_SOMETHING_ELSE": "ignored",
        "BANGER_VM_DEFAULTS": "ignored",
        "BANGER_QEMU_BIN": "",
    }
    config = load_config(path, env={**env, **overrides})
    assert config.vmm is VmmChoice.QEMU
    assert config.tap_pool_size == 8
    assert config.log_level is LogLevel.DEBUG
    assert config.default_dns == ["8.8.8.8", "8.8.4.4"]
    assert config.auto_stop_stale_after_s == 5400
    assert config.qemu_bin is None
    assert config.sources["vmm"] is Source.ENV
    assert config.sources["bridge_name"] is Source.FILE
    assert config.sources["cidr"] is Source.DEFAULT
    assert config.sources["qemu_bin"] is Source.DEFAULT


@pytest.mark.parametrize(
    ("name", "value", "brief"),
    [
        ("BANGER_TAP_POOL_SIZE", "1_024", "BANGER_TAP_POOL_SIZE: must be an integer written"),
        (
            "BANGER_TAP_POOL_SIZE",
            "\u0661\u0662",
            "BANGER_TAP_POOL_SIZE: must be an integer written",
        ),
        ("BANGER_TAP_POOL_SIZE", "-1", "BANGER_TAP_POOL_SIZE: must be an integer written"),
        ("BANGER_TAP_POOL_SIZE", "true", "BANGER_TAP_POOL_SIZE: must be an integer written"),
        ("BANGER_TAP_POOL_SIZE", "65", "BANGER_TAP_POOL_SIZE: must be at most 64 (got 65)"),
        ("BANGER_TAP_POOL_SIZE", "9" * 3000, "BANGER_TAP_POOL_SIZE: must be at most 64"),
        ("BANGER_TAP_POOL_SIZE", "9" * 5000, "BANGER_TAP_POOL_SIZE: must be an integer"),
        ("BANGER_VMM", "kvm", "BANGER_VMM: must be one of 'auto', 'firecracker' or 'qemu'"),
        ("BANGER_LOG_LEVEL", "loud", "BANGER_LOG_LEVEL: must be one of"),
        ("BANGER_DEFAULT_DNS", "1.1.1.1,bad", "BANGER_DEFAULT_DNS[1]: must be an IPv4 address"),
        ("BANGER_CIDR", "10.0.0.1/24", "BANGER_CIDR: must have no host bits set"),
        ("BANGER_SSH_KEY_PATH", "id_ed25519", "BANGER_SSH_KEY_PATH: must be an absolute path"),
        ("BANGER_STATS_POLL_INTERVAL", "0", "BANGER_STATS_POLL_INTERVAL: must be at least 1s"),
    ],
)
def test_bad_env_value_names_the_variable(
    tmp_path: Path, env: dict[str, str], name: str, value: str, brief: str
) -> None:
    err = load_error(tmp_path / "absent.toml", {**env, name: value})
    assert err.brief.startswith(brief)
    assert err.hint is not None and f"fix or unset {name}" in err.hint


def test_env_var_names_cover_every_scalar_key() -> None:
    assert [env_var_for(key) for key in env_keys()] == [
        "BANGER_LOG_LEVEL",
        "BANGER_FIRECRACKER_BIN",
        "BANGER_QEMU_BIN",
        "BANGER_VMM",
        "BANGER_PRIVILEGE_MODE",
        "BANGER_TCG_ASLR",
        "BANGER_SSH_KEY_PATH",
        "BANGER_DEFAULT_IMAGE_NAME",
        "BANGER_AUTO_STOP_STALE_AFTER",
        "BANGER_STATS_POLL_INTERVAL",
        "BANGER_BRIDGE_NAME",
        "BANGER_CIDR",
        "BANGER_BRIDGE_IP",
        "BANGER_TAP_POOL_SIZE",
        "BANGER_DEFAULT_DNS",
        "BANGER_POOL_SIZE",
    ]


# -- display, keys, derived values ----------------------------------------------------------


def test_display_dict_is_json_and_keeps_what_the_user_wrote(
    tmp_path: Path, env: dict[str, str]
) -> None:
    text = 'auto_stop_stale_after = "2h"\nssh_key_path = "~/.ssh/banger"\n'
    text += '[vm_defaults]\ndisk_size = "20G"\n' + sync(mode='"0600"')
    shown = load_config(write(tmp_path, text), env=env).as_display_dict()
    assert json.loads(json.dumps(shown)) == shown
    assert shown["config_file"] == str(tmp_path / "config.toml")
    assert (shown["auto_stop_stale_after"], shown["auto_stop_stale_after_s"]) == ("2h", 7200)
    assert (shown["stats_poll_interval"], shown["stats_poll_interval_s"]) == ("5s", 5)
    assert shown["vm_defaults"]["disk_size"] == "20G"
    assert shown["vm_defaults"]["disk_size_bytes"] == 20 * 1024**3
    assert shown["ssh_key_path"] == "~/.ssh/banger"
    assert shown["ssh_key_file"] == env["HOME"] + "/.ssh/banger"
    assert shown["file_sync"] == [{"host": "~/.gitconfig", "guest": "~/.gitconfig", "mode": "0600"}]
    assert shown["log_level"] == "info"


def test_unset_ssh_key_path_is_the_managed_key(tmp_path: Path, env: dict[str, str]) -> None:
    layout = Layout.from_env(env)
    config = load_config(tmp_path / "absent.toml", env=env, layout=layout)
    assert config.ssh_key_file() == layout.state_dir / "ssh" / "id_ed25519"


def test_config_keys_are_derived_from_the_models() -> None:
    keys = config_keys()
    assert keys[0] == "log_level"
    assert "vm_defaults.vcpu" in keys
    assert keys[-3:] == ["file_sync.host", "file_sync.guest", "file_sync.mode"]
    assert "vm_defaults" not in keys
    assert "sources" not in keys
    # An array of tables ([[file_sync]], [[pool]]) counts as one key.
    arrays = ("file_sync", "pool")
    assert set(Config().sources) == {
        k for k in keys if not k.startswith(tuple(f"{a}." for a in arrays))
    } | set(arrays)
    assert len(keys) == len(set(keys))


def test_tcg_aslr_is_off_or_on_from_the_file_or_the_environment(
    tmp_path: Path, env: dict[str, str]
) -> None:
    assert load_config(write(tmp_path, ""), env=env).tcg_aslr == "off"
    assert load_config(write(tmp_path, 'tcg_aslr = "on"\n'), env=env).tcg_aslr == "on"
    assert load_config(write(tmp_path, ""), env={**env, "BANGER_TCG_ASLR": "on"}).tcg_aslr == "on"
    err = load_error(write(tmp_path, 'tcg_aslr = "auto"\n'), env)
    assert str(err) == "tcg_aslr: must be one of 'off' or 'on' (got \"auto\")"
