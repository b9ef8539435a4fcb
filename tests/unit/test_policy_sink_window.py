"""sink-window: S sink frames joining the anchors + the newest W frames, whole."""

from __future__ import annotations

import pytest
import torch

from packcache_vllm.core.budget import bound_tokens
from packcache_vllm.core.layout import FrameLayout
from packcache_vllm.core.policies import make_policy
from packcache_vllm.core.policies.sink_window import SinkWindowPolicy
from tests.unit.policy_fixtures import F, attended_frames, tiny_reference, video_prompt


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_reference(tmp_path_factory)


def test_defaults_keep_one_sink_and_three_frames_whole():
    policy = SinkWindowPolicy()
    assert (policy.sinks, policy.window, policy.sink_frames) == (1, 3, 1)
    assert policy.keep_counts(5, 10) == (0, 0, 10, 10, 10)
    assert policy.keep_counts(3, 10) == (10, 10, 10)
    assert not policy.thins_frames
    assert make_policy("sink-window") == policy


def test_the_sink_frames_join_the_anchors():
    layout = FrameLayout(frame_start=5, anchor_len=5 + F, rows=3, cols=4)
    evicting = SinkWindowPolicy(sinks=2).eviction_layout(layout)
    assert evicting.anchor_len == 5 + 3 * F
    assert evicting.num_anchor_frames == 3
    assert SinkWindowPolicy(sinks=0).eviction_layout(layout) == layout
    sink_token, later_token = torch.tensor([5 + 2 * F + 7]), torch.tensor([5 + 3 * F + 7])
    assert torch.equal(evicting.positions(sink_token, 2), layout.positions(sink_token))
    shifted = evicting.positions(later_token, 2)
    assert int(shifted[0, 0]) == int(layout.positions(later_token)[0, 0]) - 2 * layout.t_stride


def test_bound_counts_the_sinks():
    layout = FrameLayout(frame_start=5, anchor_len=5 + F, rows=3, cols=4)
    policy = SinkWindowPolicy(sinks=2, window=3)
    assert bound_tokens(layout, policy, 100 * F) == layout.anchor_len + (2 + 3 + 1) * F
    assert bound_tokens(layout, policy, 4 * F) == layout.anchor_len + 4 * F


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"sinks": -1}, "sink-window sinks must be an integer >= 0, got -1"),
        ({"sinks": 1.5}, "sink-window sinks must be an integer >= 0, got 1.5"),
        ({"sinks": True}, "sink-window sinks must be an integer >= 0, got True"),
        ({"window": 0}, "sink-window window must be an integer >= 1, got 0"),
        ({"window": None}, "sink-window window must be an integer >= 1, got None"),
        ({"decay": 0.5}, "KV policy 'sink-window' has no knob(s) ['decay']"),
    ],
)
def test_bad_knobs_name_knob_and_value(knobs, message):
    with pytest.raises(ValueError) as error:
        make_policy("sink-window", **knobs)
    assert message in str(error.value)


def test_reference_keeps_the_sinks_and_drops_the_middle(model):
    """7 frames, sinks 1, window 2: the last token attends to the prompt, frame 0 and frames
    4-6 (5 and 4 complete, 6 in progress); frames 1-3 are dropped, so time is rebased by 3."""
    from packcache_vllm.reference import PackCachePolicy

    prompt = video_prompt()
    layout = model.layout_for(prompt)
    policy = PackCachePolicy(SinkWindowPolicy(sinks=1, window=2))
    last = model.generate(prompt, layout, 7 * F, policy).steps[-1]
    assert attended_frames(last.kept_indices, layout) == [0, 4, 5, 6]
    assert bool((last.kept_indices < layout.anchor_len + F).sum() == layout.anchor_len + F)
    assert last.dropped_frames == 3


def test_reference_rebase_modes_agree_with_sinks(model):
    """The sinks are rebased with the anchors: rotating their cached keys (what the engine
    does) gives the same tokens as rebasing positions."""
    from packcache_vllm.reference import PackCachePolicy, RebaseMode

    prompt = video_prompt(with_condition_frame=False)
    layout = model.layout_for(prompt)
    config = SinkWindowPolicy(sinks=2, window=1)
    by_positions = model.generate(prompt, layout, 6 * F, PackCachePolicy(config))
    by_rotation = model.generate(
        prompt, layout, 6 * F, PackCachePolicy(config), rebase=RebaseMode.ROTATE_ANCHORS
    )
    assert by_positions.steps[-1].dropped_frames == 2  # frames 2 and 3 (4 is the newest)
    assert by_positions.token_ids == by_rotation.token_ids
