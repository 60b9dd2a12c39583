"""The client's stdlib types (banger.model.api_types) and the daemon's pydantic models
(banger.api.models) describe the same JSON: same fields in the same order, same types,
same optionality and defaults. The limits of banger.model.limits are the ones both
sides enforce. Either side drifting fails here, not in a user's terminal.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

import pytest
from pydantic import BaseModel

from banger.api import models
from banger.model import api_types, limits
from banger.model.record import Record, defaults, fields

#: record type -> its pydantic model (same name unless said otherwise here).
PAIRS: dict[type[Record], type[BaseModel]] = {
    api_types.ErrorDetail: models.ErrorDetail,
    api_types.Build: models.Build,
    api_types.Ping: models.Ping,
    api_types.ResolvedInt: models.ResolvedInt,
    api_types.VmDefaults: models.VmDefaultsReply,
    api_types.DbInfo: models.DbInfo,
    api_types.DaemonStatus: models.DaemonStatus,
    api_types.PoolImageStatus: models.PoolImageStatus,
    api_types.PoolStatus: models.PoolStatus,
    api_types.PoolDrained: models.PoolDrained,
    api_types.ShutdownReply: models.ShutdownReply,
    api_types.ConfigReply: models.ConfigReply,
    api_types.StageEvent: models.StageEvent,
    api_types.KernelInfo: models.KernelInfo,
    api_types.KernelDetail: models.KernelDetail,
    api_types.CatalogImageInfo: models.CatalogImageInfo,
    api_types.CatalogKernelInfo: models.CatalogKernelInfo,
    api_types.KernelRemoved: models.KernelRemoved,
    api_types.ImageInfo: models.ImageInfo,
    api_types.ImageDeleted: models.ImageDeleted,
    api_types.VmInfo: models.VmInfo,
    api_types.VmDeleted: models.Deleted,
    api_types.LogChunk: models.LogChunk,
    api_types.VmStats: models.VmStats,
    api_types.AgentHealth: models.AgentHealth,
    api_types.HealthReply: models.HealthReply,
    api_types.PortsReply: models.PortsReply,
    api_types.SshInfo: models.SshInfo,
    api_types.GuestFile: models.GuestFile,
    api_types.GuestFileList: models.GuestFileList,
    api_types.GuestFileRemoved: models.GuestFileRemoved,
    api_types.GuestFileWritten: models.GuestFileWritten,
    api_types.CreateVmRequest: models.CreateBody,
    api_types.SetVmRequest: models.SetBody,
    api_types.KillRequest: models.KillBody,
    api_types.ExecRequest: models.ExecBody,
    api_types.ImageRegisterRequest: models.ImageRegisterBody,
    api_types.ImagePullRequest: models.ImagePullBody,
    api_types.KernelImportRequest: models.KernelImportBody,
    api_types.KernelPullRequest: models.KernelPullBody,
}
NAMES = {dc: model.__name__ for dc, model in PAIRS.items()}
#: Result data of a stream, not a pydantic model of its own.
UNPAIRED = {api_types.DoctorResult, api_types.ExecResult}


def shape(tp: Any) -> str:
    """A type as a comparable string: constraints and strictness dropped, optional kept,
    nested models and records by their pydantic model's name."""
    if tp is type(None):
        return "None"
    if tp is Any or tp is object:
        return "any"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        return shape(args[0])
    if origin in (Union, types.UnionType):
        return " | ".join(sorted(shape(a) for a in args))
    if origin is Literal:
        return f"Literal{sorted(map(repr, args))}"
    if origin is list:
        return f"list[{shape(args[0])}]"
    if origin is dict:
        return f"dict[{shape(args[0])}, {shape(args[1])}]"
    if isinstance(tp, type) and issubclass(tp, Record):
        return NAMES[tp]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp.__name__
    assert isinstance(tp, type), tp
    return tp.__name__


def record_fields(cls: type[Record]) -> list[tuple[str, str, bool, object]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    optional = defaults(cls)
    return [
        (name, shape(hints[name]), name not in optional, optional.get(name)) for name in fields(cls)
    ]


def model_fields(model: type[BaseModel]) -> list[tuple[str, str, bool, object]]:
    return [
        (
            name,
            shape(info.annotation),
            info.is_required(),
            None if info.is_required() else info.default,
        )
        for name, info in model.model_fields.items()
    ]


@pytest.mark.parametrize("cls", list(PAIRS), ids=lambda c: c.__name__)
def test_each_type_matches_its_pydantic_model_field_by_field(cls: type[Record]) -> None:
    assert record_fields(cls) == model_fields(PAIRS[cls])


def test_every_record_of_the_contract_is_paired() -> None:
    declared = {
        obj
        for obj in vars(api_types).values()
        if isinstance(obj, type)
        and issubclass(obj, Record)
        and obj.__module__ == api_types.__name__
    }
    assert declared == set(PAIRS) | UNPAIRED


def test_the_shape_check_sees_a_drift() -> None:
    """The comparison above can fail: a renamed, retyped or now-optional field differs."""

    class Drifted(Record):
        deleted: int

    class Optional(Record):
        deleted: str | None = None

    assert record_fields(Drifted) != model_fields(models.Deleted)
    assert record_fields(Optional) != model_fields(models.Deleted)


def test_closed_choices_are_the_limits() -> None:
    assert typing.get_args(api_types.SignalName) == limits.SIGNALS
    assert typing.get_args(api_types.VmmName) == limits.VMMS
    assert typing.get_args(api_types.LogSource) == limits.LOG_SOURCES
    assert api_types.KillRequest().signal == limits.DEFAULT_SIGNAL


def _bounds(model: type[BaseModel], name: str) -> tuple[object, object]:
    schema = model.model_json_schema()["properties"][name]
    options = schema.get("anyOf", [schema])
    found = [o for o in options if o.get("type") == "integer"]
    assert len(found) == 1, schema
    # An Optional JsonInt (a BeforeValidator) is rendered with pydantic's own ``ge``/``le``
    # keys instead of JSON Schema's ``minimum``/``maximum`` (main's api.json has them so).
    bound = found[0]
    return bound.get("minimum", bound.get("ge")), bound.get("maximum", bound.get("le"))


@pytest.mark.parametrize("model", [models.CreateBody, models.SetBody])
def test_vm_size_bounds_in_the_schema_are_the_limits(model: type[BaseModel]) -> None:
    assert _bounds(model, "vcpu") == (limits.VCPU_MIN, limits.VCPU_MAX)
    assert _bounds(model, "memory_mib") == (limits.MEMORY_MIB_MIN, limits.MEMORY_MIB_MAX)
    assert _bounds(model, "disk_size_bytes") == (
        limits.DISK_SIZE_MIN_BYTES,
        limits.DISK_SIZE_MAX_BYTES,
    )


def test_image_size_and_boot_timeout_bounds_are_the_limits() -> None:
    assert _bounds(models.ImagePullBody, "size_bytes") == (
        limits.IMAGE_SIZE_MIN_BYTES,
        limits.IMAGE_SIZE_MAX_BYTES,
    )
    assert _bounds(models.CreateBody, "boot_timeout_s") == (
        limits.BOOT_TIMEOUT_S_MIN,
        limits.BOOT_TIMEOUT_S_MAX,
    )


def test_click_options_use_the_same_limits() -> None:
    import click

    from banger.cli.cmd_vm import kill
    from banger.cli.vm_common import create_options
    from banger.cli.vm_options import Limited, vcpu_count
    from banger.errors import InvalidArgument

    assert vcpu_count(str(limits.VCPU_MAX)) == limits.VCPU_MAX
    with pytest.raises(InvalidArgument):
        vcpu_count(str(limits.VCPU_MAX + 1))
    signal = next(p for p in kill.params if p.name == "sig")
    assert isinstance(signal.type, click.Choice)
    assert tuple(signal.type.choices) == limits.SIGNALS

    @click.command()
    @create_options
    def probe(**_: object) -> None: ...

    timeout = next(p for p in probe.params if p.name == "boot_timeout")
    assert isinstance(timeout.type, Limited)
    assert timeout.type.bound == limits.BOOT_TIMEOUT_S
    assert (timeout.type.bound.low, timeout.type.bound.high) == (
        limits.BOOT_TIMEOUT_S_MIN,
        limits.BOOT_TIMEOUT_S_MAX,
    )
    assert timeout.type.convert(str(limits.BOOT_TIMEOUT_S_MAX), None, None) == 3600
    with pytest.raises(click.BadParameter, match="at most 3600 seconds"):
        timeout.type.convert(str(limits.BOOT_TIMEOUT_S_MAX + 1), None, None)
    assert timeout.default == limits.BOOT_TIMEOUT_S_DEFAULT
    sized = {p.name: p.type for p in probe.params if isinstance(p.type, Limited)}
    assert {name: t.bound for name, t in sized.items()} == {
        "vcpu": limits.VCPU,
        "memory": limits.MEMORY_MIB,
        "disk_size": limits.DISK_SIZE,
        "boot_timeout": limits.BOOT_TIMEOUT_S,
    }
    vmm = next(p for p in probe.params if p.name == "vmm")
    assert isinstance(vmm.type, click.Choice)
    assert tuple(vmm.type.choices) == limits.VMMS


def test_records_are_keyword_only_frozen_values_with_defaults() -> None:
    vm = api_types.VmDeleted(deleted="box")
    assert vm == api_types.VmDeleted(deleted="box") != api_types.VmDeleted(deleted="other")
    assert repr(vm) == "VmDeleted(deleted='box')"
    assert hash(vm) == hash(api_types.VmDeleted(deleted="box"))
    with pytest.raises(AttributeError, match="immutable"):
        vm.deleted = "x"  # type: ignore[misc]
    with pytest.raises(TypeError, match="needs 'deleted'"):
        api_types.VmDeleted()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="no field 'name'"):
        api_types.VmDeleted(deleted="box", name="x")  # type: ignore[call-arg]
    request = api_types.CreateVmRequest()
    assert (request.nat, request.boot_timeout_s, request.name) == (False, 300, None)
    assert fields(api_types.KernelDetail)[-1] == "manifest"  # inherited fields first
    assert api_types.to_body(api_types.SetVmRequest(vcpu=2)) == {"vcpu": 2}


def test_pydantic_refuses_one_past_each_limit() -> None:
    from pydantic import ValidationError

    over = {
        "vcpu": limits.VCPU_MAX + 1,
        "memory_mib": limits.MEMORY_MIB_MIN - 1,
        "disk_size_bytes": limits.DISK_SIZE_MIN_BYTES - 1,
        "boot_timeout_s": limits.BOOT_TIMEOUT_S_MAX + 1,
    }
    for name, value in over.items():
        with pytest.raises(ValidationError):
            models.CreateBody(**{name: value})
    with pytest.raises(ValidationError):
        models.ImagePullBody(ref="debian:12", size_bytes=limits.IMAGE_SIZE_MIN_BYTES - 1)
    with pytest.raises(ValidationError):
        models.KillBody(signal="SEGV")  # type: ignore[arg-type]
    assert models.CreateBody(vcpu=limits.VCPU_MAX).vcpu == limits.VCPU_MAX


@pytest.mark.parametrize(
    ("model", "bad", "good", "line"),
    [
        (models.CreateBody, {"memory_mib": 100}, 128, "memory_mib: must be at least 128 MiB"),
        (models.CreateBody, {"memory_mib": 2 << 20}, 1 << 20, "memory_mib: must be at most 1 TiB"),
        (models.CreateBody, {"vcpu": 65}, 64, "vcpu: must be at most 64 vCPUs (got 65)"),
        (models.CreateBody, {"disk_size_bytes": 1}, 256 << 20, "disk_size_bytes: must be at least"),
        (models.CreateBody, {"boot_timeout_s": 0}, 1, "boot_timeout_s: must be at least 1 second"),
        (models.SetBody, {"vcpu": 0}, 1, "vcpu: must be at least 1 vCPU (got 0)"),
        (models.ImagePullBody, {"size_bytes": 1}, 64 << 20, "size_bytes: must be at least 64 MiB"),
    ],
)  # fmt: skip
def test_the_api_says_bounds_in_units_like_the_cli(
    model: type[BaseModel], bad: dict[str, int], good: int, line: str
) -> None:
    """Issue 14 item 15: the daemon's 422 line for a bound, as error_replies builds it;
    the bound itself is accepted."""
    from pydantic import ValidationError

    from banger.api.error_replies import describe_validation

    extra = {"ref": "debian"} if model is models.ImagePullBody else {}
    with pytest.raises(ValidationError) as caught:
        model.model_validate({**extra, **bad})
    errors = caught.value.errors()
    assert errors[0]["type"] in {"greater_than_equal", "less_than_equal"}
    (text,) = describe_validation(errors)
    assert text.startswith(line)
    (key,) = bad
    assert getattr(model.model_validate({**extra, key: good}), key) == good
