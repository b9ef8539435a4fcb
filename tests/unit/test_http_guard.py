"""``http_guard.RequestGuard``: a JSON boolean given to a PackCache or frame-parallel knob in
``vllm_xargs`` is an HTTP 400 before vLLM's schema turns it into 1; a streamed ``/v1/completions``
request that vLLM's input processor refuses gets the refusal before any stream (the input
processor itself runs in ``tests/engine/test_serve_packcache.py``); every other request reaches
the app with its body intact."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from packcache_vllm.engine import http_guard
from packcache_vllm.engine.http_guard import RequestGuard


def call(
    body: bytes,
    method: str = "POST",
    chunk: int = 7,
    content_type: bytes | None = b"application/json",
    path: str = "/v1/completions",
    root_path: str = "",
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
    scope = {"type": "http", "method": method, "headers": headers, "path": path}
    scope["root_path"] = root_path
    asyncio.run(RequestGuard(app)(scope, receive, send))
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


REFUSAL = {"error": {"message": "refused", "type": "BadRequestError", "param": None, "code": 400}}


def input_processor(monkeypatch, answer: dict | None) -> list[bytes]:
    """Stand in for the seam's input-processor run (it needs vLLM's app): the bodies it is
    asked about."""
    asked: list[bytes] = []

    async def refusal(scope, body):
        asked.append(body)
        return answer

    monkeypatch.setattr(http_guard, "input_processor_refusal", refusal)
    return asked


@pytest.mark.parametrize(
    ("path", "root_path"), [("/v1/completions", ""), ("/api/v1/completions", "/api")]
)
def test_a_refused_streamed_completion_gets_the_refusal_as_its_status(monkeypatch, path, root_path):
    asked = input_processor(monkeypatch, {**REFUSAL, "error": {**REFUSAL["error"], "code": 404}})
    body = json.dumps({"prompt": [1, 2], "stream": True}).encode()
    sent, reached = call(body, path=path, root_path=root_path)
    assert reached is None and asked == [body]
    assert sent[0]["status"] == 404
    assert json.loads(sent[1]["body"])["error"]["message"] == "refused"


def test_only_completion_bodies_naming_stream_are_checked_and_accepted_ones_pass(monkeypatch):
    asked = input_processor(monkeypatch, REFUSAL)
    streamed = json.dumps({"prompt": [1, 2], "stream": True}).encode()
    plain = json.dumps({"prompt": [1, 2], "max_tokens": 4}).encode()
    for body, path in [(streamed, "/v1/chat/completions"), (plain, "/v1/completions")]:
        assert call(body, path=path) == ([], body)
    assert asked == []
    asked = input_processor(monkeypatch, None)
    assert call(streamed) == ([], streamed) and asked == [streamed]
