"""Quality x KV per video x speed, every policy setting of a quality run: one table, one picture.

    .venv/bin/python benchmarks/quality_pareto.py --out benchmarks/results/quality-clip25

Reads ``--out``'s quality.jsonl (``benchmarks/quality.py``), one mode (default next-token), and
writes ``pareto.md`` (the table) and ``pareto.png`` (last-8-frame cell accuracy, with its 95 %
bootstrap interval over scenes, against the KV each video holds; the Pareto front marked).

KV per video counts the tokens of generated frames a video's cache holds, the frame in progress
included and the prompt left out (every policy keeps the prompt whole): at its peak (what
admission reserves: PackCache's fill phase holds W whole frames) and at the video's last frame
(the steady state, for a video long enough to reach it). Both follow from the policy's
``keep_counts`` and the frame size of the model's scenes.

Speed, each as the full cache's time over the setting's: the wall time of the quality run's own
generation (all scenes batched in one engine, the same model; runs made at different times on a
shared machine), and, where ``--out``/speed.jsonl has the setting (``quality_speed.py``: a few
videos, the same model), end-to-end and last-four-frame time, medians of its runs (their count
in brackets); "not measured" otherwise.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class VideoKV:
    """Tokens of generated frames one video's cache holds (prompt excluded)."""

    peak: int
    last: int  # while the video's last frame is generated


def video_kv(config, frames: int, tokens_per_frame: int) -> VideoKV:
    """``config``: a KV policy (``PackCacheConfig`` or subclass); a video of ``frames`` generated
    frames of ``tokens_per_frame`` tokens each. After n complete frames the cache holds the sink
    frames whole, ``keep_counts`` of the frames past them, and the frame in progress."""
    held = []
    for complete in range(frames):
        sinks = min(config.sink_frames, complete)
        kept = config.keep_counts(complete - sinks, tokens_per_frame)
        held.append((sinks + 1) * tokens_per_frame + sum(kept))
    return VideoKV(peak=max(held), last=held[-1])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, value) that no other point matches or beats on both (lower
    cost, higher value) while beating on one; sorted by cost."""
    front = [
        i
        for i, (cost, value) in enumerate(points)
        if not any(
            c <= cost and v >= value and (c, v) != (cost, value)
            for j, (c, v) in enumerate(points)
            if j != i
        )
    ]
    return sorted(front, key=lambda i: points[i])


def history_frames(config) -> float | None:
    """Steady-state frames' worth of generated history, the sink frames included (None: all)."""
    steady = config.steady_state_frames()
    return None if steady is None else steady + config.sink_frames


# --- driver --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    summary: object  # quality_report.Summary
    history: float | None
    kv: VideoKV
    speedup: float | None  # the full cache's generation wall time / this setting's
    bench: dict[str, float] | None  # speed.jsonl's seconds for this setting, median of its runs


def frame_tokens(record: dict) -> int:
    """Tokens per generated frame of the record's model (the frame grid of its scenes)."""
    from packcache_vllm.core.layout import tokens_per_frame
    from packcache_vllm.video.heldout import model_heldout_clips

    frames = len(record["cell_accuracy"])
    layout = model_heldout_clips(Path(record["model"]), frames, 1)[0].layout
    return tokens_per_frame(layout.rows, layout.cols)


def rows_of(
    records: list[dict], mode: str, frame_len: int, speed: list[dict]
) -> tuple[list[Row], object]:
    """One row per setting of ``mode``, and the copy-the-first-frame baseline's summary."""
    from quality import DRIFT_FRAMES, Setting
    from quality_report import summarise

    summaries = summarise(records, DRIFT_FRAMES, [])
    first = {(r["mode"], r["label"]): r for r in reversed(records)}
    frames = len(records[0]["cell_accuracy"])
    full_s = first.get((mode, "full"), {}).get("generate_s")
    rows = []
    for s in (s for s in summaries if s.mode == mode):
        record = first[(s.mode, s.label)]
        setting = Setting(record["policy"], record["window"], record["selector"], record["extra"])
        config = setting.config()
        seconds = record.get("generate_s")
        speedup = None if full_s is None or not seconds else full_s / seconds
        bench = median_speed([b for b in speed if b["label"] == s.label])
        kv = video_kv(config, frames, frame_len)
        rows.append(Row(s, history_frames(config), kv, speedup, bench))
    baseline = next((s for s in summaries if s.mode == "baseline"), None)
    return rows, baseline


def median_speed(runs: list[dict]) -> dict[str, float] | None:
    """speed.jsonl's runs of one setting -> their median seconds (a shared machine's slow outlier
    moves it least), and how many runs (None: none)."""
    if not runs:
        return None
    fields = ("end_to_end_s", "last_four_s")
    return {"runs": len(runs), **{f: statistics.median(r[f] for r in runs) for f in fields}}


def table(rows: list[Row], baseline, frame_len: int) -> str:
    from quality_report import interval_points, with_interval

    full = next((r for r in rows if r.summary.label == "full"), None)
    head = (
        "| X | setting | KV per video, peak / last frame: tokens (frames) | peak vs full "
        "| last 8 [95 % CI] | last 8 − full, paired | drift first − last 8 "
        "| objects lost [95 % CI] | generation vs full (quality run) "
        "| end-to-end vs full | last 4 vs full |\n" + "|---" * 11 + "|\n"
    )
    lines = []
    if baseline is not None:
        cells = [
            "–",
            baseline.label,
            "–",
            "–",
            with_interval(baseline.last, baseline.intervals.get("last")),
        ]
        lines.append("| " + " | ".join(cells + ["–"] * 6) + " |")
    for r in sorted(rows, key=lambda r: (r.history is not None, r.history or 0, r.kv.peak)):
        s = r.summary
        ratio = "–" if full is None else f"{r.kv.peak / full.kv.peak:.2f}"
        cells = [
            "all" if r.history is None else f"{r.history:.2f}",
            s.label,
            kv_cell(r.kv, frame_len),
            ratio,
            with_interval(s.last, s.intervals.get("last")),
            "–" if s.last_vs_full is None else interval_points(s.last_vs_full),
            with_interval(s.first - s.last, s.intervals.get("drift")),
            with_interval(s.mean("lost_fraction"), s.intervals.get("lost")),
            "not measured" if r.speedup is None else f"{r.speedup:.2f}×",
            bench_ratio(r, full, "end_to_end_s"),
            bench_ratio(r, full, "last_four_s"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def kv_cell(kv: VideoKV, frame_len: int) -> str:
    return f"{kv.peak} / {kv.last} ({kv.peak / frame_len:.2f} / {kv.last / frame_len:.2f})"


def bench_ratio(row: Row, full: Row | None, field: str) -> str:
    """The full cache's ``field`` seconds over the row's, both from speed.jsonl."""
    if row.bench is None or full is None or full.bench is None:
        return "not measured"
    return f"{full.bench[field] / row.bench[field]:.2f}× ({row.bench['runs']})"


SHORT = (("sink-window", "sink"), ("packcache", "pc"), ("geometric", "geo"), ("dedupe", "dd"),
         ("min_keep=", "b="), ("decay=", "ρ="), ("floor=", "φ="), ("sinks=", "S="))  # fmt: skip


CLUSTER = 0.04  # points within 4 % of each other's KV share a column of labels
LABEL_STEP = 0.45  # accuracy points between labels of one column


def short_label(label: str) -> str:
    for long, short in SHORT:
        label = label.replace(long, short)
    return label


def plot(rows: list[Row], baseline, out_dir: Path) -> Path:
    """Last-8 accuracy (95 % interval) against KV per video, peak and at the last frame."""
    from quality_report import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
    policies = sorted({r.summary.policy for r in rows})
    colours = {p: plt.get_cmap("tab10")(i) for i, p in enumerate(policies)}
    for ax, which in zip(axes, ("peak", "last"), strict=True):
        kv = [getattr(r.kv, which) for r in rows]
        accuracy = [100 * r.summary.last for r in rows]
        for i, (r, x, y) in enumerate(zip(rows, kv, accuracy, strict=True)):
            interval = r.summary.intervals["last"]
            error = [[y - 100 * interval.low], [100 * interval.high - y]]
            ax.errorbar(x, y, yerr=error, fmt="o", color=colours[r.summary.policy], capsize=3)
            near = [j for j in range(len(kv)) if abs(kv[j] / x - 1) < CLUSTER]
            rank = sorted(near, key=lambda j: (-accuracy[j], j)).index(i)
            top = max(accuracy[j] for j in near)  # a cluster's labels in a column, best first
            ax.annotate(
                short_label(r.summary.label),
                (x, y),
                xytext=(max(kv[j] for j in near) * (1 + CLUSTER), top + 0.6 - LABEL_STEP * rank),
                fontsize=6.5,
                arrowprops={"arrowstyle": "-", "color": "0.7", "linewidth": 0.5},
            )
        front = pareto_front(list(zip(kv, accuracy, strict=True)))
        ax.step([kv[i] for i in front], [accuracy[i] for i in front], where="post",
                color="black", linewidth=1, label="Pareto front (means)")  # fmt: skip
        ax.scatter([kv[i] for i in front], [accuracy[i] for i in front], s=140,
                   facecolors="none", edgecolors="black")  # fmt: skip
        if baseline is not None:
            ax.axhline(100 * baseline.last, color="grey", linestyle="--", label=baseline.label)
        for policy in policies:
            ax.plot([], [], "o", color=colours[policy], label=policy)
        title = "peak (admission)" if which == "peak" else "at the last frame (steady state)"
        ax.set(xlabel=f"KV per video, {title}: generated-frame tokens (prompt excluded)")
        ax.set_xscale("log")
    axes[0].set_ylabel("cell accuracy, last 8 frames (%), 95 % bootstrap CI over scenes")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("quality against memory, every policy setting")
    fig.tight_layout()
    path = out_dir / "pareto.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    import sys

    sys.path.insert(0, str(HERE))
    from quality import read_jsonl

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "quality-clip25")
    parser.add_argument("--mode", default="next-token")
    args = parser.parse_args(argv)
    records = read_jsonl(args.out / "quality.jsonl")
    frame_len = frame_tokens(next(r for r in records if r["mode"] == args.mode))
    speed_path = args.out / "speed.jsonl"
    speed = read_jsonl(speed_path) if speed_path.is_file() else []
    rows, baseline = rows_of(records, args.mode, frame_len, speed)
    text = table(rows, baseline, frame_len)
    (args.out / "pareto.md").write_text(text)
    print(text)
    print("written:", args.out / "pareto.md", plot(rows, baseline, args.out))


if __name__ == "__main__":
    main()
