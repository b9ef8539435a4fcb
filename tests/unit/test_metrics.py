"""The counter snapshots and the Prometheus collector that serves them on /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from packcache_vllm.metrics import (
    REQUEST_CACHE,
    TWIN_CACHE,
    EngineCounters,
    EngineSnapshot,
    FinishedCaches,
    PackCacheCollector,
    SnapshotPublisher,
    TokenHistogram,
    read_snapshots,
    total_counters,
)


def snapshot(engine: str, evicted: int, finished=None, max_physical: int = 0) -> EngineSnapshot:
    counters = EngineCounters()
    counters.add_compaction(frames=1, evicted=evicted, freed=2, moved=5, dropped=1)
    return EngineSnapshot(engine, counters, finished or FinishedCaches(), max_physical)


def finished_caches(*observations: tuple[str, int, int]) -> FinishedCaches:
    finished = FinishedCaches()
    for cache, peak, evicted in observations:
        finished.observe(cache, peak_physical_tokens=peak, evicted_tokens=evicted)
    return finished


def test_snapshot_round_trips_through_json():
    original = snapshot("0", 40, finished_caches((REQUEST_CACHE, 100, 40)), max_physical=96)
    assert EngineSnapshot.from_json(original.to_json()) == original


def test_compactions_count_only_frames_that_changed_the_cache():
    """A frame completing in the fill phase evicts and moves nothing: it is a completed frame,
    not a compaction."""
    counters = EngineCounters()
    counters.add_compaction(frames=1, evicted=0, freed=0, moved=0, dropped=0)
    counters.add_compaction(frames=1, evicted=12, freed=1, moved=12, dropped=0)
    counters.add_compaction(frames=1, evicted=0, freed=0, moved=32, dropped=0)  # key-sorted
    assert (counters.frames_completed, counters.compactions) == (3, 2)


def test_histogram_buckets_are_upper_bounds():
    histogram = TokenHistogram()
    for tokens in (256, 257, 600_000):
        histogram.observe(tokens)
    buckets = dict(histogram.cumulative_buckets())
    assert (buckets["256.0"], buckets["512.0"], buckets["524288.0"], buckets["+Inf"]) == (
        1,
        2,
        2,
        3,
    )
    assert histogram.total == 256 + 257 + 600_000


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


def test_collector_exports_counters_gauge_and_histograms_without_request_labels(tmp_path):
    finished = finished_caches((REQUEST_CACHE, 300, 64), (TWIN_CACHE, 280, 60))
    SnapshotPublisher("0", tmp_path).publish(snapshot("0", 64, finished, max_physical=96))
    later = finished_caches((REQUEST_CACHE, 1000, 0))
    SnapshotPublisher("0", tmp_path).publish(snapshot("0", 6, later, max_physical=40))  # same rank
    registry = CollectorRegistry()
    registry.register(PackCacheCollector(tmp_path))
    text = generate_latest(registry).decode()
    assert 'packcache:evicted_tokens_total{engine="0"} 70.0' in text
    assert 'packcache:dropped_frames_total{engine="0"} 2.0' in text
    assert 'packcache:frames_completed_total{engine="0"} 2.0' in text
    assert 'packcache:max_request_physical_tokens{engine="0"} 96.0' in text  # the larger
    peak = "packcache:request_peak_physical_tokens"
    assert f'{peak}_bucket{{cache="request",engine="0",le="512.0"}} 1.0' in text
    assert f'{peak}_bucket{{cache="request",engine="0",le="1024.0"}} 2.0' in text
    assert f'{peak}_count{{cache="request",engine="0"}} 2.0' in text
    assert f'{peak}_sum{{cache="request",engine="0"}} 1300.0' in text
    assert f'{peak}_count{{cache="cfg_twin",engine="0"}} 1.0' in text
    assert 'packcache:request_evicted_tokens_sum{cache="request",engine="0"} 64.0' in text
    assert "request_id" not in text


def test_collector_is_silent_without_snapshots(tmp_path):
    registry = CollectorRegistry()
    registry.register(PackCacheCollector(tmp_path))
    assert generate_latest(registry) == b""
