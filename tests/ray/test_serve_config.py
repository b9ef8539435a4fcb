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


def test_video_store_settings_over_the_environment(example_args, monkeypatch, tmp_path):
    from packcache_vllm.videos.jobs import EXPIRE_ENV, MAX_ACTIVE_ENV, STORE_ENV, StoreSettings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(MAX_ACTIVE_ENV, "5")
    monkeypatch.setenv(STORE_ENV, "elsewhere")
    monkeypatch.delenv(EXPIRE_ENV, raising=False)
    given = {**example_args, "videos_dir": "jobs", "videos_expire_s": 60}
    store = ServeSettings.from_args(given).video_store()
    assert store == StoreSettings((tmp_path / "jobs").resolve(), 5, 60)
    from_env = ServeSettings.from_args(example_args).video_store()
    assert from_env == StoreSettings((tmp_path / "elsewhere").resolve(), 5, None)
    with pytest.raises(ValueError, match="max_active must be an integer >= 1, got 0"):
        ServeSettings.from_args({**example_args, "videos_max_active": 0}).video_store()
    with pytest.raises(ValueError, match="expire_after_s must be an integer >= 1 or None, got 0"):
        ServeSettings.from_args({**example_args, "videos_expire_s": 0}).video_store()


def test_the_videos_mode_is_the_engines(example_args):
    assert ServeSettings.from_args(example_args).mode() == "next-token"
    frame_parallel = {**example_args, "packcache": {"window": 4, "mode": "frame-parallel"}}
    settings = ServeSettings.from_args(frame_parallel)
    assert settings.mode() == "frame-parallel"
    assert settings.full_engine_kwargs()["scheduler_cls"].endswith("ARDFScheduler")
