"""Quality records -> one summary per (mode, setting): per-frame means over scenes, drift, the
matching speed row of ``benchmarks/run.py`` if given, bootstrap intervals over scenes
(``quality_stats``); a markdown table and PNG plots."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

from quality_stats import LEVEL, Interval, bootstrap_mean, paired_difference, per_scene

MEASURES = ("cell_accuracy", "background_accuracy", "position_error", "lost_fraction")


@dataclass(frozen=True)
class Summary:
    mode: str
    label: str
    policy: str  # a --kv-policy preset; "–" for the baseline
    selector: str | None  # None for the baseline
    window: int | None
    decay: float | None
    min_keep: float | None
    history_frames: float | None
    curves: dict[str, list[float]]  # measure -> per generated frame, mean over scenes
    first: float  # cell accuracy, mean over the first `drift` frames
    last: float  # ... over the last `drift` frames
    speedup: float | None  # end-to-end time of the full cache / this setting (benchmarks/run.py)
    speed_workload: str | None
    scenes: dict[str, dict[int, float]] = field(default_factory=dict)  # quality_stats.per_scene
    intervals: dict[str, Interval] = field(default_factory=dict)  # statistic -> over scenes
    last_vs_full: Interval | None = None  # last-8 accuracy minus the full cache's, paired

    def mean(self, measure: str) -> float:
        return nanmean(self.curves[measure])


def nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.mean(kept) if kept else math.nan


def summarise(records: list[dict], drift: int, speed_rows: list) -> list[Summary]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["mode"], record["label"]), []).append(record)
    summaries = []
    for (mode, label), group in groups.items():
        curves = {
            m: [nanmean(list(frame)) for frame in zip(*(r[m] for r in group), strict=True)]
            for m in MEASURES
        }
        first = group[0]
        speedup, workload = match_speed(first, speed_rows)
        scenes = per_scene(group, drift)
        summaries.append(
            Summary(
                mode=mode,
                label=label,
                policy=first["policy"],
                selector=first.get("selector"),
                window=first.get("window"),
                decay=first.get("decay"),
                min_keep=first.get("min_keep"),
                history_frames=first.get("history_frames"),
                curves=curves,
                first=statistics.mean(curves["cell_accuracy"][:drift]),
                last=statistics.mean(curves["cell_accuracy"][-drift:]),
                speedup=speedup,
                speed_workload=workload,
                scenes=scenes,
                intervals={name: bootstrap_mean(list(v.values())) for name, v in scenes.items()},
            )
        )
    return [with_full_difference(s, summaries) for s in summaries]


def with_full_difference(summary: Summary, summaries: list[Summary]) -> Summary:
    """The summary with its paired last-8 difference to the same mode's full cache."""
    full = next((s for s in summaries if (s.mode, s.label) == (summary.mode, "full")), None)
    if full is None or full is summary or not summary.scenes:
        return summary
    return replace(
        summary, last_vs_full=paired_difference(summary.scenes["last"], full.scenes["last"])
    )


def matching_quality(
    summaries: list[Summary], mode: str, policy: str, window: int | None
) -> Summary | None:
    """The uniform-selector summary with this mode, policy ("stock" reads as "full":
    token-exact while nothing is evicted) and resolved window."""
    policy = "full" if policy == "stock" else policy
    return next(
        (
            s
            for s in summaries
            if (s.mode, s.policy, s.window, s.selector) == (mode, policy, window, "uniform")
        ),
        None,
    )


def match_speed(record: dict, speed_rows: list) -> tuple[float | None, str | None]:
    """The end-to-end speed-up vs the full cache of the benchmark row (``bench_report.Row``, its
    window resolved from the preset) with the same mode, policy and window, in its longest, most
    concurrent workload."""
    if record["mode"] == "baseline" or record.get("selector", "uniform") != "uniform":
        return None, None
    setting = (record["mode"], record["policy"], record["window"])
    candidates = [r for r in speed_rows if (r.mode, r.policy, r.window) == setting]
    if not candidates:
        return None, None
    best = max(candidates, key=lambda r: (r.frames, r.requests))
    workload = (best.mode, best.frames, best.requests)
    full = next(
        (
            r
            for r in speed_rows
            if r.policy == "full" and (r.mode, r.frames, r.requests) == workload
        ),
        None,
    )
    if full is None:
        return None, None
    return full.end_to_end_s / best.end_to_end_s, f"{best.requests} videos x {best.frames} frames"


# --- table ---------------------------------------------------------------------------------------


def table(summaries: list[Summary]) -> str:
    level = f"{LEVEL:.0%}"
    head = (
        "| mode | setting | W | ρ | b_min | history (frames) | cell acc | first 8 "
        f"| last 8 [{level} CI] | last 8 − full, paired [{level} CI] "
        f"| drift first − last 8 [{level} CI] | background acc | position error (cells) "
        f"| objects lost [{level} CI] | end-to-end vs full |\n" + "|---" * 15 + "|\n"
    )
    lines = []
    for s in summaries:
        speed = "–" if s.speedup is None else f"{s.speedup:.2f}× ({s.speed_workload})"
        cells = [
            s.mode,
            s.label,
            fmt(s.window),
            fmt(s.decay),
            fmt(s.min_keep),
            fmt(s.history_frames),
            pct(s.mean("cell_accuracy")),
            pct(s.first),
            with_interval(s.last, s.intervals.get("last")),
            "–" if s.last_vs_full is None else interval_points(s.last_vs_full),
            with_interval(s.first - s.last, s.intervals.get("drift")),
            pct(s.mean("background_accuracy")),
            f"{s.mean('position_error'):.2f}",
            with_interval(s.mean("lost_fraction"), s.intervals.get("lost")),
            speed,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def with_interval(value: float, interval: Interval | None) -> str:
    """``value`` in %, and the interval over scenes if there is one."""
    if interval is None or interval.n < 2:
        return pct(value)
    return f"{pct(value)} [{100 * interval.low:.1f}, {100 * interval.high:.1f}]"


def interval_points(interval: Interval) -> str:
    """A difference in percentage points with its interval."""
    return f"{100 * interval.mean:+.1f} [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"


# --- plots ---------------------------------------------------------------------------------------


def plot_drift(summaries: list[Summary], out_dir: Path) -> list[Path]:
    """Per mode: cell accuracy and object position error per generated frame, every setting."""
    plt = pyplot()
    baseline = next((s for s in summaries if s.mode == "baseline"), None)
    written = []
    for mode in sorted({s.mode for s in summaries} - {"baseline"}):
        fig, (accuracy, position) = plt.subplots(1, 2, figsize=(13, 4.8))
        for s in [s for s in summaries if s.mode == mode] + ([baseline] if baseline else []):
            style = {"linestyle": "--", "color": "grey"} if s is baseline else {}
            frames = range(1, len(s.curves["cell_accuracy"]) + 1)
            accuracy.plot(frames, s.curves["cell_accuracy"], label=s.label, **style)
            position.plot(frames, s.curves["position_error"], label=s.label, **style)
        accuracy.set(
            xlabel="generated frame",
            ylabel="cell accuracy (mean over scenes)",
            title=f"{mode}: drift over a long video",
        )
        position.set(
            xlabel="generated frame",
            ylabel="object position error (cells)",
            title="objects found: centroid distance to the truth",
        )
        accuracy.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"quality_{mode}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_quality_vs_speed(summaries: list[Summary], out_dir: Path) -> Path:
    """Last-frames cell accuracy against end-to-end speed-up vs the full cache."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for mode, marker in (("next-token", "o"), ("frame-parallel", "s")):
        points = [s for s in summaries if s.mode == mode and s.speedup is not None]
        ax.scatter(
            [s.speedup for s in points], [100 * s.last for s in points], marker=marker, label=mode
        )
        for s in points:
            ax.annotate(
                s.label,
                (s.speedup, 100 * s.last),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
    baseline = next((s for s in summaries if s.mode == "baseline"), None)
    if baseline is not None:
        ax.axhline(100 * baseline.last, color="grey", linestyle="--", label=baseline.label)
    ax.set(
        xlabel="end-to-end speed-up vs the full cache (×)",
        ylabel="cell accuracy, last 8 frames (%)",
        title="what the speed costs",
    )
    ax.legend()
    fig.tight_layout()
    path = out_dir / "quality_vs_speed.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
