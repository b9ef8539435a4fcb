"""Benchmark rows from raw runs: the derived numbers, a markdown table with ratios vs stock vLLM,
and PNG plots (per-frame latency per policy; KV blocks held over time)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

LAST = 4  # "the last four frames" of the paper's table


@dataclass(frozen=True)
class Row:
    mode: str
    policy: str
    window: int | None
    decay: float | None
    min_keep: float | None
    history_frames: float | None  # steady-state history in frame-equivalents (None: unbounded)
    frames: int
    requests: int
    end_to_end_s: float
    last_four_s: float  # mean over requests: completion of frame N-4 -> frame N
    frame_p50_s: list[float]  # per frame, over requests
    frame_p95_s: list[float]
    flatness: float | None  # mean(last four frames) / mean(frames right after the window fills)
    videos_per_min: float
    peak_blocks: int
    final_blocks: int
    fit_in_pool: int  # videos the run's KV pool holds at once at this peak, without preemption
    attention_share: float
    policy_share: float  # planning compactions + moving KV, share of step time
    preemptions: int


def row_of(result: dict) -> Row:
    from packcache_vllm.core.budget import PackCacheConfig

    config = result["config"]
    policy, window = config["policy"], config["window"]
    settings = None
    if policy != "stock":
        knobs = {} if window is None else {"window": window}
        settings = PackCacheConfig.preset(policy, **knobs)
    durations = [frame_durations(times) for times in result["frame_done_s"]]
    frames = min(len(d) for d in durations)
    p50 = [statistics.median(d[f] for d in durations) for f in range(frames)]
    p95 = [percentile([d[f] for d in durations], 0.95) for f in range(frames)]
    last_four = statistics.mean(sum(d[frames - LAST : frames]) for d in durations)
    return Row(
        mode=config["mode"],
        policy=policy,
        window=settings.window if settings else None,
        decay=settings.decay if settings else None,
        min_keep=settings.min_keep if settings else None,
        history_frames=settings.steady_state_frames() if settings else None,
        frames=config["frames"],
        requests=config["requests"],
        end_to_end_s=result["end_to_end_s"],
        last_four_s=last_four,
        frame_p50_s=p50,
        frame_p95_s=p95,
        flatness=flatness(p50, settings.window if settings else None),
        videos_per_min=60 * config["requests"] / result["end_to_end_s"],
        peak_blocks=result["peak_blocks"],
        final_blocks=result["final_blocks"],
        fit_in_pool=result["pool_blocks"] // result["peak_blocks"],
        attention_share=result["attention_s"] / result["step_s"],
        policy_share=result.get("policy_s", 0.0) / result["step_s"],
        preemptions=result["preemptions"],
    )


def frame_durations(done_times: list[float]) -> list[float]:
    """Completion times of frames 1..N -> each frame's latency (frame 1 includes the prefill)."""
    return [b - a for a, b in zip([0.0, *done_times[:-1]], done_times, strict=True)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def flatness(p50: list[float], window: int | None) -> float | None:
    """Last four frames vs the four frames right after the window fills (1.0 = flat)."""
    if window is None or len(p50) < window + 2 * LAST:
        return None
    after_fill = p50[window + 1 : window + 1 + LAST]
    return statistics.mean(p50[-LAST:]) / statistics.mean(after_fill)


# --- table -----------------------------------------------------------------------------------


def markdown_table(rows: list[Row], quality: list | None = None) -> str:
    """quality: ``quality_report.Summary`` list of the same model (adds two columns)."""
    head = (
        "| mode | policy | W | ρ | b_min | history (frames) | frames | videos | end-to-end s | vs "
        "| last 4 frames s | vs | last-4 / after-fill | last frame p50 / p95 s | videos/min "
        "| peak / final blocks per video | videos in the pool | attention share "
        "| policy work share | preempted |"
        + (" quality: cell acc, last 8 frames | object position error |" if quality else "")
        + "\n"
        + "|---" * (22 if quality else 20)
        + "|\n"
    )
    lines = []
    for row in rows:
        stock = baseline_for(rows, row)
        extra = [] if quality is None else quality_cells(row, quality)
        lines.append(
            "| "
            + " | ".join(
                [
                    row.mode,
                    row.policy,
                    fmt(row.window),
                    fmt(row.decay),
                    fmt(row.min_keep),
                    fmt(row.history_frames),
                    str(row.frames),
                    str(row.requests),
                    f"{row.end_to_end_s:.1f}",
                    ratio(stock.end_to_end_s if stock else None, row.end_to_end_s),
                    f"{row.last_four_s:.2f}",
                    ratio(stock.last_four_s if stock else None, row.last_four_s),
                    fmt(row.flatness),
                    f"{row.frame_p50_s[-1]:.2f} / {row.frame_p95_s[-1]:.2f}",
                    f"{row.videos_per_min:.1f}",
                    f"{row.peak_blocks} / {row.final_blocks}",
                    str(row.fit_in_pool),
                    f"{100 * row.attention_share:.0f} %",
                    f"{100 * row.policy_share:.1f} %",
                    str(row.preemptions),
                    *extra,
                ]
            )
            + " |"
        )
    return head + "\n".join(lines) + "\n"


def quality_cells(row: Row, quality: list) -> list[str]:
    from quality_report import matching_quality

    match = matching_quality(quality, row.mode, row.policy, row.window)
    if match is None:
        return ["–", "–"]
    return [f"{100 * match.last:.1f} %", f"{match.mean('position_error'):.2f}"]


def baseline_for(rows: list[Row], row: Row) -> Row | None:
    """Stock vLLM for next-token rows; the full cache for frame-parallel (no stock mode)."""
    policy = "stock" if row.mode == "next-token" else "full"
    workload = (row.mode, row.frames, row.requests)
    return next(
        (r for r in rows if r.policy == policy and (r.mode, r.frames, r.requests) == workload),
        None,
    )


def fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def ratio(stock: float | None, ours: float) -> str:
    return "–" if stock is None else f"{stock / ours:.2f}×"


# --- plots -----------------------------------------------------------------------------------


def plot(rows: list[Row], results: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups = sorted({(r.mode, r.frames, r.requests) for r in rows})
    for mode, frames, requests in groups:
        fig, (latency, blocks) = plt.subplots(1, 2, figsize=(12, 4.5))
        for row, result in zip(rows, results, strict=True):
            if (row.mode, row.frames, row.requests) != (mode, frames, requests):
                continue
            label = row.policy if row.window is None else f"{row.policy} W={row.window}"
            latency.plot(
                range(1, len(row.frame_p50_s) + 1), row.frame_p50_s, marker=".", label=label
            )
            t, held = zip(*result["blocks_over_time"], strict=True)
            blocks.plot(t, held, label=label)
        latency.set(xlabel="latent frame", ylabel="latency p50 over videos (s)",
                    title=f"{mode}: {requests} videos × {frames} frames")  # fmt: skip
        blocks.set(xlabel="time (s)", ylabel="KV blocks held (all videos)", title="KV cache")
        latency.legend()
        blocks.legend()
        path = out_dir / f"bench_{mode}_{frames}f_{requests}v.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
