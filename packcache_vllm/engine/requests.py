"""Checks on each incoming request, run where it enters vLLM (the input processor, in the API
server process for `vllm serve`): a ValueError here becomes an HTTP 400 for that request only,
before the engine sees it.

- Per-request policy overrides (``vllm_xargs`` -> ``SamplingParams.extra_args``:
  ``packcache_window`` etc., or ``extra_args["packcache"] = {...}`` offline) must be valid.
- The prompt must be a video prompt: text, then zero or more whole frames of the model's grid
  (the generated video starts right after it).
"""

from __future__ import annotations

from packcache_vllm.cli import NO_POLICY, packcache_config_from, parse_request_overrides
from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.layout import FrameLayout, find_frame_start
from packcache_vllm.core.select import make_selector
from packcache_vllm.model.config_hook import frame_grid


def engine_policy(vllm_config) -> PackCacheConfig | None:
    """The engine's PackCache config, or None when the plugin's policy is off."""
    policy, config = packcache_config_from(vllm_config)
    return None if policy == NO_POLICY else config


def request_policy(base: PackCacheConfig, sampling_params) -> PackCacheConfig:
    """The policy of one request: the engine's, with the request's overrides applied."""
    config = parse_request_overrides(getattr(sampling_params, "extra_args", None), base)
    check_engine_supports(config)
    return config


def check_engine_supports(config: PackCacheConfig) -> None:
    if make_selector(config.selector).needs_keys:
        raise ValueError(
            f"packcache selector {config.selector!r} reads cached keys, which the engine does "
            "not do yet (the reference does); use selector 'uniform'"
        )


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


def check_params(vllm_config, params) -> None:
    base = engine_policy(vllm_config)
    if base is not None and hasattr(params, "extra_args"):
        request_policy(base, params)


def check_prompt(vllm_config, prompt_token_ids) -> None:
    if prompt_token_ids is not None and engine_policy(vllm_config) is not None:
        video_layout(vllm_config, prompt_token_ids)
