"""SIGTERM to `vllm serve --kv-policy packcache` with streamed videos in flight: every client
gets a terminal response (finish reason "abort" then the end of the stream, or vLLM's error event
when its output handler sees the engine core die first), and the server exits.

vLLM 0.32 alone (``--shutdown-timeout 0``) kills its engine core right after signalling it, so
in-flight requests end only if the engine core happens to abort them first; with the plugin's
synchronous scheduling it is inside a step and does not, and the clients would wait for as long
as their connections stay open (``compat.install_shutdown_aborts``)."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field

import pytest

from tests.engine.test_serve import running_server

pytestmark = pytest.mark.server

CLIENTS = 8
TERMINAL_RESPONSE_S = 30  # generous: the response comes within a second on a quiet machine
FIRST_CHUNK_S = 240  # the videos have started (a loaded machine may be slow to get there)
SERVER_EXIT_S = 60
# Videos of ~1,000 frames of the tiny model: no machine finishes one between the first chunk
# and the signal (at --max-model-len 2048 a quiet machine sometimes did: finish "length").
MAX_MODEL_LEN = 32768


def server_process(url: str):
    """The `vllm serve` child process of this process that serves ``url``."""
    import psutil

    port = url.rsplit(":", 1)[1].split("/")[0]
    for child in psutil.Process().children(recursive=False):
        if "serve" in child.cmdline() and port in child.cmdline():
            return child
    raise RuntimeError(f"no vllm serve child process serves {url}")


@dataclass
class StreamClient:
    """One streamed video request on its own thread; records how its stream ended."""

    url: str
    model: str
    prompt: list[int]
    max_tokens: int
    started: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    finish_reason: str | None = None
    error: str | None = None

    def run(self) -> None:
        from openai import OpenAI

        client = OpenAI(base_url=self.url, api_key="unused", max_retries=0)
        try:
            stream = client.completions.create(
                model=self.model,
                prompt=self.prompt,
                max_tokens=self.max_tokens,
                temperature=0.0,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            for chunk in stream:
                self.started.set()
                for choice in chunk.choices:
                    self.finish_reason = choice.finish_reason or self.finish_reason
        except Exception as err:  # reported by the test: any way the stream broke
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.started.set()
            self.ended.set()


def is_engine_dead_event(error: str | None) -> bool:
    """The error event vLLM streams when its output handler sees the killed engine core before
    the plugin's shutdown aborts the request (a race that a loaded machine sometimes loses): also
    a terminal response."""
    return error is not None and error.startswith("APIError: EngineCore encountered an issue")


def test_sigterm_gives_every_in_flight_client_a_terminal_response(
    tiny_model_dir, video_prompts, tmp_path
):
    log_path = tmp_path / "serve.log"
    flags = ("--kv-policy", "packcache", "--packcache-window", "2",
             "--max-model-len", str(MAX_MODEL_LEN))  # fmt: skip
    with running_server(tiny_model_dir, log_path, *flags) as url:
        server = server_process(url)
        max_tokens = MAX_MODEL_LEN - max(map(len, video_prompts))  # far longer than the test
        clients = [
            StreamClient(
                url, str(tiny_model_dir), video_prompts[i % len(video_prompts)], max_tokens
            )
            for i in range(CLIENTS)
        ]
        for client in clients:
            threading.Thread(target=client.run, daemon=True).start()
        for client in clients:
            assert client.started.wait(FIRST_CHUNK_S), "a video never started"
        assert not any(c.ended.is_set() for c in clients), [c.error for c in clients]
        os.kill(server.pid, signal.SIGTERM)
        unanswered = [i for i, c in enumerate(clients) if not c.ended.wait(TERMINAL_RESPONSE_S)]
        assert not unanswered, f"clients {unanswered} still waiting {TERMINAL_RESPONSE_S} s on"
        for c in clients:  # a terminal response: aborted, or an error event if the engine died
            assert (c.finish_reason, c.error) == ("abort", None) or is_engine_dead_event(c.error)
        server.wait(SERVER_EXIT_S)
