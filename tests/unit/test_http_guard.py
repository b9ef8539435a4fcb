"""``http_guard.BooleanKnobGuard``: a JSON boolean given to a PackCache or frame-parallel knob in
``vllm_xargs`` is an HTTP 400 before vLLM's schema turns it into 1; every other request reaches
the app with its body intact."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from packcache_vllm.engine.http_guard import BooleanKnobGuard


def call(
    body: bytes,
    method: str = "POST",
    chunk: int = 7,
    content_type: bytes | None = b"application/json",
) -> tuple[list[dict], bytes | None]:
    """Run the guard over ``body`` sent in ``chunk``-byte pieces: (messages it sent, the body the
    app read, or None when the app was not called)."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    incoming = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    sent: list[dict] = []
    seen: list[bytes] = []

    async def receive():
        return incoming.pop(0)

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message["body"]
            if not message["more_body"]:
                break
        seen.append(body)

    headers = [] if content_type is None else [(b"content-type", content_type)]
    scope = {"type": "http", "method": method, "headers": headers}
    asyncio.run(BooleanKnobGuard(app)(scope, receive, send))
    return sent, (seen[0] if seen else None)


@pytest.mark.parametrize(
    ("xargs", "key", "literal"),
    [
        ({"packcache_window": True}, "packcache_window", "true"),
        ({"packcache_decay": False}, "packcache_decay", "false"),
        ({"ardf_steps_per_frame": True}, "ardf_steps_per_frame", "true"),
        ({"ardf_seed": [1, False]}, "ardf_seed", r"\[1, false\]"),
    ],
)
@pytest.mark.parametrize("content_type", [b"application/json", None])  # FastAPI reads both
def test_a_boolean_knob_is_http_400_naming_the_key_and_the_value(xargs, key, literal, content_type):
    body = json.dumps({"prompt": [1, 2], "vllm_xargs": xargs}).encode()
    sent, reached = call(body, content_type=content_type)
    assert reached is None
    assert sent[0]["status"] == 400
    error = json.loads(sent[1]["body"])["error"]
    assert (error["code"], error["type"], error["param"]) == (400, "BadRequestError", "vllm_xargs")
    assert f"vllm_xargs['{key}'] must be a number or a name" in error["message"]
    assert re.search(f"got the boolean {literal}", error["message"])


@pytest.mark.parametrize(
    "request_body",
    [
        {"prompt": [1, 2], "vllm_xargs": {"packcache_window": 1, "ardf_seed": 3}},
        {"prompt": "true or false", "vllm_xargs": {"other_plugin_flag": True}},
        {"prompt": [1], "echo": True},
    ],
)
def test_other_requests_reach_the_app_unchanged(request_body):
    body = json.dumps(request_body).encode()
    sent, reached = call(body)
    assert reached == body and sent == []


def test_malformed_json_other_methods_and_forms_are_left_to_vllm():
    boolean = b'{"vllm_xargs": {"packcache_window": true}}'
    for body, method, content_type in [
        (boolean[:-2], "POST", b"application/json"),
        (b"", "GET", b"application/json"),
        (boolean, "POST", b"multipart/form-data; boundary=x"),
    ]:
        sent, reached = call(body, method, content_type=content_type)
        assert reached == body and sent == []
