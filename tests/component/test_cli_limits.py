"""Every out-of-range size, count or timeout is a usage error from the real CLI (issue 14
item 15, ADVERSARIAL 47): exit 2, the flag and its bound in the user's units, nothing
printed before it and no daemon started or asked (the socket never appears)."""

from __future__ import annotations

import pytest

from tests.conftest import BangerHome

CREATE = (("vm", "create"), ("vm", "run"), ("vm", "set", "somevm"))


@pytest.mark.parametrize("command", CREATE, ids=" ".join)
@pytest.mark.parametrize(
    ("flag", "value", "bound"),
    [
        ("--memory", "0", "at least 128 MiB"),
        ("--memory", "100", "at least 128 MiB"),
        ("--memory", "64M", "at least 128 MiB"),
        ("--memory", "2T", "at most 1 TiB"),
        ("--disk-size", "1K", "at least 256 MiB"),
        ("--disk-size", "17T", "at most 16 TiB"),
        ("--vcpu", "0", "at least 1 vCPU"),
        ("--vcpu", "65", "at most 64 vCPUs"),
    ],
)
def test_sizes_out_of_range_are_usage_errors_before_any_work(
    home: BangerHome, command: tuple[str, ...], flag: str, value: str, bound: str
) -> None:
    _assert_usage_error(home, [*command, flag, value], flag, bound)


@pytest.mark.parametrize(
    ("args", "flag", "bound"),
    [
        (["vm", "create", "--boot-timeout", "0"], "--boot-timeout", "at least 1 second"),
        (["vm", "run", "--boot-timeout", "3601"], "--boot-timeout", "at most 3600 seconds"),
        (["vm", "create", "--boot-timeout", "1_0"], "--boot-timeout", "from 1 second to 3600"),
        (["image", "pull", "debian", "--size", "1M"], "--size", "at least 64 MiB"),
        (["image", "pull", "debian", "--size", "3T"], "--size", "at most 2 TiB"),
        (["vm", "exec", "box", "--timeout", "0", "--", "true"], "--timeout", "more than 0 seconds"),
        (["vm", "exec", "b", "--timeout", "5000000", "--", "true"], "--timeout", "at most 4000000"),
        (["vm", "exec", "box", "--timeout", "nan", "--", "true"], "--timeout", "number of seconds"),
        (["vm", "cp", "--max-size", "0", "box:/a", "b"], "--max-size", "greater than zero"),
        (["vm", "cp", "--max-size", "17T", "box:/a", "b"], "--max-size", "at most 16 TiB"),
    ],
)  # fmt: skip
def test_timeouts_and_other_sizes_are_usage_errors_too(
    home: BangerHome, args: list[str], flag: str, bound: str
) -> None:
    _assert_usage_error(home, args, flag, bound)


def test_help_states_the_bounds(home: BangerHome) -> None:
    out = home.banger("vm", "create", "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # help text is wrapped
    for fragment in ("at least 128 MiB", "at least 256 MiB", "1 to 64", "1 to 3600"):
        assert fragment in text
    out = home.banger("vm", "set", "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for fragment in ("at least 128 MiB", "1 to 64", "cannot shrink"):
        assert fragment in text


def _assert_usage_error(home: BangerHome, args: list[str], flag: str, bound: str) -> None:
    out = home.banger(*args)
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""  # no spec line, no progress
    assert flag in out.stderr and bound in out.stderr, out.stderr
    value = args[args.index(flag) + 1]
    assert f'(got "{value}")' in out.stderr
    for work in ("spec:", "✗", "banger: started", "memory_mib", "disk_size_bytes"):
        assert work not in out.stderr, out.stderr
    assert not home.socket.exists()  # the daemon was neither started nor asked
