"""Counters of what the PackCache policy did, scrapeable on vLLM's own ``/metrics``.

The scheduler (in vLLM's engine-core process) keeps running totals per engine and publishes a
small JSON snapshot to ``$PACKCACHE_METRICS_DIR/<engine>.json`` when they change; the process
that serves ``/metrics`` (the API server) has a Prometheus collector that reads those files at
scrape time. A file is the simplest channel that works the same in one-process mode, in
``vllm serve``'s multi-process mode, and with several engines (data parallel): vLLM's own stats
path carries only its fixed ``SchedulerStats`` fields from the engine core to the API server.

Exported (``engine`` label = the data-parallel rank, summed over engines of that rank):
    packcache:frames_completed_total   generated frames completed in a cache (each a point where
                                       the policy runs)
    packcache:compactions_total        those after which the cache was re-packed (tokens evicted
                                       or moved); the fill phase's frames are not
    packcache:evicted_tokens_total     tokens removed from caches (all requests, ever)
    packcache:blocks_freed_total       KV blocks returned to vLLM's pool by compaction
    packcache:moved_tokens_total       token slots copied while packing or key-sorting (per layer)
    packcache:dropped_frames_total     generated frames that left a cache entirely
    packcache:preemptions_total        packcache requests preempted (they restart unpacked)
    packcache:max_request_physical_tokens  gauge: the most tokens any running request's cache
                                       has held (0 when none runs)
    packcache:request_peak_physical_tokens  histogram over finished caches: the most tokens
                                       each held
    packcache:request_evicted_tokens   histogram over finished caches: tokens evicted from each

The two histograms have a ``cache`` label: ``request``, or ``cfg_twin`` for the hidden
unconditional twin of a guided frame-parallel request (its own cache, in the same pool). Each
cache is observed once, when it finishes (or is aborted), so a histogram's count is the number of
finished caches whatever the scrape or publish rate; per-request labels would grow without bound.
Buckets: powers of two from 256 tokens (less than a frame of a small grid) to 524,288 (a
request's position limit), so a bucket boundary lies within 2x of any video's footprint.

``register()`` (plugin.py) makes the directory in the first vLLM process (children inherit the
variable) and registers the collector in every process (only the API server serves it). With
``--kv-policy none`` no scheduler writes a file, so ``/metrics`` is exactly vLLM's. Works with
one API server; with ``--api-server-count`` > 1 vLLM serves a multi-process registry that does
not include this collector.
"""

from __future__ import annotations

import atexit
import bisect
import itertools
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

METRICS_DIR_ENV = "PACKCACHE_METRICS_DIR"
METRIC_PREFIX = "packcache:"
COUNTER_HELP = {
    "frames_completed": "Generated frames completed in a request's KV cache.",
    "compactions": (
        "Frame completions after which a request's KV cache was re-packed (tokens evicted or "
        "moved)."
    ),
    "evicted_tokens": "Tokens evicted from KV caches by the PackCache policy.",
    "blocks_freed": "KV blocks returned to vLLM's block pool by compaction.",
    "moved_tokens": (
        "Token slots copied while packing kept tokens or sorting a frame by its keys (per layer)."
    ),
    "dropped_frames": "Generated frames that left a request's cache entirely.",
    "preemptions": "PackCache requests preempted (they restart with an unpacked cache).",
}
HISTOGRAM_HELP = {
    "request_peak_physical_tokens": "Per finished KV cache: the most tokens it held at once.",
    "request_evicted_tokens": "Per finished KV cache: the tokens evicted from it.",
}
MAX_PHYSICAL_HELP = "The most tokens any running request's KV cache has held (0 when none runs)."
TOKEN_BUCKETS = tuple(2**k for k in range(8, 20))  # 256 .. 524,288 tokens
REQUEST_CACHE, TWIN_CACHE = "request", "cfg_twin"  # the histograms' ``cache`` label
_snapshot_names = itertools.count()


@dataclass
class EngineCounters:
    """Running totals of one engine's scheduler (mutable: they grow every compaction)."""

    frames_completed: int = 0
    compactions: int = 0
    evicted_tokens: int = 0
    blocks_freed: int = 0
    moved_tokens: int = 0
    dropped_frames: int = 0
    preemptions: int = 0

    def add_compaction(
        self, *, frames: int, evicted: int, freed: int, moved: int, dropped: int
    ) -> None:
        """One request's frames completing (``frames`` of them) and what the policy did then."""
        self.frames_completed += frames
        self.compactions += bool(evicted or moved)
        self.evicted_tokens += evicted
        self.blocks_freed += freed
        self.moved_tokens += moved
        self.dropped_frames += dropped


@dataclass
class TokenHistogram:
    """Observations of one per-cache quantity in ``TOKEN_BUCKETS`` (mutable)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(TOKEN_BUCKETS) + 1))
    total: int = 0  # the sum of the observations

    def observe(self, tokens: int) -> None:
        self.counts[bisect.bisect_left(TOKEN_BUCKETS, tokens)] += 1  # the last one is +Inf
        self.total += tokens

    def add(self, other: TokenHistogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def cumulative_buckets(self) -> list[tuple[str, int]]:
        """Prometheus' ``le`` buckets: (upper bound, observations at most that)."""
        bounds = [str(float(b)) for b in TOKEN_BUCKETS] + ["+Inf"]
        return list(zip(bounds, itertools.accumulate(self.counts), strict=True))


@dataclass
class FinishedCaches:
    """Histograms of finished caches, per histogram name and ``cache`` kind (mutable)."""

    histograms: dict[str, dict[str, TokenHistogram]] = field(
        default_factory=lambda: {name: {} for name in HISTOGRAM_HELP}
    )

    def observe(self, cache: str, *, peak_physical_tokens: int, evicted_tokens: int) -> None:
        values = {
            "request_peak_physical_tokens": peak_physical_tokens,
            "request_evicted_tokens": evicted_tokens,
        }
        for name, value in values.items():
            self.histograms[name].setdefault(cache, TokenHistogram()).observe(value)


@dataclass(frozen=True)
class EngineSnapshot:
    """What one engine publishes: its totals, its finished caches, and the most tokens a running
    request's cache has held."""

    engine: str
    counters: EngineCounters
    finished: FinishedCaches = field(default_factory=FinishedCaches)
    max_request_physical_tokens: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EngineSnapshot:
        raw = json.loads(text)
        histograms = {
            name: {cache: TokenHistogram(**h) for cache, h in by_cache.items()}
            for name, by_cache in raw["finished"]["histograms"].items()
        }
        return cls(
            engine=raw["engine"],
            counters=EngineCounters(**raw["counters"]),
            finished=FinishedCaches(histograms),
            max_request_physical_tokens=raw["max_request_physical_tokens"],
        )


# --- the directory --------------------------------------------------------------------------


def metrics_dir() -> Path | None:
    value = os.environ.get(METRICS_DIR_ENV)
    return Path(value) if value else None


def ensure_metrics_dir() -> Path:
    """The directory of this process tree's snapshots: made by the first process that asks
    (and removed when it exits), inherited by the processes it starts."""
    existing = metrics_dir()
    if existing is not None:
        existing.mkdir(parents=True, exist_ok=True)
        return existing
    path = Path(tempfile.mkdtemp(prefix="packcache-metrics-"))
    os.environ[METRICS_DIR_ENV] = str(path)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# --- engine side: publishing -----------------------------------------------------------------


class SnapshotPublisher:
    """Writes one engine's snapshot atomically; at most every ``min_interval_s`` unless forced."""

    def __init__(self, engine: str, directory: Path, min_interval_s: float = 0.5) -> None:
        self.engine = engine
        self.path = directory / f"{engine}-{os.getpid()}-{next(_snapshot_names)}.json"
        self.min_interval_s = min_interval_s
        self.last_write = float("-inf")

    def due(self) -> bool:
        """Whether ``min_interval_s`` has passed since the last write."""
        return time.monotonic() - self.last_write >= self.min_interval_s

    def publish(self, snapshot: EngineSnapshot, *, force: bool = False) -> None:
        if not force and not self.due():
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(snapshot.to_json())
        os.replace(tmp, self.path)
        self.last_write = time.monotonic()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# --- reading ---------------------------------------------------------------------------------


def read_snapshots(directory: Path | None = None) -> list[EngineSnapshot]:
    """Every engine snapshot in ``directory`` (default: this process tree's)."""
    directory = directory or metrics_dir()
    if directory is None or not directory.is_dir():
        return []
    snapshots = []
    for path in sorted(directory.glob("*.json")):
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue  # its engine shut down between the listing and the read
        snapshots.append(EngineSnapshot.from_json(text))
    return snapshots


def total_counters(directory: Path | None = None) -> EngineCounters:
    """The counters summed over every engine that published to ``directory``."""
    total = EngineCounters()
    for snapshot in read_snapshots(directory):
        for name, value in asdict(snapshot.counters).items():
            setattr(total, name, getattr(total, name) + value)
    return total


# --- API-server side: the Prometheus collector ----------------------------------------------


class PackCacheCollector:
    """A prometheus_client collector over the snapshot files (read at scrape time)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshots = read_snapshots(self.directory)
        if not snapshots:
            return
        for name, help_text in COUNTER_HELP.items():
            family = CounterMetricFamily(METRIC_PREFIX + name, help_text, labels=["engine"])
            for engine, value in _sum_by_engine(snapshots, name).items():
                family.add_metric([engine], value)
            yield family
        family = GaugeMetricFamily(
            METRIC_PREFIX + "max_request_physical_tokens", MAX_PHYSICAL_HELP, labels=["engine"]
        )
        for engine, value in _max_physical_by_engine(snapshots).items():
            family.add_metric([engine], value)
        yield family
        yield from _histogram_families(snapshots)


def _sum_by_engine(snapshots: list[EngineSnapshot], counter: str) -> dict[str, int]:
    sums: dict[str, int] = {}
    for snapshot in snapshots:
        sums[snapshot.engine] = sums.get(snapshot.engine, 0) + getattr(snapshot.counters, counter)
    return sums


def _max_physical_by_engine(snapshots: list[EngineSnapshot]) -> dict[str, int]:
    maxima: dict[str, int] = {}
    for snapshot in snapshots:
        value = snapshot.max_request_physical_tokens
        maxima[snapshot.engine] = max(maxima.get(snapshot.engine, 0), value)
    return maxima


def _histogram_families(snapshots: list[EngineSnapshot]):
    from prometheus_client.core import HistogramMetricFamily

    for name, help_text in HISTOGRAM_HELP.items():
        merged: dict[tuple[str, str], TokenHistogram] = {}
        for snapshot in snapshots:
            for cache, histogram in snapshot.finished.histograms[name].items():
                merged.setdefault((snapshot.engine, cache), TokenHistogram()).add(histogram)
        family = HistogramMetricFamily(METRIC_PREFIX + name, help_text, labels=["engine", "cache"])
        for labels, histogram in sorted(merged.items()):
            family.add_metric(list(labels), histogram.cumulative_buckets(), histogram.total)
        yield family


_collector: PackCacheCollector | None = None


def register_collector(directory: Path) -> None:
    """Put the collector on prometheus_client's default registry (the one vLLM's ``/metrics``
    serves), once per process."""
    global _collector
    if _collector is not None:
        return
    from prometheus_client import REGISTRY

    _collector = PackCacheCollector(directory)
    REGISTRY.register(_collector)
