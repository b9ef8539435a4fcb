"""Failure isolation on the real multi-process `vllm serve`, in both generation modes: when the
plugin's work for one request raises (a fault injected at one stage, ``engine.faults``), that
request alone fails (its client gets HTTP 500: vLLM's ``error`` finish reason), the concurrent
requests finish token-exact against the dense reference, every block returns to the pool, and
the server keeps serving.

One server per mode, started with ``PACKCACHE_FAULT_INJECTION=all``; the stages are parameters.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.engine import faults
from tests.engine.test_ardf_oracle import sampler_params
from tests.engine.test_ardf_serve import wait_until_idle, xargs
from tests.engine.test_serve import running_server

pytestmark = pytest.mark.server

WORKER_STAGES = ("positions", "moves", "rerotation", "sorts")
NEXT_TOKEN_STAGES = ("planning", *WORKER_STAGES)
FRAME_PARALLEL_STAGES = (*NEXT_TOKEN_STAGES, "twin", "pairing")
# next-token: W=3 thins frames, then drops the oldest once 4 are complete (re-rotation)
NEXT_TOKEN = {"window": 3, "min_keep": 0.25, "frames": 5}
# frame-parallel: W=2 drops the oldest once 3 frames are complete
FRAME_PARALLEL = {"window": 2, "min_keep": 0.5, "frames": 4}
GUIDANCE = (3.0, 1.0, 5.0)  # the faulty request and the third have a twin


@dataclass(frozen=True)
class Ask:
    """One completion request: prompt token ids, tokens to generate, ``vllm_xargs``."""

    prompt: list[int]
    max_tokens: int
    xargs: dict = field(default_factory=dict)


@contextlib.contextmanager
def armed_server(model_dir, tmp_path_factory, name: str, *flags: str):
    """`vllm serve` with every fault stage armed; yields (url, log path)."""
    log_path = tmp_path_factory.mktemp(name) / "serve.log"
    with pytest.MonkeyPatch.context() as env:
        env.setenv(faults.FAULTS_ENV, "all")
        with running_server(model_dir, log_path, *flags) as url:
            yield url, log_path


def complete(url: str, model, ask: Ask) -> list[int]:
    from openai import OpenAI

    reply = OpenAI(base_url=url, api_key="unused", max_retries=0).completions.create(
        model=str(model),
        prompt=ask.prompt,
        max_tokens=ask.max_tokens,
        temperature=0.0,
        extra_body={"return_token_ids": True, "ignore_eos": True, "vllm_xargs": ask.xargs},
    )
    return list(reply.choices[0].token_ids)


def check_one_request_fails_alone(
    url, log_path, model, stage: str, faulty: Ask, healthy: list[Ask], expected: list[tuple]
) -> None:
    """``faulty`` (with the fault at ``stage``) runs concurrently with ``healthy``: it gets HTTP
    500, they get ``expected``; then the server is idle with an empty KV cache, and a short
    follow-up request (the first healthy one's first frames) still gets its reference tokens."""
    import openai

    faulty = Ask(faulty.prompt, faulty.max_tokens, {**faulty.xargs, faults.REQUEST_KEY: stage})
    with ThreadPoolExecutor(1 + len(healthy)) as pool:
        failed = pool.submit(complete, url, model, faulty)
        served = [pool.submit(complete, url, model, ask) for ask in healthy]
        with pytest.raises(openai.InternalServerError):
            failed.result()
        for i, (reply, tokens) in enumerate(zip(served, expected, strict=True)):
            assert tuple(reply.result()) == tokens, f"healthy request {i} beside a {stage} fault"
    assert f"InjectedFault: injected {stage} fault" in log_path.read_text()
    wait_until_idle(url)  # nothing running, KV cache usage 0: the failed request's blocks are back
    follow_up = Ask(healthy[0].prompt, healthy[0].max_tokens // 2, healthy[0].xargs)
    assert tuple(complete(url, model, follow_up)) == expected[0][: follow_up.max_tokens]


# --- next-token mode ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def next_token_server(tiny_model_dir, tmp_path_factory):
    flags = ("--kv-policy", "packcache", "--packcache-window", str(NEXT_TOKEN["window"]),
             "--packcache-min-keep", str(NEXT_TOKEN["min_keep"]))  # fmt: skip
    with armed_server(tiny_model_dir, tmp_path_factory, "serve-faults", *flags) as server:
        yield server


@pytest.fixture(scope="module")
def next_token_expected(tiny_model_dir, video_prompts, per_frame) -> list[tuple]:
    """The dense reference's tokens for the two healthy requests (prompts 1 and 2)."""
    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel

    reference = ReferenceVideoModel.from_pretrained(tiny_model_dir)
    config = PackCacheConfig.preset(
        "packcache", window=NEXT_TOKEN["window"], min_keep=NEXT_TOKEN["min_keep"]
    )
    num_tokens = NEXT_TOKEN["frames"] * per_frame
    return [
        reference.generate(
            p, reference.layout_for(p), num_tokens, PackCachePolicy(config)
        ).token_ids
        for p in video_prompts[1:]
    ]


@pytest.mark.parametrize("stage", NEXT_TOKEN_STAGES)
def test_next_token_fault_fails_one_request(
    stage, next_token_server, next_token_expected, tiny_model_dir, video_prompts, per_frame
):
    url, log_path = next_token_server
    num_tokens = NEXT_TOKEN["frames"] * per_frame
    # key_norm: the worker sorts each completing frame by its keys (the sorts stage)
    faulty = Ask(video_prompts[0], num_tokens, {"packcache_selector": "key_norm"})
    healthy = [Ask(p, num_tokens) for p in video_prompts[1:]]
    check_one_request_fails_alone(
        url, log_path, tiny_model_dir, stage, faulty, healthy, next_token_expected
    )


# --- frame-parallel mode with guidance twins ----------------------------------------------------


@pytest.fixture(scope="module")
def frame_parallel_server(tiny_model_dir, tmp_path_factory):
    flags = ("--kv-policy", "packcache", "--packcache-window", str(FRAME_PARALLEL["window"]),
             "--packcache-min-keep", str(FRAME_PARALLEL["min_keep"]),
             "--packcache-mode", "frame-parallel")  # fmt: skip
    with armed_server(tiny_model_dir, tmp_path_factory, "serve-ardf-faults", *flags) as server:
        yield server


@pytest.fixture(scope="module")
def frame_parallel_expected(tiny_model_dir, video_prompts) -> list[tuple]:
    """The dense AR-DF reference's tokens for the two healthy requests (prompts 1 and 2, the
    second with guidance)."""
    from packcache_vllm.reference import ReferenceVideoModel
    from packcache_vllm.reference_ardf import generate_ardf

    reference = ReferenceVideoModel.from_pretrained(tiny_model_dir)
    config = PackCacheConfig.preset(
        "packcache", window=FRAME_PARALLEL["window"], min_keep=FRAME_PARALLEL["min_keep"]
    )
    frames = FRAME_PARALLEL["frames"]
    return [
        generate_ardf(
            reference, video_prompts[i], frames, sampler_params(i, GUIDANCE[i]), config
        ).token_ids
        for i in (1, 2)
    ]


@pytest.mark.parametrize("stage", FRAME_PARALLEL_STAGES)
def test_frame_parallel_fault_fails_one_request(
    stage, frame_parallel_server, frame_parallel_expected, tiny_model_dir, video_prompts, per_frame
):
    url, log_path = frame_parallel_server
    num_tokens = FRAME_PARALLEL["frames"] * per_frame
    faulty_xargs = {**xargs(sampler_params(0, GUIDANCE[0])), "packcache_selector": "key_norm"}
    faulty = Ask(video_prompts[0], num_tokens, faulty_xargs)
    healthy = [
        Ask(video_prompts[i], num_tokens, xargs(sampler_params(i, GUIDANCE[i]))) for i in (1, 2)
    ]
    check_one_request_fails_alone(
        url, log_path, tiny_model_dir, stage, faulty, healthy, frame_parallel_expected
    )
