"""Sizes, durations and counts as typed by users (ADVERSARIAL 47)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from banger.errors import InvalidArgument
from banger.model import limits, units
from banger.model.units import (
    GIB,
    KIB,
    MAX_DURATION_S,
    MAX_SIZE_BYTES,
    MIB,
    TIB,
    check_bound,
    describe_input,
    format_amount,
    format_duration,
    format_size,
    parse_bounded_int,
    parse_duration,
    parse_memory_mib,
    parse_positive_int,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1048576),
        ("512M", 512 * MIB),
        ("8G", 8 * GIB),
        ("1T", TIB),
        ("4K", 4 * KIB),
        ("8g", 8 * GIB),
        ("8GiB", 8 * GIB),
        ("8GB", 8 * GIB),
        ("1024B", 1024),
        ("16T", MAX_SIZE_BYTES),
    ],
)
def test_parse_size_accepts_binary_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0", "greater than zero"),
        ("0G", "greater than zero"),
        ("-1", "greater than zero"),
        ("-8G", "greater than zero"),
        ("1.5G", "whole number"),
        (".5G", "whole number"),
        ("1_024", "whole number"),
        ("\u0661\u0662\u0663", "whole number"),
        ("\uff18G", "whole number"),
        ("1iB", "whole number"),
        ("8X", "whole number"),
        ("", "whole number"),
        (" 8G", "whole number"),
        ("8G\n", "whole number"),
        ("17T", "at most 16 TiB"),
        ("16385G", "at most 16 TiB"),
        ("9" * 5000, "at most 16 TiB"),
    ],
)
def test_parse_size_rejects_with_rule_e47(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_size(text, what="--disk-size")
    assert info.value.brief.startswith("--disk-size: ")
    assert fragment in info.value.brief
    assert "(got " in info.value.brief


@pytest.mark.parametrize("value", [True, 8, 8.0, None, b"8G"])
def test_parse_size_rejects_non_strings_e47(value: object) -> None:
    with pytest.raises(InvalidArgument, match="quoted size"):
        parse_size(value)


def test_parse_size_minimum_names_the_floor() -> None:
    assert parse_size("256M", minimum_bytes=256 * MIB) == 256 * MIB
    with pytest.raises(InvalidArgument, match=r"at least 256 MiB \(got \"255M\"\)"):
        parse_size("255M", minimum_bytes=256 * MIB)


@pytest.mark.parametrize(
    ("size_bytes", "text"),
    [
        (8 * GIB, "8G"),
        (512 * MIB, "512M"),
        (TIB, "1T"),
        (4 * KIB, "4K"),
        (1000, "1000"),
        (0, "0"),
        (1536 * MIB, "1.5G"),
        (GIB + 256 * MIB, "1.25G"),
        (GIB + 1, "1073741825"),  # never rounded into a misleading "1G"
    ],
)
def test_format_size(size_bytes: int, text: str) -> None:
    assert format_size(size_bytes) == text


@given(st.integers(min_value=1, max_value=MAX_SIZE_BYTES))
def test_format_size_round_trips_when_whole(size_bytes: int) -> None:
    text = format_size(size_bytes)
    if "." in text:
        assert text[-1] in "KMGT"
    else:
        assert parse_size(text) == size_bytes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("0s", 0),
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        ("365d", MAX_DURATION_S),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("90", "duration like"),
        ("", "duration like"),
        ("30M", "duration like"),
        ("30m1h", "duration like"),
        ("1h1h", "duration like"),
        ("-5s", "duration like"),
        ("1.5h", "duration like"),
        ("\u0661s", "duration like"),
        ("1_0s", "duration like"),
        ("366d", "at most 365d"),
        ("9" * 5000 + "s", "at most 365d"),
    ],
)
def test_parse_duration_rejects_with_rule(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        parse_duration(text)


def test_parse_duration_minimum_and_type() -> None:
    with pytest.raises(InvalidArgument, match=r"at least 1s \(got \"0\"\)"):
        parse_duration("0", minimum_s=1)
    with pytest.raises(InvalidArgument, match="quoted duration"):
        parse_duration(30)


@given(st.integers(min_value=0, max_value=MAX_DURATION_S))
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_format_duration_examples() -> None:
    assert format_duration(0) == "0"
    assert format_duration(5400) == "1h30m"
    assert format_duration(86400 + 1) == "1d1s"


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("4", 4), ("064", 64), (7, 7)])
def test_parse_positive_int(text: object, value: int) -> None:
    assert parse_positive_int(text, what="--vcpu", maximum=64) == value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (True, "not a boolean"),
        (False, "not a boolean"),
        ("0", "at least 1"),
        (0, "at least 1"),
        (-3, "at least 1"),
        ("-3", "digits 0-9"),
        ("1_024", "digits 0-9"),
        ("\u0661\u0662\u0663", "digits 0-9"),
        ("1.5", "digits 0-9"),
        (1.5, "digits 0-9"),
        (" 4", "digits 0-9"),
        ("", "digits 0-9"),
        ("65", "at most 64"),
        ("9" * 5000, "at most 64"),
    ],
)
def test_parse_positive_int_rejects_e47(value: object, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_positive_int(value, what="--vcpu", maximum=64)
    assert info.value.brief.startswith("--vcpu: ")
    assert fragment in info.value.brief


def test_parse_positive_int_rejects_a_5000_digit_int_e47() -> None:
    with pytest.raises(InvalidArgument, match="at most 64"):
        parse_positive_int(10**5000, what="--vcpu", maximum=64)


def test_describe_input_is_bounded_and_toml_like() -> None:
    assert describe_input(True) == "true"
    assert describe_input("a\nb") == '"a\\nb"'
    assert describe_input([1, "x"]) == '[1, "x"]'
    assert len(describe_input("x" * 10_000)) <= 41
    assert "hundreds of digits" in describe_input(10**5000)


def test_negative_sizes_and_durations_cannot_be_formatted() -> None:
    with pytest.raises(ValueError, match="negative"):
        units.format_size(-1)
    with pytest.raises(ValueError, match="negative"):
        units.format_duration(-1)


# -- bounds in the user's units (issue 14 item 15) ------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (128, "MiB", "128 MiB"),
        (limits.MEMORY_MIB_MAX, "MiB", "1 TiB"),
        (256 * MIB, "bytes", "256 MiB"),
        (1536 * MIB, "bytes", "1.5 GiB"),
        (16 * 1024**4, "bytes", "16 TiB"),
        (100, "bytes", "100 bytes"),
        (1, "bytes", "1 byte"),
        (1, "vCPU", "1 vCPU"),
        (64, "vCPU", "64 vCPUs"),
        (1, "seconds", "1 second"),
        (3600, "seconds", "3600 seconds"),
    ],
)
def test_format_amount(value: int, unit: limits.Unit, text: str) -> None:
    assert format_amount(value, unit) == text


def test_check_bound_names_what_and_the_bound_in_its_unit() -> None:
    assert check_bound(128, limits.MEMORY_MIB, what="--memory") == 128
    with pytest.raises(InvalidArgument) as low:
        check_bound(100, limits.MEMORY_MIB, what="--memory")
    assert low.value.brief == "--memory: must be at least 128 MiB (got 100)"
    with pytest.raises(InvalidArgument) as high:
        check_bound(17 << 40, limits.DISK_SIZE, what="disk_size_bytes", got="17T")
    assert high.value.brief == 'disk_size_bytes: must be at most 16 TiB (got "17T")'


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("64", 64), ("0064", 64), (7, 7)])
def test_parse_bounded_int(text: object, value: int) -> None:
    assert parse_bounded_int(text, limits.VCPU, what="--vcpu") == value


@pytest.mark.parametrize(
    ("value", "brief"),
    [
        ("0", '--vcpu: must be at least 1 vCPU (got "0")'),
        ("-3", '--vcpu: must be at least 1 vCPU (got "-3")'),
        ("65", '--vcpu: must be at most 64 vCPUs (got "65")'),
        ("9" * 5000, "--vcpu: must be at most 64 vCPUs"),
        ("-" + "9" * 5000, "--vcpu: must be at least 1 vCPU"),
        (True, "--vcpu: must be a whole number, not a boolean"),
        ("1_024", "--vcpu: must be a whole number from 1 vCPU to 64 vCPUs, written with"),
        ("\u0661\u0662", "--vcpu: must be a whole number from 1 vCPU"),
        (" 4", "--vcpu: must be a whole number from 1 vCPU"),
        (1.5, "--vcpu: must be a whole number from 1 vCPU"),
    ],
)
def test_parse_bounded_int_rejects_in_units_e47(value: object, brief: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_bounded_int(value, limits.VCPU, what="--vcpu")
    assert info.value.brief.startswith(brief)


def test_parse_bounded_int_rejects_a_5000_digit_int_e47() -> None:
    with pytest.raises(InvalidArgument, match="at most 64 vCPUs"):
        parse_bounded_int(10**5000, limits.VCPU, what="--vcpu")


@pytest.mark.parametrize(
    ("text", "mib"), [("128", 128), ("2048", 2048), ("2G", 2048), ("1536M", 1536), ("1T", 1 << 20)]
)
def test_parse_memory_mib(text: str, mib: int) -> None:
    assert parse_memory_mib(text, what="--memory") == mib


@pytest.mark.parametrize(
    ("text", "brief"),
    [
        ("0", '--memory: must be at least 128 MiB (got "0")'),
        ("100", '--memory: must be at least 128 MiB (got "100")'),
        ("64M", '--memory: must be at least 128 MiB (got "64M")'),
        ("-1", '--memory: must be at least 128 MiB (got "-1")'),
        ("2T", '--memory: must be at most 1 TiB (got "2T")'),
        ("1048577", '--memory: must be at most 1 TiB (got "1048577")'),
        ("1500K", "--memory: must be a whole number of MiB"),
        ("1.5G", "--memory: must be a whole number"),
        ("1_024", "--memory: must be a whole number"),
    ],
)
def test_parse_memory_mib_rejects_in_mib_e47(text: str, brief: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_memory_mib(text, what="--memory")
    assert info.value.brief.startswith(brief)
