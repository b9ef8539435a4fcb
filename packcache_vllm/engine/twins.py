"""The unconditional twin of a frame-parallel request with classifier-free guidance.

A request with ``cfg_scale != 1`` gets a hidden engine request, its twin: the same video tokens
without the text (``core.layout.unconditional_prompt``: the prompt from ``<video_start>``
on), the same sampler knobs, its own positions, blocks and PackCache state. The scheduler adds
it with its request, schedules the two canvases in the same step, counts both in admission,
finishes and aborts them together and keeps the twin's outputs from the API; the runner feeds
the twin the conditioned request's canvases and commits and blends the two logits.
"""

from __future__ import annotations

from packcache_vllm.engine.ardf_requests import ardf_params_of

TWIN_SUFFIX = "#uncond"


def needs_twin(sampling_params) -> bool:
    """Whether a frame-parallel request with these parameters is guided (``ardf_cfg_scale`` != 1),
    so brings a twin."""
    return ardf_params_of(sampling_params).cfg_scale != 1


def twin_id(request_id: str) -> str:
    """The engine id of ``request_id``'s unconditional twin."""
    return request_id + TWIN_SUFFIX


def is_twin(request_id: str) -> bool:
    return request_id.endswith(TWIN_SUFFIX)


def conditioned_id(request_id: str) -> str:
    """The conditioned request of a twin id (``request_id`` itself for a conditioned one)."""
    return request_id.removesuffix(TWIN_SUFFIX)


def make_twin(request, prompt_token_ids: list[int]):
    """A vLLM ``Request`` for the twin of ``request`` with ``prompt_token_ids``: the same
    sampling parameters (so the same ``ardf_*`` knobs and length), but it never stops on its own
    (it finishes when its conditioned request does)."""
    from vllm.v1.request import Request

    sampling_params = request.sampling_params.clone()
    sampling_params.ignore_eos = True
    sampling_params.stop_token_ids = []
    return Request(
        request_id=twin_id(request.request_id),
        prompt_token_ids=list(prompt_token_ids),
        sampling_params=sampling_params,
        pooling_params=None,
        client_index=request.client_index,
        arrival_time=request.arrival_time,
        priority=request.priority,
    )
