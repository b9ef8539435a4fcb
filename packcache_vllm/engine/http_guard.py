"""What only the raw HTTP request shows, checked before vLLM's OpenAI server parses it.

vLLM's request schema declares ``vllm_xargs`` values as ``str | int | float | list``, so pydantic
turns JSON ``true`` into ``1`` and ``false`` into ``0``: ``{"packcache_window": true}`` would run
as W=1 with nothing downstream able to tell. ``BooleanKnobGuard`` reads the JSON body first and
answers HTTP 400 (vLLM's error format) when a ``packcache_*`` / ``ardf_*`` key of ``vllm_xargs``
holds a boolean (``settings.refuse_boolean_knobs``); every other request passes through untouched.

It is a plain ASGI middleware (no vLLM import). ``--kv-policy`` adds it to vLLM's
``--middleware`` list at parse time (``seam.process.add_request_guard``); offline, booleans
arrive as booleans and the knob checks refuse them.
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


class BooleanKnobGuard:
    """ASGI middleware: HTTP 400 for a JSON request whose ``vllm_xargs`` gives a PackCache or
    frame-parallel knob a boolean; the body is read once and replayed to the app."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not is_json(scope):
            await self.app(scope, receive, send)
            return
        messages, body = await read_body(receive)
        error = boolean_knob_error(body)
        if error is not None:
            await send_bad_request(send, error)
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


async def send_bad_request(send: Send, message: str) -> None:
    """HTTP 400 with vLLM's error body (``ErrorResponse``: message, type, param, code)."""
    error = {"message": message, "type": "BadRequestError", "param": "vllm_xargs", "code": 400}
    payload = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
