"""A checkpoint whose MM-RoPE cannot rebase time (head_dim 48: hidden 192, 4 heads) in vLLM.

At head_dim 48 rotate-half pairs t channels with h/w channels, so dropping frames (which rebases
time) has no exact implementation (``core/rope.py``). A policy that drops frames is refused when
the engine is configured, naming head_dim and why; policy ``full`` serves the checkpoint, exactly
as the dense reference, and refuses up front a request whose own window would drop frames.
"""

from __future__ import annotations

import json
import random

import pytest

from packcache_vllm.core.budget import PackCacheConfig
from tests.engine.conftest import POLICY_ENGINE_SETTINGS as ENGINE_SETTINGS
from tests.engine.conftest import keep_alive

REFUSAL = r"head_dim 48\b.*h/w channel"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from packcache_vllm.model.factory import build_tiny_lumos

    directory = tmp_path_factory.mktemp("lumos-head-dim-48")
    return build_tiny_lumos(directory, seed=0, hidden_size=192, num_attention_heads=4)


@pytest.fixture(scope="module")
def prompt(model_dir) -> list[int]:
    from packcache_vllm.model.factory import make_video_prompt

    config = json.loads((model_dir / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] == 48
    text = [4 + b for b in b"a red ball"]
    rows, cols = config["video_rows"], config["video_cols"]
    return make_video_prompt(rows, cols, text, with_condition_frame=True, rng=random.Random(1))


@pytest.mark.parametrize("policy", ["sliding", "packcache"])
def test_a_policy_that_drops_frames_is_refused_at_start_up(model_dir, policy):
    from vllm import LLM

    from packcache_vllm.cli import engine_overrides

    with pytest.raises(ValueError, match=REFUSAL):
        LLM(str(model_dir), **ENGINE_SETTINGS, **engine_overrides(policy, window=2))


def test_full_policy_serves_exactly_and_refuses_a_request_that_drops_frames(model_dir, prompt):
    from vllm import LLM, SamplingParams

    from packcache_vllm.cli import engine_overrides
    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel

    llm = keep_alive(LLM(str(model_dir), **ENGINE_SETTINGS, **engine_overrides("full")))
    reference = ReferenceVideoModel.from_pretrained(model_dir)
    layout = reference.layout_for(prompt)
    n = 5 * layout.tokens_per_frame

    def params(**extra_args) -> SamplingParams:
        return SamplingParams(
            temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False, extra_args=extra_args
        )

    with pytest.raises(ValueError, match=REFUSAL):
        llm.generate([{"prompt_token_ids": prompt}], params(packcache_window=2), use_tqdm=False)
    served = llm.generate([{"prompt_token_ids": prompt}], params(), use_tqdm=False)
    full = PackCachePolicy(PackCacheConfig.preset("full"))
    expected = reference.generate(prompt, layout, n, full).token_ids
    assert tuple(served[0].outputs[0].token_ids) == expected
