"""sink-window in frame-parallel (AR-DF) mode: the sink frames join both twins' anchors, and
every frame's tokens and fixed offsets equal the dense reference's (``generate_ardf``) with the
policy evicting at every commit, guided requests' hidden twins included; and some video differs
from the full cache's (the eviction changed what was attended)."""

from __future__ import annotations

import pytest

from packcache_vllm.core.policies import make_policy
from tests.engine.test_ardf_oracle import (
    FRAMES,
    GUIDANCE,
    assert_matches_reference,
    make_ardf_llm,
    reference_run,
    run_engine,
    sampler_params,
)

KNOBS = {"sinks": 1, "window": 1}  # the 4-frame request drops frames 1 and 2 in turn


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    from packcache_vllm.reference import ReferenceVideoModel

    return ReferenceVideoModel.from_pretrained(tiny_model_dir)


def test_guided_sink_window_matches_reference(tiny_model_dir, llm, reference, video_prompts,
                                              per_frame):  # fmt: skip
    engine = make_ardf_llm(tiny_model_dir, "sink-window", **KNOBS)
    params = [sampler_params(i, GUIDANCE[i]) for i in range(len(video_prompts))]
    got = run_engine(engine, video_prompts, params, per_frame)
    policy = make_policy("sink-window", **KNOBS)
    assert_matches_reference(got, reference, video_prompts, per_frame, policy, GUIDANCE)
    full_cache = [
        reference_run(reference, prompt, params[i], FRAMES[i])[0]
        for i, prompt in enumerate(video_prompts)
    ]
    assert any(tokens != full for (tokens, _), full in zip(got, full_cache, strict=True))
