"""The error model: unique codes, every class known to the client, text rendering."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import banger
from banger import errors
from banger.cli.render import format_error
from banger.errors import ERROR_CLASSES, BangerError, error_from_payload


def _all_error_classes() -> set[type[BangerError]]:
    for mod in pkgutil.walk_packages(banger.__path__, "banger."):
        if mod.name.endswith("__main__"):
            continue
        importlib.import_module(mod.name)
    seen: set[type[BangerError]] = set()
    todo: list[type[BangerError]] = [BangerError]
    while todo:
        cls = todo.pop()
        seen.add(cls)
        todo.extend(c for c in cls.__subclasses__() if c not in seen)
    return seen


def test_every_error_class_is_registered_under_its_own_unique_code() -> None:
    classes = _all_error_classes()
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), "two classes share a code"
    for cls in classes:
        assert ERROR_CLASSES[cls.code] is cls


def test_a_duplicate_code_is_refused_at_definition() -> None:
    with pytest.raises(TypeError, match="used by"):
        type("Dup", (BangerError,), {"code": "vm_not_found"})


def test_a_subclass_without_its_own_code_is_refused() -> None:
    with pytest.raises(TypeError, match="own error code"):
        type("NoCode", (errors.NotFound,), {})


@pytest.mark.parametrize("cls", sorted(_all_error_classes(), key=lambda c: c.code))
def test_client_rebuilds_the_same_typed_error(cls: type[BangerError]) -> None:
    original = cls("brief text", details="line one\nline two", hint="do this")
    rebuilt = error_from_payload(original.to_payload(), status=cls.status)
    assert type(rebuilt) is cls
    assert (rebuilt.brief, rebuilt.details, rebuilt.hint) == (
        "brief text",
        original.details,
        "do this",
    )
    assert 400 <= cls.status < 600


def test_unknown_code_becomes_the_base_error_and_garbage_a_bad_response() -> None:
    err = error_from_payload({"error": {"code": "from_the_future", "message": "m"}}, status=500)
    assert type(err) is BangerError
    assert err.brief == "m"
    garbage = error_from_payload("<html>oops</html>", status=502)
    assert isinstance(garbage, errors.BadResponse)


def test_text_rendering_has_error_details_and_hint_lines() -> None:
    err = errors.VmNotFound("no VM named x", details="checked 3 VMs")
    text = format_error(err, debug=False)
    assert text.splitlines() == [
        "error: no VM named x",
        "  checked 3 VMs",
        "hint: `banger vm list` shows the VMs that exist",
    ]


def test_debug_rendering_adds_the_traceback() -> None:
    try:
        raise errors.StateError("db broke")
    except errors.StateError as exc:
        text = format_error(exc, debug=True)
    assert "Traceback" in text
    assert text.rstrip().splitlines()[-2] == "error: db broke"


def test_unexpected_exception_renders_with_a_hint() -> None:
    text = format_error(ValueError("boom"), debug=False)
    assert text.startswith("error: unexpected ValueError: boom")
    assert "hint:" in text


# -- the hint audit (issue 14 item 16): every error the CLI can print says what to do -------


@pytest.mark.parametrize("cls", sorted(_all_error_classes(), key=lambda c: c.code))
def test_every_error_class_has_a_hint_when_the_raiser_gives_none(cls: type[BangerError]) -> None:
    for err in (cls("brief text"), cls("brief text", hint=""), cls("brief text", hint=None)):
        assert err.hint and err.hint.strip(), f"{cls.__name__} ({cls.code}) has no default hint"
        assert err.to_payload()["error"]["hint"] == err.hint
        assert format_error(err, debug=False).splitlines()[-1] == f"hint: {err.hint}"


@pytest.mark.parametrize("cls", sorted(_all_error_classes(), key=lambda c: c.code))
def test_a_daemon_reply_without_a_hint_is_rendered_with_one(cls: type[BangerError]) -> None:
    """An older daemon (or another server) may send ``"hint": null``: the CLI still hints."""
    payload = {"error": {"code": cls.code, "message": "m", "details": None, "hint": None}}
    rebuilt = error_from_payload(payload, status=cls.status)
    assert type(rebuilt) is cls
    assert rebuilt.hint == cls.default_hint and rebuilt.hint


def test_the_fallback_errors_have_hints() -> None:
    assert errors.internal_error().hint
    assert error_from_payload("<html>oops</html>", status=502).hint
    unknown = {"error": {"code": "from_the_future", "message": "m"}}
    assert error_from_payload(unknown, status=500).hint


def test_registry_connection_errors_say_what_to_check() -> None:
    import socket

    from banger.oci.http_transport import _connect_error

    url = "https://registry.invalid/v2/"
    for exc in (
        TimeoutError(),
        socket.gaierror(-2, "Name or service not known"),
        OSError(111, "refused"),
    ):
        err = _connect_error(exc, url)
        assert err.hint is not None and "registry" in err.hint
        assert err.hint != type(err).default_hint


def test_a_daemon_that_does_not_answer_in_time_points_at_its_logs(tmp_path: Path) -> None:
    from banger.client.http import Client

    err = Client(tmp_path / "sock", timeout_s=1)._transport_error(TimeoutError())
    assert isinstance(err, errors.Timeout)
    assert err.hint is not None and "banger daemon logs" in err.hint
