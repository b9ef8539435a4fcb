"""Every documented limit is checked where a request enters (``requests.check_request``, run in
vLLM's input processor), in both modes and for the Lumos-1 model without a policy too: a
ValueError naming the limit and the value, never a crash in the worker."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from packcache_vllm import cli
from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.layout import LUMOS_TOKENS
from packcache_vllm.engine.requests import check_request
from packcache_vllm.model.config_hook import LUMOS_ARCHITECTURE
from packcache_vllm.model.factory import make_frame

ROWS, COLS, PER_FRAME = 4, 6, 32
TEXT = [300, 301, 302, LUMOS_TOKENS.video_start]
ENTRY = cli.config_entry("packcache", PackCacheConfig.preset("packcache"))
ENGINES = {
    "next-token": {cli.ADDITIONAL_CONFIG_KEY: ENTRY},
    "frame-parallel": {cli.ADDITIONAL_CONFIG_KEY: {**ENTRY, cli.MODE_KEY: cli.FRAME_PARALLEL}},
    "no policy": {},
}


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    """``engine(mode, ...)``: the parts of a VllmConfig that ``check_request`` reads, around the
    tiny checkpoint's config (4 x 6 frames)."""
    hf_config = SimpleNamespace(**json.loads((tiny_model_dir / "config.json").read_text()))
    assert (hf_config.video_rows, hf_config.video_cols) == (ROWS, COLS)

    def make(mode: str, architecture: str = LUMOS_ARCHITECTURE, max_model_len: int = 1 << 20):
        model_config = SimpleNamespace(
            hf_config=hf_config, architecture=architecture, max_model_len=max_model_len
        )
        cache_config = SimpleNamespace(block_size=32, num_gpu_blocks=None)  # pool not known yet
        return SimpleNamespace(
            additional_config=ENGINES[mode], model_config=model_config, cache_config=cache_config
        )

    return make


def params(max_tokens: int = PER_FRAME, **extra_args):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, extra_args=extra_args or None)


def plain(mode: str, max_tokens: int = PER_FRAME):
    """A request with no knobs of its own (no CFG twin in frame-parallel mode)."""
    return params(max_tokens, ardf_cfg_scale=1) if mode == "frame-parallel" else params(max_tokens)


def frame() -> list[int]:
    return make_frame(ROWS, COLS, random.Random(0))


@pytest.mark.parametrize("mode", list(ENGINES))
def test_long_text_before_the_first_frame_is_refused_naming_the_limit(engine, mode):
    long_text = [300] * 4096
    with pytest.raises(ValueError, match=r"at most 4,095 text tokens before the first frame, "
                                         r"this prompt has 4,096"):  # fmt: skip
        check_request(engine(mode), long_text + frame(), plain(mode))
    with pytest.raises(ValueError, match=r"4,095 text tokens .*has 4,096 \(it has no frame"):
        check_request(engine(mode), long_text, plain(mode))
    check_request(engine(mode), [300] * 4095 + frame(), plain(mode))


@pytest.mark.parametrize("mode", list(ENGINES))
def test_tokens_per_request_are_limited_naming_prompt_and_max_tokens(engine, mode):
    prompt = TEXT + frame()  # 36 tokens
    most = 524_287 - len(prompt)
    most -= most % PER_FRAME  # frame-parallel emits whole frames
    check_request(engine(mode), prompt, plain(mode, most))
    too_many = most + PER_FRAME
    with pytest.raises(ValueError, match=r"at most 524,287 tokens \(prompt \+ max_tokens\), got "
                                         rf"{len(prompt) + too_many:,} \(prompt 36 \+ max_tokens "
                                         rf"{too_many:,}\)"):  # fmt: skip
        check_request(engine(mode), prompt, plain(mode, too_many))


def test_max_model_len_bounds_a_request_without_max_tokens(engine):
    prompt = TEXT + frame()
    unset = SimpleNamespace(max_tokens=None, extra_args=None)
    check_request(engine("next-token", max_model_len=524_287), prompt, unset)
    with pytest.raises(ValueError, match=r"at most 524,287 tokens .*got 524,288"):
        check_request(engine("next-token", max_model_len=524_288), prompt, unset)


def test_other_models_without_a_policy_are_not_checked(engine):
    check_request(engine("no policy", architecture="LlamaForCausalLM"), [300] * 5000, params())


@pytest.mark.parametrize(
    ("mode", "extra_args", "message"),
    [
        ("next-token", {"packcache_window": True}, r"extra_args\['packcache_window'\] .*got True"),
        ("next-token", {"packcache_decay": False}, r"extra_args\['packcache_decay'\] .*got False"),
        ("next-token", {"packcache": {"window": True}}, r"\['packcache'\]\['window'\] .*got True"),
        ("frame-parallel", {"ardf_steps_per_frame": True}, r"steps_per_frame must be .*got True"),
        ("frame-parallel", {"ardf_cfg_scale": True}, r"cfg_scale must be a number .*got True"),
        ("frame-parallel", {"packcache_min_keep": True}, r"'packcache_min_keep'.*True"),
    ],
)  # fmt: skip
def test_a_boolean_is_refused_for_every_numeric_knob(engine, mode, extra_args, message):
    with pytest.raises(ValueError, match=message):
        check_request(engine(mode), TEXT + frame(), params(**extra_args))


@pytest.mark.parametrize("mode", ["next-token", "frame-parallel"])
def test_a_frame_of_the_right_length_but_wrong_tokens_is_refused(engine, mode):
    prompt = TEXT + frame()
    prompt[len(TEXT) + 9] = 65_600  # a visual token where row 0's <newline> belongs
    with pytest.raises(ValueError, match=r"not a video prompt for this model \(4x6 frames\): "
                                         r"frame 0 .*offset 9: expected <newline> \(8803\) ending "
                                         r"row 0, got 65600"):  # fmt: skip
        check_request(engine(mode), prompt, plain(mode))
