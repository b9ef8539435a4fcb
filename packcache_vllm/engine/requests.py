"""Checks on each incoming request, run where it enters vLLM (the input processor, in the API
server process for `vllm serve`): a ValueError here becomes an HTTP 400 for that request only,
before the engine sees it.

- Lumos-1's position limits (``core/position_code.py``), for the Lumos-1 model with or without a
  policy (the worker cannot compute positions past them): at most ``MAX_FRAME_START`` text
  tokens before the first frame, at most ``MAX_INDEX`` tokens per request (prompt + max_tokens).
- Per-request policy overrides (``vllm_xargs`` -> ``SamplingParams.extra_args``:
  ``packcache_window`` etc., or ``extra_args["packcache"] = {...}`` offline) must be valid.
- The prompt must be a video prompt: text, then zero or more whole frames of the model's grid,
  each in Lumos-1's frame format (the generated video starts right after it).
- In frame-parallel mode, the ``ardf_*`` sampler knobs and the request's shape
  (``ardf_requests.check_frame_parallel_request``); in next-token mode, no ``ardf_*`` keys.
"""

from __future__ import annotations

from packcache_vllm.core.layout import find_frame_start
from packcache_vllm.core.position_code import MAX_FRAME_START, MAX_INDEX
from packcache_vllm.engine import ardf_requests, pool_fit
from packcache_vllm.engine.request_policy import engine_policy, request_policy, video_layout
from packcache_vllm.engine.vocab_check import check_request_token_ids
from packcache_vllm.model.config_hook import LUMOS_ARCHITECTURE, check_time_rebase
from packcache_vllm.settings import FRAME_PARALLEL, packcache_mode_from

__all__ = ["check_request", "engine_policy", "request_policy", "video_layout"]


def serves_lumos(vllm_config) -> bool:
    """Whether the engine runs this plugin's Lumos-1 model (position codes, their limits)."""
    return vllm_config.model_config.architecture == LUMOS_ARCHITECTURE


def check_position_limits(vllm_config, prompt_token_ids, sampling_params) -> None:
    """Lumos-1's position codes (``core/position_code.py``) carry a request's frame start and
    every logical index through vLLM's int32 M-RoPE delta: ValueError naming the limit and the
    value when the prompt's text or the whole request is longer than they can carry."""
    prompt_len = len(prompt_token_ids)
    text_len = find_frame_start(list(prompt_token_ids))
    if text_len > MAX_FRAME_START:
        no_frame = " (it has no frame: all of it is text)" if text_len == prompt_len else ""
        raise ValueError(
            f"a Lumos-1 prompt has at most {MAX_FRAME_START:,} text tokens before the first "
            f"frame, this prompt has {text_len:,}{no_frame}"
        )
    max_tokens = sampling_params.max_tokens
    if max_tokens is None:  # vLLM stops the request at max_model_len
        max_tokens = vllm_config.model_config.max_model_len - prompt_len
    if prompt_len + max_tokens > MAX_INDEX:
        raise ValueError(
            f"a Lumos-1 request has at most {MAX_INDEX:,} tokens (prompt + max_tokens), got "
            f"{prompt_len + max_tokens:,} (prompt {prompt_len:,} + max_tokens {max_tokens:,})"
        )


def check_request(vllm_config, prompt_token_ids, sampling_params) -> None:
    """All checks of one request: the token ids and position limits of the Lumos-1 model (with or
    without a policy), the rest only when a policy is active. Raises ValueError."""
    check_request_token_ids(vllm_config, prompt_token_ids)
    if prompt_token_ids is None or not hasattr(sampling_params, "extra_args"):
        return
    if serves_lumos(vllm_config):
        check_position_limits(vllm_config, prompt_token_ids, sampling_params)
    base = engine_policy(vllm_config)
    if base is None:
        return
    policy = request_policy(base, sampling_params)
    check_time_rebase(vllm_config.model_config.hf_config, policy, "the request's PackCache policy")
    layout = video_layout(vllm_config, prompt_token_ids)
    if packcache_mode_from(vllm_config) == FRAME_PARALLEL:
        ardf_requests.check_frame_parallel_request(layout, prompt_token_ids, sampling_params)
    else:
        ardf_requests.reject_ardf_keys(sampling_params)
    pool_fit.check_fits_pool(vllm_config, base, layout, prompt_token_ids, sampling_params)
