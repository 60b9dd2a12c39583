"""Every ``invalid_request`` reply of the API names the field and says what it accepts, in
words, never as a regex (issue 14 item 16: 164 of 164 had no hint).

The cases come from the OpenAPI document itself, so an endpoint or field added later is
covered without editing this file. The app runs in-process (ASGI calls); its two service
dependencies are overridden with ``None`` because a request that fails validation never
reaches a service, and one that did would answer 500, which the test refuses.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI

from banger.api import deps
from banger.api.app import build_app
from banger.api.error_replies import PATTERN_RULES


def _app() -> FastAPI:
    app = build_app("test")
    app.dependency_overrides[deps._services] = lambda: None
    app.dependency_overrides[deps._context] = lambda: None
    return app


APP = _app()
DOC = APP.openapi()
#: A value of the wrong JSON type for every field (a dict's values are strings, so an int
#: inside is wrong there too).
WRONG = {"x": 1}


def _body_schema(op: dict[str, Any]) -> dict[str, Any] | None:
    content = op.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    if schema is None:
        return None
    ref = schema.get("$ref", "")
    resolved: dict[str, Any] = DOC["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return resolved


def _bad_query_value(schema: dict[str, Any]) -> str | None:
    kinds = {s.get("type") for s in schema.get("anyOf", [schema])}
    if kinds & {"integer", "number", "boolean"} or "enum" in schema or "pattern" in schema:
        return "not!valid"
    if schema.get("minLength"):
        return ""
    return None


def _cases() -> Iterator[tuple[str, str, str, bytes, str]]:
    """(method, path, query, body, the field the reply must name; '' for the whole body)."""
    for template, ops in DOC["paths"].items():
        for method, op in ops.items():
            params = op.get("parameters", [])
            path = template.replace("{name}", "x")
            if "{name}" in template:
                yield method, template.replace("{name}", "a" * 300), "", b"", "name"
            required = "&".join(
                f"{p['name']}=/x" for p in params if p["in"] == "query" and p.get("required")
            )
            for param in params:
                bad = _bad_query_value(param["schema"]) if param["in"] == "query" else None
                if bad is not None:
                    others = "&".join(
                        q for q in required.split("&") if q and not q.startswith(param["name"])
                    )
                    query = "&".join(filter(None, [others, f"{param['name']}={bad}"]))
                    yield method, path, query, b"", param["name"]
            schema = _body_schema(op)
            if schema is None:
                continue
            yield method, path, required, b"[]", ""
            yield method, path, required, b"{not json", ""
            yield method, path, required, b'{"no_such_field": 1}', "no_such_field"
            for field, spec in schema.get("properties", {}).items():
                yield method, path, required, json.dumps({field: WRONG}).encode(), field
                if "pattern" in json.dumps(spec):
                    bad_name = json.dumps({field: "../not a name"}).encode()
                    yield method, path, required, bad_name, field


CASES = list(_cases())


async def _call(method: str, path: str, query: str, body: bytes) -> tuple[int, dict[str, Any]]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("test", 1),
        "server": ("test", 0),
    }
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await APP(scope, receive, send)
    reply = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(reply)


def test_the_cases_cover_every_endpoint_with_input() -> None:
    with_input = {
        (method, path)
        for path, ops in DOC["paths"].items()
        for method, op in ops.items()
        if op.get("parameters") or _body_schema(op)
    }
    covered = {(method, path.replace("a" * 300, "x")) for method, path, *_ in CASES}
    assert len(CASES) > 100
    missing = {(m, p) for m, p in with_input if (m, p.replace("{name}", "x")) not in covered}
    assert not missing


@pytest.mark.parametrize(("method", "path", "query", "body", "field"), CASES)
def test_every_invalid_request_reply_names_the_field_and_what_it_accepts(
    method: str, path: str, query: str, body: bytes, field: str
) -> None:
    status, reply = asyncio.run(_call(method, path, query, body))
    error = reply["error"]
    assert (status, error["code"]) == (422, "invalid_request"), reply
    hint = error["hint"]
    assert hint, reply
    if field:
        assert f"'{field}" in hint, reply  # 'env' or 'env.KEY'
        assert field in f"{error['message']}\n{error['details']}", reply
    else:
        assert "JSON object" in hint, reply
    text = json.dumps(error)
    for pattern in PATTERN_RULES:
        assert json.dumps(pattern)[1:-1] not in text, f"a regex in the reply: {reply}"


def test_a_body_field_error_lists_the_fields_the_endpoint_takes() -> None:
    _, reply = asyncio.run(_call("post", "/v1/vms", "", b'{"memroy_mib": 512}'))
    assert reply["error"]["message"] == "unknown field 'memroy_mib'"
    hint = reply["error"]["hint"]
    assert hint.startswith("drop 'memroy_mib': this endpoint takes name, image, vcpu, memory_mib")


def test_a_bound_and_several_errors_are_all_in_the_hint() -> None:
    body = json.dumps({"memory_mib": 1, "vcpu": "two", "nat": "yes"}).encode()
    _, reply = asyncio.run(_call("post", "/v1/vms", "", body))
    hint = reply["error"]["hint"]
    assert "'memory_mib' takes a number >= " in hint
    assert "'vcpu' takes a whole number" in hint
    assert "'nat' takes true or false" in hint


def test_name_errors_state_the_rule_in_words_not_a_regex() -> None:
    body = json.dumps({"name": "../etc", "source_dir": "/k"}).encode()
    _, reply = asyncio.run(_call("post", "/v1/kernels/import", "", body))
    words = "1-64 letters, digits, '.', '-' or '_', starting with a letter or digit"
    assert reply["error"]["message"] == f"name: must be {words}"
    assert reply["error"]["hint"] == f"'name' takes {words}"


def test_every_pattern_in_the_schema_has_its_rule_in_words() -> None:
    patterns: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                patterns.add(node["pattern"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(DOC)
    assert patterns
    assert patterns <= set(PATTERN_RULES), patterns - set(PATTERN_RULES)
