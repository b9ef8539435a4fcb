"""PackCacheConfig: validation, presets, keep counts and their invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packcache_vllm.core.budget import PRESETS, PackCacheConfig

LUMOS_F = 4084

configs = st.builds(
    PackCacheConfig,
    window=st.one_of(st.none(), st.integers(1, 8)),
    decay=st.floats(0.01, 1.0),
    min_keep=st.one_of(st.just(0.0), st.floats(0.0, 1.0), st.sampled_from([0.1, 0.25, 0.75])),
)
frame_sizes = st.one_of(st.integers(1, 40), st.just(LUMOS_F))


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knob", "value", "allowed"),
    [
        ("window", 0, "integer >= 1 or None"),
        ("window", -3, "integer >= 1 or None"),
        ("window", 2.0, "integer >= 1 or None"),
        ("window", True, "integer >= 1 or None"),
        ("decay", 0.0, "(0, 1]"),
        ("decay", 1.5, "(0, 1]"),
        ("decay", float("nan"), "(0, 1]"),
        ("decay", "0.5", "(0, 1]"),
        ("min_keep", -0.1, "[0, 1]"),
        ("min_keep", 1.01, "[0, 1]"),
        ("min_keep", float("inf"), "[0, 1]"),
        ("selector", "attention", "uniform"),
    ],
)
def test_bad_knob_names_knob_value_and_range(knob, value, allowed):
    with pytest.raises(ValueError) as error:
        PackCacheConfig(**{knob: value})
    message = str(error.value)
    assert f"packcache {knob}" in message
    assert repr(value) in message or str(value) in message
    assert allowed in message


def test_window_zero_message():
    with pytest.raises(ValueError, match=r"window must be an integer >= 1 or None .*got 0$"):
        PackCacheConfig(window=0)


def test_integer_fractions_are_stored_as_floats():
    config = PackCacheConfig(decay=1, min_keep=0)
    assert isinstance(config.decay, float) and isinstance(config.min_keep, float)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        PackCacheConfig().window = 3


# --- presets ----------------------------------------------------------------------------------


def test_presets():
    assert PRESETS == ("full", "sliding", "packcache")
    assert PackCacheConfig.preset("full").window is None
    assert PackCacheConfig.preset("sliding").window == 1
    packcache = PackCacheConfig.preset("packcache")
    assert (packcache.window, packcache.decay, packcache.min_keep) == (4, 0.5, 0.75)
    assert packcache == PackCacheConfig()
    assert packcache.steady_state_frames() == pytest.approx(3.25)


def test_packcache_min_keep_follows_window():
    assert PackCacheConfig.preset("packcache", window=6).min_keep == pytest.approx(0.5)
    assert PackCacheConfig.preset("packcache", window=2).min_keep == 1.0  # 3/2 capped
    explicit = PackCacheConfig.preset("packcache", window=6, min_keep=0.2)
    assert explicit.min_keep == 0.2
    assert PackCacheConfig.preset("packcache", decay=0.25).min_keep == 0.75


def test_preset_overrides_are_validated():
    with pytest.raises(ValueError, match="window"):
        PackCacheConfig.preset("packcache", window=0)
    with pytest.raises(ValueError, match="selector"):
        PackCacheConfig.preset("sliding", selector="nope")


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="full.*sliding.*packcache.*got 'dense'"):
        PackCacheConfig.preset("dense")


def test_unknown_override_lists_knobs():
    with pytest.raises(ValueError, match="windw.*decay.*min_keep.*selector.*window"):
        PackCacheConfig.preset("packcache", windw=3)


# --- keep counts --------------------------------------------------------------------------------


def test_packcache_counts_for_lumos():
    config = PackCacheConfig.preset("packcache")
    assert config.keep_counts(4, LUMOS_F) == (LUMOS_F,) * 4
    three_quarters = math.ceil(0.75 * LUMOS_F)
    assert config.keep_counts(5, LUMOS_F) == (
        0,
        three_quarters,
        three_quarters,
        three_quarters,
        LUMOS_F,
    )
    assert config.keep_counts(12, LUMOS_F)[-4:] == (three_quarters,) * 3 + (LUMOS_F,)
    assert config.dropped_frames(12) == 8


def test_exact_products_do_not_round_up():
    halving = PackCacheConfig(window=3, decay=0.5, min_keep=0.0)
    assert halving.keep_counts(3 + 1, LUMOS_F)[1:] == (LUMOS_F // 4, LUMOS_F // 2, LUMOS_F)
    assert 0.55 * 100 > 55  # 55.00000000000001 in floats
    fifty_five = PackCacheConfig(window=3, decay=0.55, min_keep=0.55)
    assert fifty_five.keep_counts(4, 100) == (0, 55, 55, 100)
    thirds = PackCacheConfig(window=2, decay=1 / 3, min_keep=0.0)
    assert thirds.keep_counts(3, 3) == (0, 1, 3)


def test_sliding_and_full():
    sliding = PackCacheConfig.preset("sliding")
    full = PackCacheConfig.preset("full")
    assert sliding.keep_counts(0, 7) == ()
    assert sliding.keep_counts(5, 7) == (0, 0, 0, 0, 7)
    assert sliding.dropped_frames(5) == 4
    assert full.keep_counts(20, 7) == (7,) * 20
    assert full.dropped_frames(20) == 0
    assert full.steady_state_frames() is None


def test_bad_counts_are_rejected():
    config = PackCacheConfig()
    with pytest.raises(ValueError, match="num_complete_frames"):
        config.keep_counts(-1, 10)
    with pytest.raises(ValueError, match="tokens_per_frame"):
        config.keep_counts(3, 0)


@given(configs, st.integers(0, 30), frame_sizes)
def test_keep_counts_bounds(config, num_frames, frame_len):
    counts = config.keep_counts(num_frames, frame_len)
    assert len(counts) == num_frames
    assert all(0 <= count <= frame_len for count in counts)
    if config.window is None:
        assert counts == (frame_len,) * num_frames
        return
    window = config.window
    assert sum(counts) <= window * frame_len
    assert all(count >= 1 for count in counts[-window:])
    assert all(count == 0 for count in counts[:-window])
    assert sum(1 for count in counts if count == 0) == config.dropped_frames(num_frames)
    if num_frames <= window:
        assert counts == (frame_len,) * num_frames
    elif num_frames:
        expected_fraction = sum(config.frame_fraction(d) for d in range(window))
        assert config.steady_state_frames() == pytest.approx(expected_fraction)
        assert sum(counts) >= config.steady_state_frames() * frame_len - 1e-6 * frame_len


@given(configs, st.integers(0, 30), st.integers(1, 3), frame_sizes)
def test_counts_never_grow_as_a_frame_ages(config, num_frames, more, frame_len):
    before = config.keep_counts(num_frames, frame_len)
    after = config.keep_counts(num_frames + more, frame_len)
    assert all(later <= earlier for earlier, later in zip(before, after, strict=False))


@given(configs, st.integers(1, 30), frame_sizes)
def test_counts_grow_toward_the_newest_frame(config, num_frames, frame_len):
    counts = config.keep_counts(num_frames, frame_len)
    assert list(counts) == sorted(counts)
    assert counts[-1] == frame_len  # the newest complete frame is always whole


@given(st.integers(1, 30), frame_sizes)
def test_sliding_keeps_only_the_newest_frame(num_frames, frame_len):
    counts = PackCacheConfig.preset("sliding").keep_counts(num_frames, frame_len)
    assert counts == (0,) * (num_frames - 1) + (frame_len,)


@given(configs, st.integers(0, 30), frame_sizes)
def test_a_config_that_never_thins_keeps_frames_whole_or_drops_them(config, n, frame_len):
    if not config.thins_frames:
        assert set(config.keep_counts(n, frame_len)) <= {0, frame_len}


def test_which_presets_thin_frames():
    assert PackCacheConfig.preset("packcache").thins_frames
    assert not PackCacheConfig.preset("sliding").thins_frames
    assert not PackCacheConfig.preset("full").thins_frames
    assert not PackCacheConfig.preset("packcache", window=4, min_keep=1.0).thins_frames
