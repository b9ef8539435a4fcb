"""The policies of core.policies on the command line: ``--kv-policy NAME`` with its knobs'
flags (their values are checked at parse time: test_cli_options.py), a knob the policy does not
have refused by name."""

from __future__ import annotations

import argparse

import pytest

from packcache_vllm import cli
from packcache_vllm.core.policies import POLICY_NAMES, make_policy


@pytest.fixture
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve")
    cli.add_arguments(parser)
    return parser


def entry_of(overrides: dict) -> dict:
    return overrides["additional_config"][cli.ADDITIONAL_CONFIG_KEY]


@pytest.mark.parametrize(
    ("flags", "entry"),
    [
        (["--kv-policy", "sink-window"], {"sinks": 1, "window": 3}),
        (["--kv-policy", "sink-window", "--packcache-sinks", "2"], {"sinks": 2, "window": 3}),
        (
            ["--kv-policy", "geometric", "--packcache-floor", "0.125"],
            {"decay": 0.5, "floor": 0.125, "selector": "uniform"},
        ),
        (
            ["--kv-policy", "dedupe", "--packcache-window", "3", "--packcache-threshold", "0.9"],
            {"window": 3, "decay": 0.5, "min_keep": 1.0, "threshold": 0.9},
        ),
        (
            ["--kv-policy", "salience", "--packcache-min-keep", "0.25"],
            {"window": 4, "decay": 0.5, "min_keep": 0.25},
        ),
    ],
)
def test_flags_give_the_policys_knobs(parser, flags, entry):
    namespace = parser.parse_args(flags)
    written = entry_of(cli.overrides_from_namespace(namespace, device="cpu"))
    assert written == {"policy": flags[1], **entry}
    policy, config = cli.packcache_config_from({cli.ADDITIONAL_CONFIG_KEY: written})
    assert (policy, config) == (flags[1], make_policy(flags[1], **entry))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kv-policy", "geometric", "--packcache-window", "3"], "has no knob(s) ['window']"),
        (["--kv-policy", "sink-window", "--packcache-decay", "0.5"], "has no knob(s) ['decay']"),
        (["--kv-policy", "packcache", "--packcache-sinks", "1"], "has no knob(s) ['sinks']"),
        (
            ["--kv-policy", "geometric", "--packcache-decay", "1"],
            "geometric decay must be a number in (0, 1), got 1.0",
        ),
        (
            ["--kv-policy", "salience", "--packcache-mode", "frame-parallel"],
            "--packcache-mode frame-parallel cannot use it",
        ),
    ],
)
def test_a_knob_the_policy_refuses_is_named(parser, flags, message):
    namespace = parser.parse_args(flags)
    with pytest.raises(ValueError) as error:
        cli.overrides_from_namespace(namespace, device="cpu")
    assert message in str(error.value)


def test_help_lists_every_policy_and_knob(parser):
    text = " ".join(parser.format_help().split())
    for name in POLICY_NAMES:
        assert f"- {name}:" in text
    for flag in ("--packcache-sinks S", "--packcache-floor PHI", "--packcache-threshold TAU"):
        assert flag in text
