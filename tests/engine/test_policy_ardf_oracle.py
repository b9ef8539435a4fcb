"""The KV policies in frame-parallel (AR-DF) mode: every frame's tokens and fixed offsets equal
the dense reference's (``generate_ardf``) with the policy evicting at every commit, guided
requests' hidden twins included, each twin with its own policy state; and the policy changed
something the oracle can see.

* sink-window: the sink frames join both twins' anchors; some video differs from the full
  cache's.
* geometric: frames are thinned from their first successor on (no fill phase); some video differs
  from the full cache's.
* dedupe: each twin orders a frame by its own cached keys when the frame's successor commits;
  some video differs from PackCache's with the same budget (the uniform selector's order).
"""

from __future__ import annotations

import pytest

from packcache_vllm.core.budget import PackCacheConfig
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
# W = 3 (shares 1, 1/2, 1/4): the 3-frame request's frame 0 keeps 1/2 while frame 2 is made; the
# 4-frame request's frames 0 and 1 keep 1/4 and 1/2 while frame 3 is made.
GEOMETRIC_KNOBS = {"decay": 0.5, "floor": 0.25}
# PackCache's budget at W = 2, share 1/4: while the 4-frame request makes frame 3, frame 0 is
# dropped and frame 1 keeps 8 of its 32 tokens, ordered against frame 2. A commit caches the
# history-masked frame, the same cells masked in every frame: on the tiny random model most
# same-cell key similarities are 0.95-1.0 and a few (1 to 8 of the 28 cells) below 0.35, so at 0.5
# those few are not near-duplicates and move to the front.
DEDUPE_BUDGET = {"window": 2, "decay": 0.25, "min_keep": 0.25}
DEDUPE_KNOBS = {**DEDUPE_BUDGET, "threshold": 0.5}
# The requests the policies thin (3 and 4 frames) have twins; the 2-frame one has none.
TWINNED_THINNED = (3.0, 7.5, 1.0)
THINNING_CASES = {
    # policy: (knobs, the 4-frame request's shares of frames 0-2 while it makes frame 3, the
    # neighbouring policy whose reference video some request's must differ from: None is the
    # full cache)
    "geometric": (GEOMETRIC_KNOBS, (0.25, 0.5, 1.0), None),
    "dedupe": (
        DEDUPE_KNOBS,
        (0.0, 0.25, 1.0),
        PackCacheConfig.preset("packcache", **DEDUPE_BUDGET),
    ),
}


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    from packcache_vllm.reference import ReferenceVideoModel

    return ReferenceVideoModel.from_pretrained(tiny_model_dir)


def run_policy(model_dir, name, knobs, video_prompts, per_frame, cfg_scales):
    """The engine of ``--kv-policy name`` with ``knobs`` in frame-parallel mode, run on the three
    prompts with ``cfg_scales``; returns [(token_ids, trace)] per request."""
    engine = make_ardf_llm(model_dir, name, **knobs)
    params = [sampler_params(i, cfg_scales[i]) for i in range(len(video_prompts))]
    return run_engine(engine, video_prompts, params, per_frame)


def reference_videos(reference, video_prompts, cfg_scales, packcache=None):
    """The dense reference's video per prompt (None: the full cache)."""
    return [
        reference_run(reference, prompt, sampler_params(i, cfg_scales[i]), FRAMES[i], packcache)[0]
        for i, prompt in enumerate(video_prompts)
    ]


def some_video_differs(got, videos) -> bool:
    """got: the engine's [(token_ids, trace)] per prompt; videos: token_ids per prompt."""
    return any(tokens != video for (tokens, _), video in zip(got, videos, strict=True))


def test_guided_sink_window_matches_reference(tiny_model_dir, llm, reference, video_prompts,
                                              per_frame):  # fmt: skip
    got = run_policy(tiny_model_dir, "sink-window", KNOBS, video_prompts, per_frame, GUIDANCE)
    policy = make_policy("sink-window", **KNOBS)
    assert_matches_reference(got, reference, video_prompts, per_frame, policy, GUIDANCE)
    assert some_video_differs(got, reference_videos(reference, video_prompts, GUIDANCE))


@pytest.mark.parametrize("name", list(THINNING_CASES))
def test_guided_thinning_policy_matches_reference(name, tiny_model_dir, llm, reference,
                                                  video_prompts, per_frame):  # fmt: skip
    knobs, shares, neighbour = THINNING_CASES[name]
    cfg = TWINNED_THINNED
    got = run_policy(tiny_model_dir, name, knobs, video_prompts, per_frame, cfg)
    policy = make_policy(name, **knobs)
    assert policy.keep_counts(3, per_frame) == tuple(int(per_frame * s) for s in shares)
    assert_matches_reference(got, reference, video_prompts, per_frame, policy, cfg)
    assert some_video_differs(got, reference_videos(reference, video_prompts, cfg, neighbour))
