"""core.policies: every KV policy by name, with its knobs, built and validated in one place."""

from __future__ import annotations

import pytest

from packcache_vllm.core import policies
from packcache_vllm.core.budget import PRESETS, PackCacheConfig


def test_presets_come_first_and_keep_their_configs():
    assert policies.POLICY_NAMES[: len(PRESETS)] == PRESETS
    for name in PRESETS:
        assert policies.make_policy(name, window=2) == PackCacheConfig.preset(name, window=2)


@pytest.mark.parametrize("name", policies.POLICY_NAMES)
def test_knob_values_round_trip(name):
    config = policies.make_policy(name)
    values = policies.knob_values(config)
    assert set(values) == set(policies.POLICY_SPECS[name].knobs)
    assert policies.make_policy(name, **values) == config


@pytest.mark.parametrize("name", policies.POLICY_NAMES)
def test_every_knob_has_words(name):
    for knob in policies.POLICY_SPECS[name].knobs:
        spec = policies.KNOB_SPECS[knob]
        assert spec.allowed and spec.help


def test_unknown_policy_lists_the_names():
    with pytest.raises(ValueError, match=r"KV policy must be one of \['full', .*'sink-window'"):
        policies.make_policy("streaming")


def test_request_overrides_only_take_the_policys_own_knobs():
    with pytest.raises(ValueError, match=r"'packcache' has no knob\(s\) \['sinks'\]"):
        policies.with_knobs(PackCacheConfig(), sinks=1)
    assert policies.with_knobs(PackCacheConfig(), window=2).window == 2


@pytest.mark.parametrize(
    ("knob", "value", "valid"),
    [
        ("sinks", 0, True),
        ("sinks", -1, False),
        ("floor", 0.5, True),
        ("floor", 0, False),
        ("decay", 1.0, True),  # packcache's decay; geometric's refuses it when built
        ("window", 0, False),
    ],
)
def test_a_flag_value_is_valid_if_some_policy_takes_it(knob, value, valid):
    assert policies.knob_is_valid(knob, value) is valid
