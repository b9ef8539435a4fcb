"""Per-request knobs and checks of frame-parallel (AR-DF) requests.

A request tunes Lumos-1's sampler through ``SamplingParams.extra_args`` (``vllm_xargs`` over
HTTP) with flat keys ``ardf_<knob>``, the knobs of ``core.maskgit.ARDFSamplingParams``:
``ardf_steps_per_frame``, ``ardf_cfg_scale``, ``ardf_top_k``, ``ardf_temperature``,
``ardf_schedule``, ``ardf_seed``, ``ardf_history_mask_ratio``, ``ardf_condition_mask_ratio``,
``ardf_ranking``. Knobs not given keep Lumos-1's defaults (``core.maskgit`` says where in its
code each comes from). A bad key or value is a ValueError naming the key, the value and the
allowed range (an HTTP 400 through ``requests.check_request``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packcache_vllm.core.layout import FrameLayout, unconditional_prompt
from packcache_vllm.core.maskgit import ARDFSamplingParams
from packcache_vllm.settings import ARDF_REQUEST_PREFIX as ARDF_PREFIX


def ardf_keys(extra_args: Mapping[str, Any] | None) -> list[str]:
    """The ``ardf_*`` keys of ``extra_args``."""
    return [k for k in (extra_args or {}) if isinstance(k, str) and k.startswith(ARDF_PREFIX)]


def ardf_params_of(sampling_params) -> ARDFSamplingParams:
    """The request's validated sampler knobs: Lumos-1's defaults with its ``ardf_*`` overrides."""
    extra_args = getattr(sampling_params, "extra_args", None) or {}
    overrides = {}
    valid = [ARDF_PREFIX + name for name in ARDFSamplingParams.knob_names()]
    for key in ardf_keys(extra_args):
        if key not in valid:
            raise ValueError(f"unknown frame-parallel request key {key!r}; valid keys: {valid}")
        overrides[key.removeprefix(ARDF_PREFIX)] = extra_args[key]
    try:
        return ARDFSamplingParams().with_overrides(overrides)
    except ValueError as err:
        raise ValueError(f"extra_args {sorted(overrides)}: {err}") from err


def check_frame_parallel_request(
    layout: FrameLayout, prompt_token_ids, sampling_params
) -> ARDFSamplingParams:
    """All frame-parallel checks of one request; returns its sampler knobs."""
    params = ardf_params_of(sampling_params)
    max_tokens = sampling_params.max_tokens
    per_frame = layout.tokens_per_frame
    if max_tokens is None or max_tokens < per_frame or max_tokens % per_frame:
        raise ValueError(
            f"a frame-parallel request emits whole frames: max_tokens must be a positive "
            f"multiple of the frame size {per_frame}, got {max_tokens}"
        )
    if params.cfg_scale != 1:
        unconditional_prompt(prompt_token_ids)  # raises when there is no <video_start>
    return params


def reject_ardf_keys(sampling_params) -> None:
    """Next-token mode: ``ardf_*`` keys are an error (they would otherwise be ignored)."""
    keys = ardf_keys(getattr(sampling_params, "extra_args", None))
    if keys:
        raise ValueError(
            f"extra_args {keys} configure frame-parallel generation; this engine runs "
            "next-token mode (start it with --packcache-mode frame-parallel)"
        )
