"""Loading and validating ``config.toml`` plus ``BANGER_*`` overrides (SPEC §9).

Owns: the pydantic models of every config key with its default and rule, reading the file
(refusing tamperable, non-UTF-8 or malformed ones), environment overrides and provenance of
each value. The value rules themselves are ``banger.config.rules``; the wording of a
ValidationError as one ConfigError is ``banger.config.messages``.

Must not: touch the network, the bridge or the VMM, check that ``file_sync`` host paths
exist (a missing one is a warning at VM start, SPEC §7), or let pydantic's own error text
reach the user.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
import typing
from collections.abc import Mapping
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from banger.config import rules
from banger.config.messages import table_model, translate
from banger.errors import ConfigError
from banger.host.paths import Layout
from banger.model import limits, units

ENV_PREFIX = "BANGER_"
CONFIG_PATH_ENV = "BANGER_CONFIG"
# /dev/zero or a huge file must not be read whole; real configs are a few KiB.
MAX_CONFIG_BYTES = 1024 * 1024

_TOML_POS_RE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class VmmChoice(StrEnum):
    AUTO = "auto"
    FIRECRACKER = "firecracker"
    QEMU = "qemu"


class TcgAslrChoice(StrEnum):
    """``tcg_aslr``: whether a guest under software emulation (TCG) randomizes its address
    space; off by default, because there it costs every new process its translated code
    (docs/explanation/emulated-guests.md). Guests under KVM always do."""

    OFF = "off"
    ON = "on"


class PrivilegeModeChoice(StrEnum):
    """``privilege_mode``: how a daemon that is not root gets its network (SPEC §9)."""

    #: root when root; else the helper when it answers; else rootless.
    AUTO = "auto"
    #: Never rootless: without root or an answering helper, creating a VM fails (mode none).
    HELPER = "helper"
    #: Always user-mode networking, even as root or with a helper.
    ROOTLESS = "rootless"


class Source(StrEnum):
    """Where a resolved config value came from, for ``banger config show``."""

    ENV = "env"
    FILE = "file"
    DEFAULT = "default"


_rule = BeforeValidator
UserPath = Annotated[str, _rule(rules.user_path)]
StrictInt = Annotated[int, Strict()]


# -- models -------------------------------------------------------------------------------


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class VmDefaultsConfig(_Table):
    """``[vm_defaults]``: each key unset means "let banger choose" (banger.config.vm_defaults)."""

    vcpu: Annotated[StrictInt, rules.bounded(limits.VCPU)] | None = None
    memory_mib: Annotated[StrictInt, rules.bounded(limits.MEMORY_MIB)] | None = None
    disk_size: (
        Annotated[str, rules.as_written(units.parse_size, minimum_bytes=limits.DISK_SIZE_MIN_BYTES)]
        | None
    ) = None

    @property
    def disk_size_bytes(self) -> int | None:
        return None if self.disk_size is None else units.parse_size(self.disk_size)


class PoolEntry(VmDefaultsConfig):
    """One ``[[pool]]`` entry: ready VMs of one image, and their size (unset: the VM
    defaults). Any entry replaces the ``pool_size`` rule for the default image."""

    image: Annotated[str, _rule(rules.image_name)] | None = None
    size: Annotated[StrictInt, Field(ge=0, le=limits.POOL_SIZE_MAX)] = 1


class FileSyncEntry(_Table):
    """One ``[[file_sync]]`` entry: a host file or directory copied into the guest."""

    host: Annotated[str, _rule(rules.sync_host)]
    guest: Annotated[str, _rule(rules.sync_guest)]
    mode: Annotated[str, _rule(rules.mode)] | None = None

    @property
    def mode_bits(self) -> int | None:
        return None if self.mode is None else int(self.mode, 8)


class Config(_Table):
    """The resolved configuration. Field order is the order of ``config_keys()``."""

    log_level: LogLevel = LogLevel.INFO
    firecracker_bin: UserPath | None = None
    qemu_bin: UserPath | None = None
    vmm: VmmChoice = VmmChoice.AUTO
    privilege_mode: PrivilegeModeChoice = PrivilegeModeChoice.AUTO
    tcg_aslr: TcgAslrChoice = TcgAslrChoice.OFF
    ssh_key_path: UserPath | None = None
    default_image_name: Annotated[str, _rule(rules.image_name)] = "debian-bookworm"
    auto_stop_stale_after: Annotated[str, rules.as_written(units.parse_duration)] = "0"
    stats_poll_interval: Annotated[str, rules.as_written(units.parse_duration, minimum_s=1)] = "5s"
    bridge_name: Annotated[str, _rule(rules.ifname)] = "banger0"
    # cidr precedes bridge_ip so that bridge_ip's check can see the validated network.
    cidr: Annotated[str, _rule(rules.cidr)] = "10.213.7.0/24"
    bridge_ip: Annotated[str, _rule(rules.ipv4)] = "10.213.7.1"
    tap_pool_size: Annotated[StrictInt, Field(ge=0, le=64)] = 4
    default_dns: Annotated[list[Annotated[str, _rule(rules.dns_server)]], Field(max_length=3)] = (
        Field(default_factory=lambda: ["1.1.1.1", "9.9.9.9"])
    )
    #: Ready VMs of the default image: "auto" (banger.config.pool_policy) or a number.
    pool_size: Annotated[int | str, _rule(rules.pool_size)] = "auto"
    vm_defaults: VmDefaultsConfig = Field(default_factory=VmDefaultsConfig)
    pool: list[PoolEntry] = Field(default_factory=list)
    file_sync: list[FileSyncEntry] = Field(default_factory=list)

    _sources: Mapping[str, Source] = PrivateAttr(default_factory=dict)
    _path: Path | None = PrivateAttr(default=None)
    _layout: Layout | None = PrivateAttr(default=None)
    _home: Path | None = PrivateAttr(default=None)

    @field_validator("bridge_ip")
    @classmethod
    def _bridge_ip_in_cidr(cls, value: str, info: ValidationInfo) -> str:
        cidr = info.data.get("cidr")
        if cidr is None:  # cidr itself failed; that error is reported on its own
            return value
        network, address = IPv4Network(cidr), IPv4Address(value)
        if address not in network:
            raise rules.fail(
                f"must lie inside cidr {cidr} (set bridge_ip and cidr together)", value
            )
        if address in (network.network_address, network.broadcast_address):
            raise rules.fail(f"must not be the network or broadcast address of {cidr}", value)
        return value

    @field_validator("pool")
    @classmethod
    def _one_entry_per_image(cls, value: list[PoolEntry], info: ValidationInfo) -> list[PoolEntry]:
        default = info.data.get("default_image_name")
        seen: set[str | None] = set()
        for entry in value:
            image = entry.image or default
            if image in seen:
                raise ValueError(f"image {image!r} has two [[pool]] entries; keep one")
            seen.add(image)
        return value

    @property
    def sources(self) -> Mapping[str, Source]:
        """Dotted key -> where its value came from (env, file or default)."""
        return MappingProxyType(dict(self._sources) or _sources({}, {}))

    @property
    def path(self) -> Path | None:
        """The config file this was loaded from (it may not exist); None if built in code."""
        return self._path

    @property
    def auto_stop_stale_after_s(self) -> int:
        return units.parse_duration(self.auto_stop_stale_after)

    @property
    def stats_poll_interval_s(self) -> int:
        return units.parse_duration(self.stats_poll_interval)

    @property
    def home_dir(self) -> Path:
        """The HOME that ``~/`` paths in this config mean."""
        return self._home or Path.home()

    def ssh_key_file(self) -> Path:
        """The private key banger uses: ``ssh_key_path`` expanded, else the managed key."""
        layout = self._layout or Layout.from_env()
        if self.ssh_key_path is None:
            return layout.ssh_dir / "id_ed25519"
        return expand_user_path(self.ssh_key_path, home=self._home or Path.home())

    def as_display_dict(self) -> dict[str, Any]:
        """JSON-able resolved values; durations and sizes as written plus their numbers."""
        values: dict[str, Any] = self.model_dump(mode="json")
        values["auto_stop_stale_after_s"] = self.auto_stop_stale_after_s
        values["stats_poll_interval_s"] = self.stats_poll_interval_s
        values["ssh_key_file"] = str(self.ssh_key_file())
        values["vm_defaults"]["disk_size_bytes"] = self.vm_defaults.disk_size_bytes
        return {"config_file": None if self._path is None else str(self._path), **values}


def expand_user_path(text: str, *, home: Path) -> Path:
    """``~/x`` -> ``<home>/x``; absolute paths unchanged (validation refused the rest)."""
    return home / text[2:] if text.startswith("~/") else Path(text)


# -- key catalogue (derived from the models, used by docs and env overrides) ---------------


def config_keys() -> list[str]:
    """Every documented key in dotted form, ``file_sync.host`` for array-of-table keys."""
    keys = []
    for name, field in Config.model_fields.items():
        table = table_model(field.annotation)
        if table is None:
            keys.append(name)
        else:
            keys.extend(f"{name}.{sub}" for sub in table.model_fields)
    return keys


def env_keys() -> list[str]:
    """Top-level keys that ``BANGER_<KEY>`` can override (everything but tables)."""
    return [n for n, f in Config.model_fields.items() if table_model(f.annotation) is None]


def env_var_for(key: str) -> str:
    return ENV_PREFIX + key.upper()


def _env_overrides(env: Mapping[str, str]) -> dict[str, object]:
    """Values from ``BANGER_<KEY>``; empty counts as unset. Typing is left to the models."""
    overrides: dict[str, object] = {}
    for key in env_keys():
        text = env.get(env_var_for(key), "")
        if not text:
            continue
        annotation = Config.model_fields[key].annotation
        if typing.get_origin(annotation) is list:
            overrides[key] = [part.strip() for part in text.split(",")]
        elif annotation is int and re.fullmatch(r"[0-9]{1,4000}", text, re.ASCII):
            overrides[key] = int(text)  # the range check then names the bound
        else:
            overrides[key] = text  # "1_024" or "-1" for an int fails as "must be an integer"
    return overrides


# -- loading ------------------------------------------------------------------------------


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    layout: Layout | None = None,
) -> Config:
    """Read the config file (missing or empty = defaults), apply env, validate everything."""
    env = os.environ if env is None else env
    layout = Layout.from_env(env) if layout is None else layout
    if path is None:
        path = Path(env[CONFIG_PATH_ENV]) if env.get(CONFIG_PATH_ENV) else layout.config_file
    from_file = _read_toml(path)
    from_env = _env_overrides(env)
    try:
        config = Config.model_validate({**from_file, **from_env})
    except ValidationError as exc:
        raise translate(exc, path, from_env, model=Config, env_var=env_var_for) from exc
    config._sources = _sources(from_file, from_env)
    config._path = path
    config._layout = layout
    config._home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return config


def _sources(from_file: Mapping[str, Any], from_env: Mapping[str, object]) -> dict[str, Source]:
    sources: dict[str, Source] = {}
    for dotted in config_keys():
        top, _, sub = dotted.partition(".")
        table = from_file.get(top)
        if sub and typing.get_origin(Config.model_fields[top].annotation) is not list:
            key, in_file = dotted, isinstance(table, dict) and sub in table
        else:  # a scalar, or [[file_sync]], whose entries count as one list
            key, in_file = top, top in from_file
        sources[key] = Source.ENV if top in from_env else Source.FILE if in_file else Source.DEFAULT
    return sources


def _read_toml(path: Path) -> dict[str, Any]:
    data = _read_private_file(path)
    if data is None:
        return {}
    if data.startswith(b"\xef\xbb\xbf"):
        raise ConfigError(
            f"{path}: line 1, column 1: the file starts with a UTF-8 byte order mark (BOM)",
            hint=f"save {path} as UTF-8 without a BOM",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{path}: line {line}, column {column}: the file is not valid UTF-8",
            hint=f"save {path} as UTF-8",
        ) from exc
    try:
        return tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or int() refusing a 5000-digit number
        raise _toml_error(path, exc) from exc


def _toml_error(path: Path, exc: ValueError) -> ConfigError:
    if not isinstance(exc, tomllib.TOMLDecodeError):
        return ConfigError(f"{path}: invalid TOML: a number has too many digits")
    # Python 3.11's TOMLDecodeError has no lineno attribute; the position ends the message.
    found = _TOML_POS_RE.search(str(exc))
    reason = str(exc)[: found.start()] if found else str(exc)
    where = "end of file: " if found and not found.group(1) else ""
    if found and found.group(1):
        where = f"line {found.group(1)}, column {found.group(2)}: "
    twice = "overwrite" in reason or "twice" in reason
    return ConfigError(
        f"{path}: {where}invalid TOML: {reason[:1].lower()}{reason[1:]}",
        details="a key or table is defined twice; TOML allows each once" if twice else None,
        hint=f"fix the TOML syntax in {path}",
    )


def _read_private_file(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist. Refuses what others could edit."""
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        if path.is_symlink():
            raise ConfigError(f"config file {path} is a symlink to nothing") from None
        return None
    except OSError as exc:
        raise ConfigError(f"cannot open config file {path}: {exc.strerror}") from exc
    data = b""
    try:
        _check_owner_and_mode(path, os.fstat(fd))
        while len(data) <= MAX_CONFIG_BYTES and (chunk := os.read(fd, 65536)):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is larger than {units.format_size(MAX_CONFIG_BYTES)}"
        )
    return data


def _check_owner_and_mode(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"config file {path} is not a regular file")
    if st.st_uid not in (os.geteuid(), 0):
        raise ConfigError(
            f"config file {path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})",
            details="another user could change how banger runs your VMs",
            hint=f"copy it to a file you own, or remove {path}",
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        # Name who can write it and the one chmod that takes exactly that away.
        who, bits = {
            stat.S_IWGRP: ("its group", "g-w"),
            stat.S_IWOTH: ("every user", "o-w"),
        }.get(mode & (stat.S_IWGRP | stat.S_IWOTH), ("its group and every user", "go-w"))
        raise ConfigError(
            f"config file {path} can be written by {who}, not only by you (mode {mode:04o})",
            details="another user could change how banger runs your VMs",
            hint=f"chmod {bits} {path}",
        )
