"""One settings object (policy, mode, knobs) for every door, with its policies and knobs taken
from the core's registry (``core.policies``): a policy or knob registered there reaches the
flags, additional_config and per-request overrides without an edit outside the core."""

from __future__ import annotations

import argparse

import pytest

from packcache_vllm import cli, settings
from packcache_vllm.core import knobs as core_knobs
from packcache_vllm.core import policies
from packcache_vllm.core.budget import PackCacheConfig


def test_policies_and_knobs_come_from_the_core():
    assert settings.POLICIES == ("none", *policies.POLICY_NAMES)
    assert settings.KNOBS == policies.ALL_KNOBS
    assert all(settings.KNOB_RANGES[k] == policies.KNOB_SPECS[k].allowed for k in settings.KNOBS)


def test_every_policy_round_trips_through_additional_config():
    for name in policies.POLICY_NAMES:
        built = settings.Settings.build(name, {}, settings.KEYWORD_NAMING)
        assert settings.Settings.of({"packcache": built.entry()}) == built


def test_every_knob_and_policy_reaches_the_flags():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    flags = {flag for action in parser._actions for flag in action.option_strings}
    assert {settings.knob_flag(knob) for knob in settings.KNOBS} <= flags
    policy = next(a for a in parser._actions if "--kv-policy" in a.option_strings)
    assert tuple(policy.choices) == settings.POLICIES
    text = " ".join(parser.format_help().split())
    assert all(f"- {name}: " in text for name in settings.POLICIES)
    assert all(core_knobs.flag_help(knob) for knob in settings.KNOBS)


def test_name_valued_knobs_get_choices():
    assert core_knobs.knob_choices("selector") == ("key_norm", "uniform")
    assert core_knobs.knob_choices("window") is None


def test_one_naming_rule_per_door():
    assert settings.FLAG_NAMING.knob_name("min_keep") == "--packcache-min-keep"
    assert settings.KEYWORD_NAMING.knob_name("min_keep") == "min_keep"
    assert settings.ENTRY_NAMING.knob_name("window") == "additional_config['packcache']['window']"
    assert set(settings.ENTRY_NAMING.knobs) == set(settings.KNOBS)


def test_settings_round_trip_through_additional_config():
    built = settings.Settings.build(
        "packcache", {"window": 3}, settings.KEYWORD_NAMING, settings.FRAME_PARALLEL, "mode"
    )
    read = settings.Settings.of({"packcache": built.entry()})
    assert read == built
    assert read.config == PackCacheConfig.preset("packcache", window=3)
    assert read.request_config({"packcache_window": 2}).window == 2
    assert settings.Settings.of({}) == settings.Settings()
    assert not settings.Settings().active


def test_a_bad_mode_in_additional_config_names_the_key():
    with pytest.raises(ValueError, match=r"\['mode'\] must be one of .*got 'diffusion'"):
        settings.Settings.of({"packcache": {"policy": "full", "mode": "diffusion"}})
