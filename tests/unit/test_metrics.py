"""The counter snapshots and the Prometheus collector that serves them on /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from packcache_vllm.metrics import (
    EngineCounters,
    EngineSnapshot,
    PackCacheCollector,
    RequestKVStats,
    SnapshotPublisher,
    read_snapshots,
    total_counters,
)


def snapshot(engine: str, evicted: int, requests=None) -> EngineSnapshot:
    counters = EngineCounters()
    counters.add_compaction(evicted=evicted, freed=2, moved=5, dropped=1)
    return EngineSnapshot(engine, counters, requests or {})


def test_snapshot_round_trips_through_json():
    original = snapshot("0", 40, {"r1": RequestKVStats(physical_tokens=100, evicted_tokens=40)})
    assert EngineSnapshot.from_json(original.to_json()) == original


def test_publisher_throttles_unless_forced(tmp_path):
    publisher = SnapshotPublisher("0", tmp_path, min_interval_s=3600)
    publisher.publish(snapshot("0", 1))
    publisher.publish(snapshot("0", 2))  # within the interval: skipped
    assert read_snapshots(tmp_path)[0].counters.evicted_tokens == 1
    publisher.publish(snapshot("0", 3), force=True)
    assert read_snapshots(tmp_path)[0].counters.evicted_tokens == 3
    publisher.remove()
    assert read_snapshots(tmp_path) == []


def test_totals_sum_every_engine(tmp_path):
    SnapshotPublisher("0", tmp_path).publish(snapshot("0", 10))
    SnapshotPublisher("1", tmp_path).publish(snapshot("1", 32))
    total = total_counters(tmp_path)
    assert (total.evicted_tokens, total.compactions, total.blocks_freed) == (42, 2, 4)


def test_collector_exports_counters_and_request_gauges(tmp_path):
    requests = {"video-7": RequestKVStats(physical_tokens=96, evicted_tokens=64)}
    SnapshotPublisher("0", tmp_path).publish(snapshot("0", 64, requests))
    SnapshotPublisher("0", tmp_path).publish(snapshot("0", 6))  # same rank: summed
    registry = CollectorRegistry()
    registry.register(PackCacheCollector(tmp_path))
    text = generate_latest(registry).decode()
    assert 'packcache:evicted_tokens_total{engine="0"} 70.0' in text
    assert 'packcache:request_physical_tokens{engine="0",request_id="video-7"} 96.0' in text
    assert 'packcache:dropped_frames_total{engine="0"} 2.0' in text


def test_collector_is_silent_without_snapshots(tmp_path):
    registry = CollectorRegistry()
    registry.register(PackCacheCollector(tmp_path))
    assert generate_latest(registry) == b""
