"""geometric: decay^d of a frame's tokens at distance d, dropped below a floor, no fill phase."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packcache_vllm.core.budget import bound_tokens
from packcache_vllm.core.layout import FrameLayout
from packcache_vllm.core.policies import make_policy, with_knobs
from packcache_vllm.core.policies.geometric import GeometricPolicy, geometric_window
from tests.unit.policy_fixtures import F, attended_frames, tiny_reference, video_prompt

policies = st.builds(
    GeometricPolicy,
    decay=st.floats(0.05, 0.95),
    floor=st.one_of(st.floats(0.001, 1.0), st.sampled_from([1 / 16, 0.25, 1.0])),
)
frame_sizes = st.one_of(st.integers(1, 40), st.just(4084))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_reference(tmp_path_factory)


def test_defaults_halve_each_frame_down_to_a_sixteenth():
    policy = GeometricPolicy()
    assert (policy.decay, policy.floor, policy.window, policy.min_keep) == (0.5, 1 / 16, 5, 0.0)
    assert policy.keep_counts(7, 16) == (0, 0, 1, 2, 4, 8, 16)
    assert policy.steady_state_frames() == pytest.approx(1.9375)
    assert make_policy("geometric") == policy


def test_no_fill_phase_the_second_frame_is_thinned_at_once():
    assert GeometricPolicy().keep_counts(2, 16) == (8, 16)
    assert GeometricPolicy(decay=0.25).keep_counts(3, 16) == (1, 4, 16)


@pytest.mark.parametrize(
    ("decay", "floor", "window"),
    [(0.5, 1 / 16, 5), (0.5, 0.07, 4), (0.5, 0.5, 2), (0.25, 1.0, 1), (0.1, 0.001, 4)],
)
def test_window_is_derived_from_decay_and_floor(decay, floor, window):
    assert geometric_window(decay, floor) == window
    assert GeometricPolicy(decay=decay, floor=floor).window == window


@given(decay=st.floats(0.01, 0.99), floor=st.floats(1e-6, 1.0))
def test_window_is_the_last_share_at_or_above_the_floor(decay, floor):
    window = geometric_window(decay, floor)
    assert decay ** (window - 1) >= floor * (1 - 1e-9)
    assert decay**window < floor * (1 + 1e-9)


@given(policy=policies, n=st.integers(0, 30), frame_len=frame_sizes)
def test_counts_shrink_with_distance_and_stay_nested(policy, n, frame_len):
    counts = policy.keep_counts(n, frame_len)
    older = policy.keep_counts(n + 1, frame_len)[:n]
    assert all(a <= b for a, b in zip(older, counts, strict=True))
    assert list(counts) == sorted(counts)
    assert sum(counts) <= policy.max_history_tokens(frame_len)


@given(policy=policies, frame_len=frame_sizes)
def test_max_history_is_the_steady_state(policy, frame_len):
    steady = sum(policy.keep_counts(policy.window + 3, frame_len))
    assert policy.max_history_tokens(frame_len) == steady


def test_bound_is_the_steady_state_plus_the_current_frame():
    layout = FrameLayout(frame_start=5, anchor_len=5 + F, rows=3, cols=4)
    policy = GeometricPolicy()
    steady = sum(policy.keep_counts(10, F))
    assert bound_tokens(layout, policy, 100 * F) == layout.anchor_len + steady + F


def test_a_request_override_rederives_the_window():
    policy = with_knobs(GeometricPolicy(), decay=0.25)
    assert (policy.decay, policy.window) == (0.25, 3)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"decay": 1.0}, "geometric decay must be a number in (0, 1), got 1.0"),
        ({"decay": 0}, "geometric decay must be a number in (0, 1), got 0"),
        ({"decay": "0.5"}, "geometric decay must be a number in (0, 1), got '0.5'"),
        ({"floor": 0.0}, "geometric floor must be a number in (0, 1], got 0.0"),
        ({"floor": 1.5}, "geometric floor must be a number in (0, 1], got 1.5"),
        ({"selector": "by_norm"}, "packcache selector must be one of"),
        ({"window": 3}, "KV policy 'geometric' has no knob(s) ['window']"),
        ({"min_keep": 0.5}, "KV policy 'geometric' has no knob(s) ['min_keep']"),
    ],
)
def test_bad_knobs_name_knob_and_value(knobs, message):
    with pytest.raises(ValueError) as error:
        make_policy("geometric", **knobs)
    assert message in str(error.value)


def test_reference_keeps_geometric_shares(model):
    """decay 1/2, floor 1/4 (W = 3): after 6 frames the last token attends to frames 3-5 whole
    or thinned (19, 10 and 5 of 19 tokens) and frame 6 so far; frames 0-2 are dropped."""
    from packcache_vllm.reference import PackCachePolicy

    prompt = video_prompt()
    layout = model.layout_for(prompt)
    policy = GeometricPolicy(decay=0.5, floor=0.25)
    last = model.generate(prompt, layout, 7 * F, PackCachePolicy(policy)).steps[-1]
    assert attended_frames(last.kept_indices, layout) == [3, 4, 5, 6]
    generated = last.kept_indices[last.kept_indices >= layout.anchor_len] - layout.anchor_len
    per_frame = [int(((generated // F) == frame).sum()) for frame in (3, 4, 5)]
    assert per_frame == [5, 10, 19]
    assert last.dropped_frames == 3
