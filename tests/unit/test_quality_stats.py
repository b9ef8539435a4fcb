"""The quality benchmark's statistics: bootstrap intervals over scenes, per-scene reductions, and
policy settings named on its command line."""

import json
import math
from dataclasses import asdict

import pytest

from benchmarks.quality import Setting, parse_setting
from benchmarks.quality_stats import bootstrap_mean, paired_difference, per_scene


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    values = [0.4, 0.6] * 16  # 32 scenes, mean 0.5, standard error ~0.018
    first, again = bootstrap_mean(values, seed=3), bootstrap_mean(values, seed=3)
    assert first == again
    assert first.mean == pytest.approx(0.5) and first.n == 32
    assert first.contains(0.5)
    assert not first.contains(0.6) and not first.contains(0.44)
    assert 0.45 < first.low < 0.5 < first.high < 0.55


def test_bootstrap_of_a_constant_is_that_constant_and_nan_scenes_are_left_out():
    interval = bootstrap_mean([0.7, math.nan, 0.7, 0.7])
    assert (interval.mean, interval.low, interval.high, interval.n) == pytest.approx(
        (0.7, 0.7, 0.7, 3)
    )
    assert bootstrap_mean([math.nan]).n == 0


def test_a_wider_spread_gives_a_wider_interval():
    narrow = bootstrap_mean([0.45, 0.55] * 16)
    wide = bootstrap_mean([0.1, 0.9] * 16)
    assert wide.high - wide.low > 4 * (narrow.high - narrow.low)
    assert wide.contains(0.4)  # 0.5 - 0.1: inside the wide one only (standard error 0.07)
    assert not narrow.contains(0.4)


def test_paired_difference_cancels_the_scene_spread():
    theirs = {s: v for s, v in enumerate([0.2, 0.9, 0.5, 0.3, 0.8, 0.6, 0.4, 0.7])}
    ours = {s: v - 0.05 for s, v in theirs.items()}
    ours[99] = 0.0  # a scene only one side has is not paired
    diff = paired_difference(ours, theirs)
    assert diff.n == 8
    assert diff.mean == pytest.approx(-0.05) and diff.high == pytest.approx(-0.05)
    assert not diff.contains(0.0)
    unpaired = bootstrap_mean(list(ours.values())[:8])
    assert unpaired.contains(bootstrap_mean(list(theirs.values())).mean)  # unpaired: no verdict


def test_per_scene_reduces_frames_to_one_number_per_scene():
    record = {
        "scene": 4,
        "cell_accuracy": [1.0, 0.8, 0.6, 0.4],
        "lost_fraction": [0.0, 0.5, math.nan, 0.5],
        "background_accuracy": [1.0] * 4,
        "position_error": [math.nan] * 4,
    }
    stats = per_scene([record], drift=2)
    assert stats["first"][4] == pytest.approx(0.9)
    assert stats["last"][4] == pytest.approx(0.5)
    assert stats["drift"][4] == pytest.approx(0.4)
    assert stats["lost"][4] == pytest.approx(1 / 3)
    assert math.isnan(stats["position"][4])


def test_a_setting_names_any_preset_and_its_knobs():
    setting = parse_setting("packcache:window=3,min_keep=0.5,decay=0.25")
    assert setting.knobs() == {"window": 3, "min_keep": 0.5, "decay": 0.25}
    assert setting.label == "packcache W=3 min_keep=0.5 decay=0.25"
    assert setting.config().steady_state_frames() == pytest.approx(2.0)
    assert parse_setting("full") == Setting("full")
    key_norm = parse_setting("packcache:selector=key_norm")
    assert key_norm.label == "packcache key_norm" and key_norm.knobs() == {"selector": "key_norm"}
    back = json.loads(json.dumps(asdict(setting)))  # as a child process reads its job
    assert Setting(**back) == setting


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nosuchpolicy", "nosuchpolicy"),
        ("packcache:nosuchknob=1", "nosuchknob"),
        ("packcache:window", "is not NAME=VALUE"),
        ("sliding:window=0", "window must be an integer >= 1"),
        ("packcache:decay=2", "decay must be a number in"),
    ],
)
def test_a_bad_setting_is_refused_by_name(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_setting(spec)
