"""``pool_size`` and ``[[pool]]``: what loads, what is refused (naming the key), and the
targets the pool keeps, "auto" included (docs/config.md, the warm pool)."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger.config.pool_policy import AUTO_MIN_MEMORY_BYTES, resolve_pools
from banger.config.settings import Config, load_config
from banger.config.vm_defaults import HostFacts
from banger.errors import ConfigError
from banger.model import units

GIB = units.GIB
ROOMY = HostFacts(cpu_count=8, mem_total_bytes=32 * GIB)


def config_from(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    path.chmod(0o600)
    return load_config(path, env={"HOME": str(tmp_path), **(env or {})})


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config_from(tmp_path, text, env)
    return info.value


def test_auto_keeps_one_vm_of_the_default_image_on_a_host_with_room(tmp_path: Path) -> None:
    config = config_from(tmp_path, "")
    [target] = resolve_pools(config, ROOMY)
    defaults_vcpu = 2  # 8 CPUs / 4
    assert (target.image, target.size, target.vcpu) == ("debian-bookworm", 1, defaults_vcpu)
    assert target.why.startswith("auto: 8 CPUs")


@pytest.mark.parametrize(
    "host",
    [
        HostFacts(cpu_count=1, mem_total_bytes=32 * GIB),
        HostFacts(cpu_count=8, mem_total_bytes=AUTO_MIN_MEMORY_BYTES - 1),
    ],
)
def test_auto_is_off_on_a_host_without_room(tmp_path: Path, host: HostFacts) -> None:
    [target] = resolve_pools(config_from(tmp_path, ""), host)
    assert target.size == 0 and target.why.startswith("auto: off")


def test_a_number_or_the_environment_sets_the_size(tmp_path: Path) -> None:
    assert resolve_pools(config_from(tmp_path, "pool_size = 3\n"), ROOMY)[0].size == 3
    config = config_from(tmp_path, "pool_size = 3\n", {"BANGER_POOL_SIZE": "0"})
    assert resolve_pools(config, ROOMY)[0].size == 0
    config = config_from(tmp_path, "", {"BANGER_POOL_SIZE": "auto"})
    assert resolve_pools(config, ROOMY)[0].size == 1


def test_pool_entries_replace_pool_size_and_default_to_the_vm_defaults(tmp_path: Path) -> None:
    text = (
        'default_image_name = "dev"\n[vm_defaults]\nmemory_mib = 2048\n'
        '[[pool]]\nsize = 2\n[[pool]]\nimage = "alpine"\nvcpu = 1\nmemory_mib = 512\n'
        'disk_size = "2G"\n'
    )
    dev, alpine = resolve_pools(config_from(tmp_path, text), ROOMY)
    assert (dev.image, dev.size, dev.memory_mib, dev.disk_size_bytes) == ("dev", 2, 2048, 8 * GIB)
    assert (alpine.image, alpine.size, alpine.vcpu, alpine.memory_mib) == ("alpine", 1, 1, 512)
    assert alpine.disk_size_bytes == 2 * GIB and alpine.why == "[[pool]]"


@pytest.mark.parametrize(
    ("text", "env", "brief"),
    [
        ('pool_size = "lots"\n', {}, 'pool_size: must be "auto" or a whole number from 0 to 16'),
        ("pool_size = 17\n", {}, "pool_size: must be"),
        ("pool_size = -1\n", {}, "pool_size: must be"),
        ("pool_size = true\n", {}, "pool_size: must be"),
        ("pool_size = 1.5\n", {}, "pool_size: must be"),
        ("", {"BANGER_POOL_SIZE": "x"}, "BANGER_POOL_SIZE: must be"),
        ("[[pool]]\nsize = 17\n", {}, "pool[0].size: must be at most 16"),
        ("[[pool]]\nsize = 1\nvcpu = 0\n", {}, "pool[0].vcpu: must be at least 1"),
        ('[[pool]]\ndisk_size = "1M"\n', {}, "pool[0].disk_size: "),
        ('[[pool]]\nimage = "Bad Name"\n', {}, "pool[0].image: must be 1-63"),
        ("[[pool]]\nsise = 1\n", {}, 'unknown key "sise" in pool[0] (did you mean "size"?)'),
        ("[[pool]]\n[[pool]]\n", {}, "pool: image 'debian-bookworm' has two [[pool]] entries"),
    ],
)
def test_bad_pool_values_fail_at_load_naming_the_key(
    tmp_path: Path, text: str, env: dict[str, str], brief: str
) -> None:
    assert error_of(tmp_path, text, env).brief.startswith(brief)
