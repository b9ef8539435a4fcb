"""Per-request knobs of frame-parallel requests (``vllm_xargs`` ``ardf_*``): parsed over
Lumos-1's defaults, and rejected with the key, the value and the range when bad."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from packcache_vllm.core.layout import FrameLayout
from packcache_vllm.core.maskgit import ARDFSamplingParams
from packcache_vllm.engine.ardf_requests import (
    ardf_params_of,
    check_frame_parallel_request,
    reject_ardf_keys,
)

LAYOUT = FrameLayout(frame_start=3, anchor_len=3, rows=4, cols=6)  # 32 tokens per frame


def request(max_tokens: int = 64, **extra_args):
    return SimpleNamespace(max_tokens=max_tokens, extra_args=extra_args)


def test_defaults_are_lumos_1s():
    params = ardf_params_of(request())
    assert params == ARDFSamplingParams()
    assert (params.steps_per_frame, params.cfg_scale, params.top_k) == (50, 15.0, None)
    assert (params.schedule, params.history_mask_ratio) == ("cosine", 0.7)
    assert (params.condition_mask_ratio, params.ranking) == (0.0, "exact")


def test_overrides_are_applied():
    params = ardf_params_of(
        request(ardf_steps_per_frame=4, ardf_cfg_scale=1, ardf_seed=7, ardf_schedule="linear")
    )
    assert params == ARDFSamplingParams(steps_per_frame=4, cfg_scale=1.0, seed=7, schedule="linear")


@pytest.mark.parametrize(
    ("extra_args", "message"),
    [
        ({"ardf_steps_per_frame": 0}, r"steps_per_frame must be an integer \[1, 1000\], got 0"),
        ({"ardf_cfg_scale": 101}, r"cfg_scale must be a number in \[0, 100\], got 101"),
        ({"ardf_top_k": 0}, r"top_k must be an integer >= 1, got 0"),
        ({"ardf_temperature": -1.0}, r"temperature must be a number in \[0, 100\], got -1.0"),
        ({"ardf_schedule": "square"}, r"schedule must be one of \['cosine', 'linear'\]"),
        ({"ardf_seed": -3}, r"seed must be an integer \[0, 9223372036854775807\], got -3"),
        ({"ardf_history_mask_ratio": 1.5}, r"history_mask_ratio must be a number in \[0, 1\]"),
        ({"ardf_steps": 4}, r"unknown frame-parallel request key 'ardf_steps'"),
    ],
)  # fmt: skip
def test_bad_knob_names_key_value_and_range(extra_args, message):
    with pytest.raises(ValueError, match=message):
        ardf_params_of(request(**extra_args))


def test_max_tokens_must_be_whole_frames():
    prompt = [1, 2, 3]
    check_frame_parallel_request(LAYOUT, prompt, request(64, ardf_cfg_scale=1))
    with pytest.raises(ValueError, match="multiple of the frame size 32, got 40"):
        check_frame_parallel_request(LAYOUT, prompt, request(40, ardf_cfg_scale=1))


def test_guidance_needs_a_video_start_token():
    with pytest.raises(ValueError, match="needs a <video_start> token"):
        check_frame_parallel_request(LAYOUT, [1, 2, 3], request(64, ardf_cfg_scale=2.0))


def test_next_token_requests_may_not_carry_ardf_keys():
    reject_ardf_keys(request(packcache_window=2))
    with pytest.raises(ValueError, match=r"\['ardf_seed'\] configure frame-parallel generation"):
        reject_ardf_keys(request(ardf_seed=1))
