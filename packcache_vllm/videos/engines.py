"""Where a video's tokens come from: the engine a server process holds.

``LocalEngine`` wraps vLLM's engine client (``AsyncLLM``) in the process that owns it: on
`vllm serve` the API server's, on Ray Serve an LLM replica's. A job service talks to any object
with the same two coroutines (``check``, ``token_deltas``): on Ray Serve the ingress holds a
``scale.videos.ReplicaEngine``, which calls these in an LLM replica through its handle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from packcache_vllm.core.layout import tokens_per_frame
from packcache_vllm.engine.requests import check_request
from packcache_vllm.videos.params import KNOBS_FIELD, ApiError, VideoParams


class VideoEngine(Protocol):
    async def check(self, params: VideoParams) -> None:
        """ApiError (4xx naming the problem) when the engine would refuse the video."""

    def token_deltas(self, params: VideoParams, request_id: str) -> AsyncIterator[list[int]]:
        """The video's generated token ids, in pieces as the engine streams them."""


def sampling_params(params: VideoParams):
    """vLLM SamplingParams of the video (streamed in deltas); ApiError for a bad value."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    try:
        return SamplingParams(
            temperature=params.temperature,
            seed=params.seed,
            max_tokens=params.max_tokens,
            ignore_eos=True,
            detokenize=False,
            extra_args=dict(params.extra_args),
            output_kind=RequestOutputKind.DELTA,
        )
    except (ValueError, TypeError) as err:
        raise ApiError(400, f"packcache.temperature / packcache.seed: {err}", KNOBS_FIELD) from err


def check_for_engine(vllm_config, params: VideoParams, sampling) -> None:
    """The engine's own per-request checks (policy and sampler knobs, position limits, pool
    fit) and the context length, before a job exists; ApiError naming the problem."""
    max_len = vllm_config.model_config.max_model_len
    needed = len(params.prompt_ids) + params.max_tokens
    if needed > max_len:
        raise ApiError(
            400,
            f"this video needs {needed} tokens (prompt {len(params.prompt_ids)} + "
            f"{params.frames_to_generate} frames x "
            f"{tokens_per_frame(params.shape.rows, params.shape.cols)}), the server's "
            f"max_model_len is {max_len}: ask for fewer seconds or a shorter prompt",
            "seconds",
        )
    try:
        check_request(vllm_config, params.prompt_ids, sampling)
    except ValueError as err:
        raise ApiError(400, str(err), KNOBS_FIELD) from err


class LocalEngine:
    """The engine client of this process (``engine_client.vllm_config`` is its config)."""

    def __init__(self, engine_client):
        self.engine_client = engine_client

    async def check(self, params: VideoParams) -> None:
        check_for_engine(self.engine_client.vllm_config, params, sampling_params(params))

    async def token_deltas(self, params: VideoParams, request_id: str):
        request = {"prompt_token_ids": params.prompt_ids}
        sampling = sampling_params(params)
        async for output in self.engine_client.generate(request, sampling, request_id=request_id):
            yield list(output.outputs[0].token_ids)
