"""The fakes follow the protocols they stand in for: same members, same parameters.

A change to ``Vmm``, ``PrivilegedOps``, ``VmmFactory`` or ``Runner`` fails here first,
so a fake cannot drift into testing something the daemon no longer does.
"""

from __future__ import annotations

import inspect

import pytest

from banger.host.runner import Runner
from banger.net.privileged import PrivilegedOps
from banger.services.context import DnsPublisher
from banger.services.vmm_factory import VmmFactory
from banger.vmm.base import Vmm
from tests.fakes import FakeDns, FakePrivilegedOps, FakeRunner, FakeVmm, FakeVmms


def _members(protocol: type) -> dict[str, object]:
    own = {
        name: value
        for name, value in vars(protocol).items()
        if not name.startswith("_") and name not in {"register"}
    }
    annotated = dict.fromkeys(getattr(protocol, "__annotations__", {}))
    return {**annotated, **own}


@pytest.mark.parametrize(
    ("protocol", "fake"),
    [
        (Vmm, FakeVmm),
        (PrivilegedOps, FakePrivilegedOps),
        (VmmFactory, FakeVmms),
        (DnsPublisher, FakeDns),
    ],
)
def test_the_fake_has_every_member_with_the_same_parameters(protocol: type, fake: type) -> None:
    for name, member in _members(protocol).items():
        assert hasattr(fake, name) or name in getattr(fake, "__dataclass_fields__", {}), (
            f"{fake.__name__} lacks {name}"
        )
        if inspect.isfunction(member):
            wanted = list(inspect.signature(member).parameters)
            got = list(inspect.signature(getattr(fake, name)).parameters)
            assert got == wanted, f"{fake.__name__}.{name}{got} != {protocol.__name__}{wanted}"


def test_the_fake_runner_is_a_runner_with_the_same_run_parameters() -> None:
    assert issubclass(FakeRunner, Runner)
    for name in ("run", "run_async"):
        wanted = list(inspect.signature(getattr(Runner, name)).parameters)
        assert list(inspect.signature(getattr(FakeRunner, name)).parameters) == wanted
