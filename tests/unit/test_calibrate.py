"""Calibration: attention mass by key group on the dense reference, and the W / ρ / b_min rule."""

import math

import pytest
import torch

from packcache_vllm.calibrate import (
    CONDITION,
    DISTANCE0,
    TEXT,
    key_groups,
    measure,
    profile,
    recommend,
)
from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.layout import FrameLayout
from packcache_vllm.model.factory import build_tiny_lumos
from packcache_vllm.reference import KVCache, ReferenceVideoModel
from packcache_vllm.video.heldout import heldout_clips

ROWS, COLS, FRAMES = 3, 4, 4


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = build_tiny_lumos(
        tmp_path_factory.mktemp("tiny"), seed=0, video_rows=ROWS, video_cols=COLS
    )
    return ReferenceVideoModel.from_pretrained(path)


@pytest.fixture(scope="module")
def clips():
    return heldout_clips(ROWS, COLS, FRAMES, scenes=2)


def test_key_groups_name_text_condition_and_distance():
    layout = FrameLayout(frame_start=3, anchor_len=3 + 19, rows=ROWS, cols=COLS)  # F = 19
    indices = torch.tensor([0, 2, 3, 21, 22, 40, 41, 60, 78])
    # generated frames 0, 1, 2 hold 22..40, 41..59, 60..78; the last one is frame 2
    expected = [
        TEXT,
        TEXT,
        CONDITION,
        CONDITION,
        DISTANCE0 + 2,
        DISTANCE0 + 2,
        DISTANCE0 + 1,
        DISTANCE0,
        DISTANCE0,
    ]
    assert key_groups(indices, layout, last_frame=2).tolist() == expected


def test_masses_sum_to_one_per_query(model, clips):
    sums = measure(model, clips, chunk=5)
    mean = sums.mean()  # [L, H, G]
    assert sums.queries == 2 * clips[0].layout.tokens_per_frame
    assert mean.shape[-1] == DISTANCE0 + FRAMES
    torch.testing.assert_close(mean.sum(-1), torch.ones(mean.shape[:2], dtype=mean.dtype))
    assert (mean[..., TEXT] > 0).all() and (mean[..., CONDITION] > 0).all()


def test_the_model_s_own_continuation_is_measured_the_same_way(model, clips):
    truth = measure(model, clips[:1]).mean()
    generated = measure(model, clips[:1], source="generated").mean()
    torch.testing.assert_close(generated.sum(-1), torch.ones(truth.shape[:2], dtype=truth.dtype))
    assert not torch.allclose(generated, truth)  # a random model does not continue the truth


def test_chunked_groups_equal_one_full_forward_grouped_by_hand(model, clips):
    """The measurement against the probabilities of a single causal forward of the whole clip."""
    clip = clips[0]
    ids = clip.prompt + clip.continuation
    layout = model.layout_for(clip.prompt)
    F = layout.tokens_per_frame
    start = len(ids) - F  # the last frame's queries
    captured = {}
    model.attention_probe = lambda layer, probs: captured.setdefault(layer, probs.clone())
    try:
        model.run_layers(
            torch.tensor(ids),
            torch.arange(len(ids)),
            KVCache.empty(model.config, model.dtype),
            layout,
            0,
        )
    finally:
        model.attention_probe = None
    probs = captured[1][:, start:, :]  # layer 1: [H, F, M]
    text = probs[..., : layout.frame_start].sum(-1).mean(-1)
    condition = probs[..., layout.frame_start : layout.anchor_len].sum(-1).mean(-1)
    newest_complete = probs[..., start - F : start].sum(-1).mean(-1)
    own = probs[..., start:].sum(-1).mean(-1)
    mean = measure(model, [clip], chunk=7).mean()[1].float()  # [H, G]
    torch.testing.assert_close(mean[:, TEXT], text, atol=1e-5, rtol=0)
    torch.testing.assert_close(mean[:, CONDITION], condition, atol=1e-5, rtol=0)
    torch.testing.assert_close(mean[:, DISTANCE0 + 1], newest_complete, atol=1e-5, rtol=0)
    torch.testing.assert_close(mean[:, DISTANCE0], own, atol=1e-5, rtol=0)


def test_profile_anchor_share_is_text_plus_condition(model, clips):
    result = profile(measure(model, clips))
    assert result["anchors"] == pytest.approx(result["text"] + result["condition"])
    assert result["anchors"] + sum(result["by_distance"]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("target", [1.0, 2.0, 2.5, 3.25, 4.0, 6.0])
@pytest.mark.parametrize(
    "history",
    [
        [0.5**k for k in range(8)],
        [0.6, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05],
        [0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
    ],
)
def test_recommendation_meets_the_memory_target(history, target):
    rec = recommend(history, target)
    config = PackCacheConfig(rec.window, rec.decay, rec.min_keep)
    assert config.steady_state_frames() <= target + 1e-9
    assert config.steady_state_frames() == pytest.approx(target, abs=1e-3)
    assert math.ceil(target - 1e-9) <= rec.window <= len(history)
    assert 0 < rec.history_mass_kept <= 1


def test_a_geometric_curve_gives_its_decay_and_a_short_tail_a_short_window():
    rec = recommend([0.5**k for k in range(10)], 2.0, quantile=0.9)
    assert rec.decay == pytest.approx(0.5, abs=1e-3)
    assert rec.window == 4  # 1 + .5 + .25 + .125 = 1.875 >= 0.9 * 2


def test_a_flat_curve_spreads_the_budget_over_the_whole_history():
    rec = recommend([0.1] * 10, 2.0, quantile=0.9)
    assert rec.window == 9
    assert rec.history_mass_kept == pytest.approx(0.2, abs=1e-3)  # 2 of 10 equal frames' worth


def test_a_target_outside_the_measured_history_is_refused():
    with pytest.raises(ValueError, match=r"target must lie in \[1, 3\]"):
        recommend([0.5, 0.3, 0.2], 4.0)
    with pytest.raises(ValueError, match=r"target must lie in \[1, 2\]"):
        recommend([0.5, 0.3, 0.2], 2.5, max_window=2)


def test_max_window_caps_the_fill_phase_peak():
    rec = recommend([0.1] * 10, 2.0, max_window=4)
    assert rec.window == 4
    assert PackCacheConfig(4, rec.decay, rec.min_keep).steady_state_frames() == pytest.approx(
        2.0, abs=1e-3
    )
