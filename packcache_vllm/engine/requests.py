"""Checks on each incoming request, run where it enters vLLM (the input processor, in the API
server process for `vllm serve`): a ValueError here becomes an HTTP 400 for that request only,
before the engine sees it.

- Per-request policy overrides (``vllm_xargs`` -> ``SamplingParams.extra_args``:
  ``packcache_window`` etc., or ``extra_args["packcache"] = {...}`` offline) must be valid.
- The prompt must be a video prompt: text, then zero or more whole frames of the model's grid
  (the generated video starts right after it).
- In frame-parallel mode, the ``ardf_*`` sampler knobs and the request's shape
  (``ardf_requests.check_frame_parallel_request``); in next-token mode, no ``ardf_*`` keys.
"""

from __future__ import annotations

from packcache_vllm.cli import (
    FRAME_PARALLEL,
    NO_POLICY,
    packcache_config_from,
    packcache_mode_from,
    parse_request_overrides,
)
from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.layout import FrameLayout, find_frame_start
from packcache_vllm.engine import ardf_requests
from packcache_vllm.engine.vocab_check import check_request_token_ids
from packcache_vllm.model.config_hook import check_time_rebase, frame_grid


def engine_policy(vllm_config) -> PackCacheConfig | None:
    """The engine's PackCache config, or None when the plugin's policy is off."""
    policy, config = packcache_config_from(vllm_config)
    return None if policy == NO_POLICY else config


def request_policy(base: PackCacheConfig, sampling_params) -> PackCacheConfig:
    """The policy of one request: the engine's, with the request's overrides applied."""
    return parse_request_overrides(getattr(sampling_params, "extra_args", None), base)


def video_layout(vllm_config, prompt_token_ids) -> FrameLayout:
    """The request's frame layout; ValueError naming the problem if the prompt is not a video."""
    rows, cols = frame_grid(vllm_config.model_config.hf_config)
    prompt = list(prompt_token_ids)
    try:
        return FrameLayout(find_frame_start(prompt), len(prompt), rows, cols)
    except ValueError as err:
        raise ValueError(
            f"not a video prompt for this model ({rows}x{cols} frames): {err}"
        ) from err


def bound_tokens(layout: FrameLayout, config: PackCacheConfig, max_tokens: int) -> int:
    """The most tokens a request's cache ever holds: anchors + W frames + the current frame
    (or the whole request, if shorter)."""
    longest = layout.anchor_len + max_tokens
    if not config.is_bounded:
        return longest
    return min(longest, layout.anchor_len + (config.window + 1) * layout.tokens_per_frame)


def check_request(vllm_config, prompt_token_ids, sampling_params) -> None:
    """All checks of one request: its token ids against the Lumos-1 model's vocabulary (with or
    without a policy), the rest only when a policy is active. Raises ValueError."""
    check_request_token_ids(vllm_config, prompt_token_ids)
    base = engine_policy(vllm_config)
    if base is None or prompt_token_ids is None or not hasattr(sampling_params, "extra_args"):
        return
    policy = request_policy(base, sampling_params)
    check_time_rebase(vllm_config.model_config.hf_config, policy, "the request's PackCache policy")
    layout = video_layout(vllm_config, prompt_token_ids)
    if packcache_mode_from(vllm_config) == FRAME_PARALLEL:
        ardf_requests.check_frame_parallel_request(layout, prompt_token_ids, sampling_params)
    else:
        ardf_requests.reject_ardf_keys(sampling_params)
    # No pool-size check is needed: vLLM refuses to start unless one max_model_len request fits
    # the pool, and a request's bounded footprint is at most that.
