"""The --kv-policy flag and its knobs as pure option handling: no vLLM is imported here."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from packcache_vllm import cli
from packcache_vllm.core.budget import PackCacheConfig

CPU_WORKER = "packcache_vllm.engine.worker.PackCacheCPUWorker"
SCHEDULER = "packcache_vllm.engine.scheduler.PackCacheScheduler"


def entry_of(overrides: dict) -> dict:
    return overrides["additional_config"]["packcache"]


# --- engine_overrides -----------------------------------------------------------------------


def test_none_policy_touches_nothing():
    assert cli.engine_overrides("none", device="cpu") == {}
    # ...not even to check settings PackCache would reject.
    assert cli.engine_overrides("none", engine_settings={"enable_prefix_caching": True}) == {}


@pytest.mark.parametrize(
    ("policy", "window", "decay", "min_keep"),
    [("full", None, 1.0, 1.0), ("sliding", 1, 1.0, 1.0), ("packcache", 4, 0.5, 0.75)],
)
def test_each_policy_expands_to_engine_settings(policy, window, decay, min_keep):
    overrides = cli.engine_overrides(policy, device="cpu")
    assert overrides == {
        "scheduler_cls": SCHEDULER,
        "worker_cls": CPU_WORKER,
        "enable_prefix_caching": False,
        "additional_config": {
            "packcache": {
                "policy": policy,
                "window": window,
                "decay": decay,
                "min_keep": min_keep,
                "selector": "uniform",
            }
        },
    }


def test_worker_follows_device(monkeypatch):
    assert cli.engine_overrides("packcache", device="cpu")["worker_cls"] == CPU_WORKER
    monkeypatch.setenv(cli.V2_RUNNER_ENV, "0")
    cuda = cli.engine_overrides("packcache", device="cuda")
    assert cuda["worker_cls"] == "packcache_vllm.engine.worker.PackCacheGPUWorker"
    assert cuda["async_scheduling"] is False
    with pytest.raises(ValueError, match=r"PackCache runs on \['cpu', 'cuda'\].*'xpu'"):
        cli.engine_overrides("packcache", device="xpu")


def test_cuda_needs_the_v1_runner_and_no_async_scheduling(monkeypatch):
    monkeypatch.delenv(cli.V2_RUNNER_ENV, raising=False)
    with pytest.raises(ValueError, match="set VLLM_USE_V2_MODEL_RUNNER=0"):
        cli.engine_overrides("packcache", device="cuda")
    monkeypatch.setenv(cli.V2_RUNNER_ENV, "0")
    with pytest.raises(ValueError, match="async scheduling off"):
        cli.engine_overrides("packcache", device="cuda", engine_settings={"async_scheduling": True})
    assert "async_scheduling" not in cli.engine_overrides("packcache", device="cpu")


def test_knobs_override_the_preset():
    entry = entry_of(cli.engine_overrides("packcache", device="cpu", window=2))
    assert entry == {
        "policy": "packcache",
        "window": 2,
        "decay": 0.5,
        "min_keep": 1.0,  # 3/W capped at 1, as PackCacheConfig.preset derives it
        "selector": "uniform",
    }
    entry = entry_of(
        cli.engine_overrides(
            "packcache", device="cpu", window=8, min_keep=0.25, selector="key_norm"
        )
    )
    assert (entry["window"], entry["min_keep"], entry["selector"]) == (8, 0.25, "key_norm")
    assert entry_of(cli.engine_overrides("sliding", device="cpu", window=3))["window"] == 3


def test_offline_llm_keywords_are_engine_args_fields():
    overrides = cli.engine_overrides("packcache", device="cpu", window=2)
    # LLM(model, **overrides) passes these straight to EngineArgs.
    assert set(overrides) == {
        "scheduler_cls",
        "worker_cls",
        "enable_prefix_caching",
        "additional_config",
    }
    assert all(isinstance(overrides[key], str) for key in ("scheduler_cls", "worker_cls"))


@pytest.mark.parametrize(
    ("knob", "value", "allowed"),
    [
        ("window", 0, "an integer >= 1"),
        ("window", 2.5, "an integer >= 1"),
        ("window", True, "an integer >= 1"),
        ("decay", 0, "a number in (0, 1]"),
        ("decay", 1.5, "a number in (0, 1]"),
        ("decay", float("nan"), "a number in (0, 1]"),
        ("min_keep", -0.1, "a number in [0, 1]"),
        ("min_keep", "0.5", "a number in [0, 1]"),
        ("selector", "random", "one of ['key_norm', 'uniform']"),
    ],
)
def test_bad_knob_names_knob_value_and_range(knob, value, allowed):
    with pytest.raises(ValueError) as error:
        cli.engine_overrides("packcache", device="cpu", **{knob: value})
    message = str(error.value)
    assert message.startswith(f"{knob} must be ")
    assert allowed in message and repr(value) in message


def test_knobs_without_a_policy_are_rejected():
    with pytest.raises(ValueError, match=r"^window needs policy full\|sliding\|packcache$"):
        cli.engine_overrides("none", window=2)


def test_unknown_policy_and_knob_are_rejected():
    with pytest.raises(ValueError, match=r"policy must be one of \['none', 'full'.*got 'lru'"):
        cli.engine_overrides("lru", device="cpu")
    with pytest.raises(ValueError, match=r"unknown PackCache knob\(s\) \['windw'\]; valid knobs"):
        cli.engine_overrides("packcache", device="cpu", windw=2)


# --- merging with the user's own settings ---------------------------------------------------


def test_user_additional_config_is_merged_and_kept():
    user = {"additional_config": {"other_plugin": {"x": 1}}}
    overrides = cli.engine_overrides("sliding", device="cpu", engine_settings=user)
    assert overrides["additional_config"]["other_plugin"] == {"x": 1}
    assert overrides["additional_config"]["packcache"]["policy"] == "sliding"
    assert user == {"additional_config": {"other_plugin": {"x": 1}}}  # not mutated


def test_settings_equal_to_ours_are_accepted():
    first = cli.engine_overrides("packcache", device="cpu", window=3)
    again = cli.engine_overrides("packcache", device="cpu", window=3, engine_settings=first)
    assert again == first


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"enable_prefix_caching": True}, r"needs prefix caching off.*--enable-prefix-caching"),
        ({"speculative_config": {"method": "ngram"}}, r"does not support speculative decoding"),
        ({"scheduler_cls": "my.Scheduler"}, r"--scheduler-cls\) was given: 'my.Scheduler'"),
        ({"worker_cls": "my.Worker"}, r"--worker-cls\) was given: 'my.Worker'"),
        (
            {"additional_config": {"packcache": {"policy": "full"}}},
            r"additional_config\['packcache'\] = .* conflicts with PackCache policy 'packcache'",
        ),
    ],
)
def test_conflicting_user_settings_are_rejected(settings, message):
    with pytest.raises(ValueError, match=message):
        cli.engine_overrides("packcache", device="cpu", engine_settings=settings)


def test_harmless_user_settings_pass():
    settings = {
        "enable_prefix_caching": False,
        "speculative_config": None,
        "scheduler_cls": None,
        "worker_cls": "auto",
        "additional_config": {},
    }
    assert cli.engine_overrides("full", device="cpu", engine_settings=settings)


# --- the argparse group (vLLM's parser is exercised in tests/engine/test_cli_flag.py) -------


@pytest.fixture
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve")
    cli.add_arguments(parser)
    return parser


def test_flags_parse_into_overrides(parser):
    namespace = parser.parse_args(
        ["--kv-policy", "packcache", "--packcache-window", "2", "--packcache-decay", "0.25"]
    )
    assert (namespace.kv_policy, namespace.packcache_window, namespace.packcache_decay) == (
        "packcache",
        2,
        0.25,
    )
    entry = entry_of(cli.overrides_from_namespace(namespace, device="cpu"))
    assert (entry["window"], entry["decay"], entry["min_keep"]) == (2, 0.25, 1.0)


def test_no_flags_leave_the_namespace_bare(parser):
    namespace = parser.parse_args([])
    assert vars(namespace) == {"kv_policy": "none"}  # knobs absent until given
    assert cli.overrides_from_namespace(namespace, device="cpu") == {}
    assert cli.overrides_from_namespace(argparse.Namespace(), device="cpu") == {}


INTEGER_RANGE = "must be an integer >= 1 (frames), got"
DECAY_RANGE = "must be a number in (0, 1], got"
MIN_KEEP_RANGE = "must be a number in [0, 1], got"


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--packcache-window", "0", f"{INTEGER_RANGE} 0"),
        ("--packcache-window", "two", f"{INTEGER_RANGE} 'two'"),
        ("--packcache-decay", "1.5", f"{DECAY_RANGE} 1.5"),
        ("--packcache-decay", "0", f"{DECAY_RANGE} 0"),
        ("--packcache-min-keep", "-1", f"{MIN_KEEP_RANGE} -1"),
        ("--packcache-selector", "lru", "invalid choice: 'lru' (choose from"),
        ("--kv-policy", "lru", "invalid choice: 'lru' (choose from"),
        ("--packcache-sinks", "-1", "must be an integer >= 0 (frames), got -1"),
        ("--packcache-sinks", "one", "must be an integer >= 0 (frames), got 'one'"),
        ("--packcache-floor", "0", "must be a number in (0, 1], got 0"),
        ("--packcache-threshold", "1.5", "must be a number in (0, 1], got 1.5"),
    ],
)
def test_bad_flag_values_are_argparse_errors(parser, capsys, flag, value, expected):
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--kv-policy", "packcache", flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}: {expected}" in capsys.readouterr().err


def test_knob_flags_without_a_policy_name_the_flag(parser):
    for policy in ([], ["--kv-policy", "none"]):
        namespace = parser.parse_args([*policy, "--packcache-min-keep", "0.5"])
        with pytest.raises(ValueError) as error:
            cli.overrides_from_namespace(namespace, device="cpu")
        assert str(error.value) == "--packcache-min-keep needs --kv-policy full|sliding|packcache"


def test_namespace_conflicts_name_the_vllm_flag():
    namespace = argparse.Namespace(kv_policy="sliding", enable_prefix_caching=True)
    with pytest.raises(ValueError, match="--enable-prefix-caching"):
        cli.overrides_from_namespace(namespace, device="cpu")


def test_help_states_each_knob_and_its_range(parser):
    text = parser.format_help()
    for flag in ("--kv-policy", "--packcache-window W", "--packcache-decay RHO"):
        assert flag in text
    for fragment in ("integer >= 1", "0 < rho <= 1", "0 <= b <= 1", "key_norm", "none: the plugin"):
        assert fragment in " ".join(text.split())


# --- reading additional_config back ---------------------------------------------------------


class FakeVllmConfig:
    def __init__(self, additional_config):
        self.additional_config = additional_config


def test_config_round_trips_through_additional_config():
    overrides = cli.engine_overrides("packcache", device="cpu", window=6, selector="key_norm")
    policy, config = cli.packcache_config_from(FakeVllmConfig(overrides["additional_config"]))
    assert policy == "packcache"
    assert config == PackCacheConfig.preset("packcache", window=6, selector="key_norm")
    policy, config = cli.packcache_config_from(
        cli.engine_overrides("full", device="cpu")["additional_config"]
    )
    assert (policy, config.window) == ("full", None)


def test_no_entry_means_no_policy():
    assert cli.packcache_config_from(FakeVllmConfig({})) == ("none", None)
    assert cli.packcache_config_from({"other": 1}) == ("none", None)
    assert cli.packcache_config_from(FakeVllmConfig(object())) == ("none", None)  # SupportsHash


def test_entry_written_by_hand_is_validated():
    def read(entry):
        return cli.packcache_config_from({"packcache": entry})

    assert read({"policy": "sliding"}) == ("sliding", PackCacheConfig.preset("sliding"))
    with pytest.raises(ValueError, match=r"\['window'\] must be an integer >= 1 \(frames\), got 0"):
        read({"policy": "packcache", "window": 0})
    with pytest.raises(ValueError, match=r"\['policy'\] must be one of .*got None"):
        read({"window": 2})
    with pytest.raises(ValueError, match=r"unknown .* key\(s\) \['widow'\]; valid keys"):
        read({"policy": "packcache", "widow": 2})
    with pytest.raises(ValueError, match=r"must be a dict with 'policy'"):
        read("packcache")


# --- per-request overrides ------------------------------------------------------------------

BASE = PackCacheConfig.preset("packcache")


def test_request_without_overrides_keeps_the_base():
    assert cli.parse_request_overrides(None, BASE) == BASE
    assert cli.parse_request_overrides({"unrelated": 1}, BASE) == BASE


def test_request_overrides_merge_over_the_base():
    merged = cli.parse_request_overrides({"packcache": {"window": 6, "decay": 0.75}}, BASE)
    assert merged == PackCacheConfig(window=6, decay=0.75, min_keep=BASE.min_keep)
    flat = cli.parse_request_overrides({"packcache_window": 6, "packcache_decay": 0.75}, BASE)
    assert flat == merged


@pytest.mark.parametrize(
    ("extra_args", "message"),
    [
        ({"packcache": {"size": 2}}, r"request key 'size'; valid keys: \['window'"),
        ({"packcache_size": 2}, r"key 'packcache_size'; valid keys: \['packcache_window'"),
        ({"packcache": {"window": 0}}, r"\['packcache'\]\['window'\] must be an integer >= 1"),
        ({"packcache_decay": 2}, r"\['packcache_decay'\] must be a number in \(0, 1\], got 2"),
        ({"packcache_selector": "x"}, r"must be one of \['key_norm', 'uniform'\], got 'x'"),
        ({"packcache": {"window": 2}, "packcache_window": 3}, r"'window' given twice"),
        ({"packcache": 2}, r"extra_args\['packcache'\] must be a dict of knobs"),
    ],
)  # fmt: skip
def test_bad_request_overrides_are_rejected(extra_args, message):
    with pytest.raises(ValueError, match=message):
        cli.parse_request_overrides(extra_args, BASE)


def test_importing_cli_does_not_import_vllm():
    check = (
        "import sys, packcache_vllm.cli; "
        "loaded = [m for m in sys.modules if m == 'vllm' or m.startswith('vllm.')]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- --packcache-mode -----------------------------------------------------------------------

ARDF_SCHEDULER = "packcache_vllm.engine.ardf_scheduler.ARDFScheduler"
ARDF_CPU_WORKER = "packcache_vllm.engine.ardf_worker.ARDFCPUWorker"


def test_next_token_mode_is_the_default_and_leaves_the_entry_as_it_was():
    default = cli.engine_overrides("packcache", device="cpu")
    assert cli.engine_overrides("packcache", device="cpu", mode="next-token") == default
    assert "mode" not in entry_of(default)
    assert cli.packcache_mode_from(default["additional_config"]) == "next-token"


def test_frame_parallel_mode_picks_its_scheduler_and_worker():
    overrides = cli.engine_overrides("full", device="cpu", mode="frame-parallel")
    assert (overrides["scheduler_cls"], overrides["worker_cls"]) == (
        ARDF_SCHEDULER,
        ARDF_CPU_WORKER,
    )
    assert entry_of(overrides)["mode"] == "frame-parallel"
    assert cli.packcache_mode_from(overrides["additional_config"]) == "frame-parallel"
    policy, config = cli.packcache_config_from(overrides["additional_config"])
    assert (policy, config) == ("full", PackCacheConfig.preset("full"))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cli.engine_overrides("full", device="cpu", mode="frames"),
         r"mode must be one of \['next-token', 'frame-parallel'\], got 'frames'"),
        (lambda: cli.engine_overrides("none", device="cpu", mode="frame-parallel"),
         r"mode frame-parallel needs policy full\|sliding\|packcache"),
        (lambda: cli.engine_overrides("full", device="xpu", mode="frame-parallel"),
         r"--packcache-mode frame-parallel runs on \['cpu', 'cuda'\], this vLLM platform is 'xpu'"),
        (lambda: cli.packcache_mode_from({"packcache": {"policy": "full", "mode": "x"}}),
         r"\['mode'\] must be one of \['next-token', 'frame-parallel'\], got 'x'"),
    ],
)  # fmt: skip
def test_bad_mode_is_rejected_naming_it(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_mode_flag_parses_into_overrides(parser, capsys):
    namespace = parser.parse_args(
        ["--kv-policy", "packcache", "--packcache-mode", "frame-parallel"]
    )
    overrides = cli.overrides_from_namespace(namespace, device="cpu")
    assert overrides["scheduler_cls"] == ARDF_SCHEDULER
    with pytest.raises(ValueError, match=r"--packcache-mode frame-parallel needs --kv-policy"):
        cli.overrides_from_namespace(parser.parse_args(["--packcache-mode", "frame-parallel"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--kv-policy", "full", "--packcache-mode", "diffusion"])
    assert "invalid choice: 'diffusion'" in capsys.readouterr().err
