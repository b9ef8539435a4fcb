"""What only the raw HTTP request shows, checked before vLLM's OpenAI server parses it.

vLLM's request schema declares ``vllm_xargs`` values as ``str | int | float | list``, so pydantic
turns JSON ``true`` into ``1`` and ``false`` into ``0``: ``{"packcache_window": true}`` would run
as W=1 with nothing downstream able to tell. ``RequestGuard`` reads the JSON body first and
answers HTTP 400 (vLLM's error format) when a ``packcache_*`` / ``ardf_*`` key of ``vllm_xargs``
holds a boolean (``settings.refuse_boolean_knobs``).

vLLM 0.32 runs its input processor, where the per-request checks live
(``requests.check_request``), inside a streamed request's stream: a refused ``"stream": true``
request would get HTTP 200 and then an error event. For a streamed ``/v1/completions`` request
the guard runs the input processor first (``seam.process.streamed_completion_refusal``) and
answers a refusal with the HTTP 400 and body a plain request gets. Every other request passes
through untouched.

It is a plain ASGI middleware; the streamed check reaches vLLM through the seam.
``--kv-policy`` adds it to vLLM's ``--middleware`` list at parse time
(``seam.process.add_request_guard``); offline, booleans arrive as booleans and the knob checks
refuse them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from packcache_vllm.settings import refuse_boolean_knobs

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
XARGS_FIELD = b"vllm_xargs"
STREAM_FIELD = b"stream"
COMPLETIONS_ROUTE = "/v1/completions"


class RequestGuard:
    """ASGI middleware: HTTP 400 for a JSON request whose ``vllm_xargs`` gives a PackCache or
    frame-parallel knob a boolean, and vLLM's 4xx for a streamed completion its input processor
    refuses; the body is read once and replayed to the app."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not is_json(scope):
            await self.app(scope, receive, send)
            return
        messages, body = await read_body(receive)
        error = boolean_knob_error(body)
        if error is not None:
            await send_error(send, knob_error_body(error))
            return
        refusal = await streamed_completion_refusal(scope, body)
        if refusal is not None:
            await send_error(send, refusal)
            return
        await self.app(scope, replayed(messages, receive), send)


def is_json(scope: Message) -> bool:
    """Whether FastAPI would read the body as JSON: a JSON content type, or none at all."""
    content_type = dict(scope.get("headers", ())).get(b"content-type")
    return content_type is None or b"json" in content_type


async def read_body(receive: Receive) -> tuple[list[Message], bytes]:
    """Every message up to the body's last chunk (or a disconnect), and the body."""
    messages: list[Message] = []
    body = bytearray()
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return messages, bytes(body)


def replayed(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out ``messages`` again, then the connection's own."""
    pending = list(messages)

    async def receive_again() -> Message:
        return pending.pop(0) if pending else await receive()

    return receive_again


def boolean_knob_error(body: bytes) -> str | None:
    """The message refusing ``body``'s boolean knob, or None. Bodies that cannot hold one (no
    ``vllm_xargs``, no ``true``/``false``) are not parsed; malformed JSON is left to vLLM."""
    if XARGS_FIELD not in body or (b"true" not in body and b"false" not in body):
        return None
    try:
        request = json.loads(body)
    except ValueError:
        return None
    xargs = request.get("vllm_xargs") if isinstance(request, dict) else None
    if not isinstance(xargs, dict):
        return None
    try:
        refuse_boolean_knobs(xargs)
    except ValueError as err:
        return str(err)
    return None


def route_path(scope: Message) -> str:
    """The request's path as the app's routes see it (without the server's ``--root-path``)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root + "/") else path


async def streamed_completion_refusal(scope: Message, body: bytes) -> dict | None:
    """vLLM's error body for a streamed ``/v1/completions`` request its input processor
    refuses, or None (``seam.process.streamed_completion_refusal``). A body without a
    ``stream`` key is never streamed and goes to vLLM unparsed, as does every other route."""
    if route_path(scope) != COMPLETIONS_ROUTE or STREAM_FIELD not in body:
        return None
    return await input_processor_refusal(scope, body)


async def input_processor_refusal(scope: Message, body: bytes) -> dict | None:
    """``seam.process.streamed_completion_refusal``, imported on first use (vLLM is loaded only
    in the server)."""
    from packcache_vllm.engine import compat

    return await compat.streamed_completion_refusal(scope, body)


def knob_error_body(message: str) -> dict:
    """vLLM's error body (``ErrorResponse``: message, type, param, code) refusing a knob."""
    error = {"message": message, "type": "BadRequestError", "param": "vllm_xargs", "code": 400}
    return {"error": error}


async def send_error(send: Send, body: dict) -> None:
    """vLLM's error body as JSON, with its ``code`` as the HTTP status."""
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": body["error"]["code"], "headers": headers})
    await send({"type": "http.response.body", "body": payload})
