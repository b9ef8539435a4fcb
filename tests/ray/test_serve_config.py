"""The Ray Serve application of examples/ray_serve_config.yaml: what every replica gets, and a bad
knob failing when the application is built (before Serve starts a replica). No cluster needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from packcache_vllm.scale.serve import ServeSettings, llm_config

EXAMPLE = Path(__file__).parents[2] / "examples" / "ray_serve_config.yaml"


@pytest.fixture(scope="module")
def example_args() -> dict:
    (app,) = yaml.safe_load(EXAMPLE.read_text())["applications"]
    assert app["import_path"] == "packcache_vllm.scale.serve:build_app"
    return app["args"]


def test_example_config_turns_packcache_on_in_every_replica(example_args):
    config = llm_config(ServeSettings.from_args(example_args))
    engine = config.engine_kwargs
    assert engine["scheduler_cls"] == "packcache_vllm.engine.scheduler.PackCacheScheduler"
    assert engine["worker_cls"] == "packcache_vllm.engine.worker.PackCacheCPUWorker"
    assert engine["enable_prefix_caching"] is False
    assert engine["additional_config"]["packcache"]["window"] == 4
    assert engine["kv_cache_memory_bytes"] == 256 << 20
    assert config.placement_group_config["bundles"] == [{"CPU": 1}]
    scaling = config.deployment_config["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 2)
    assert scaling["target_ongoing_requests"] == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"packcache": {"window": 0}}, r"window must be an integer >= 1 \(frames\), got 0"),
        ({"packcache": {"windw": 2}}, r"unknown PackCache knob\(s\) \['windw'\]"),
        ({"kv_policy": "lru"}, r"policy must be one of .*got 'lru'"),
        ({"engine_kwargs": {"enable_prefix_caching": True}}, "needs prefix caching off"),
        ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "max_replicas must be >= "),
        ({"replicas": 2}, r"unknown serve argument\(s\) \['replicas'\]"),
    ],
)
def test_bad_settings_fail_when_the_app_is_built(example_args, change, message):
    with pytest.raises(ValueError, match=message):
        llm_config(ServeSettings.from_args({**example_args, **change}))
