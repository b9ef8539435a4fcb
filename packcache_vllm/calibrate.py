"""Calibrate PackCache from a checkpoint: where the newest frame's attention goes; W, ρ, b_min.

    python -m packcache_vllm.calibrate --model checkpoints/lumos-motion-8x12-clip25 \\
        --prompts 8 --frames 24 --target-kv-frames 2 3.25 4 --out benchmarks/results/calibration

For each of ``--prompts`` held-out scenes on the checkpoint's grid (``video/heldout.py``: caption
+ the true first frame), the dense reference (``reference/``, no eviction) runs the prompt and
``--frames`` frames, either the scene's true frames (``--source truth``, teacher-forced) or the
model's own greedy continuation (``--source generated``), and records the attention
probabilities of every query of the *last* frame, per layer and head, summed over key groups: the
text anchors, the conditioning frame(s), and each generated frame by temporal distance d (d = 0:
the last frame's own earlier tokens, d = 1: the newest complete frame, ...). Means over queries
and prompts; per query the groups sum to 1.

Recommendation, for a memory target X (frames' worth of generated history kept after the fill
phase, anchors and the frame in progress not counted: ``PackCacheConfig.steady_state_frames``).
Let h(k) be the mean attention mass on the history frame k frames before the newest complete one
(k = 0 is d = 1):

* W: the fewest frames holding ``--mass-quantile`` (0.9) of the history mass, at least ⌈X⌉
  (with more memory than that, keeping X frames whole covers more mass);
* ρ: the measured per-frame decay, exp of the least-squares slope of log h(k) over k < W;
  (``--max-window`` caps it: until W frames exist the fill phase keeps them all whole, so W + 1
  frames is the request's peak, whatever the steady state);
* b_min: the floor that makes the budget exactly X (bisection; the share is monotone in it).
  If even b_min = 0 keeps more than X, ρ is lowered until b_min = 0 fits.

It also reports the history mass each setting keeps under uniform thinning (a frame keeping a
share s of its tokens keeps about s of its mass), next to a sliding window of ⌊X⌋ frames.

Writes ``calibration.json`` (everything, per layer and head), ``attention_by_distance.csv`` and
``calibration.png``. ``--device cuda`` runs the reference on a GPU (real sizes; ``--chunk``
bounds the probabilities held at once: heads x chunk x cached tokens floats).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.layout import FrameLayout
from packcache_vllm.reference import KVCache, ReferenceVideoModel
from packcache_vllm.video.heldout import model_heldout_clips

TEXT, CONDITION = 0, 1  # key groups; generated frame at distance d is group 2 + d
DISTANCE0 = 2
MIN_DECAY = 0.01


# --- measurement ---------------------------------------------------------------------------------


@dataclass
class MassSums:
    """Attention probability summed over queries, per layer, head and key group: sums [L, H, G];
    queries: how many queries were summed (per layer)."""

    sums: torch.Tensor
    queries: int = 0

    def mean(self) -> torch.Tensor:
        """[L, H, G] mean mass per query."""
        return self.sums / self.queries


def key_groups(indices: torch.Tensor, layout: FrameLayout, last_frame: int) -> torch.Tensor:
    """indices: [M] logical key indices -> [M] group ids: TEXT, CONDITION, or DISTANCE0 + d for
    the generated frame at temporal distance d from generated frame ``last_frame``."""
    generated = (indices - layout.anchor_len).div(layout.tokens_per_frame, rounding_mode="floor")
    groups = DISTANCE0 + last_frame - generated
    groups = torch.where(indices < layout.anchor_len, CONDITION, groups)
    return torch.where(indices < layout.frame_start, TEXT, groups)


def measure_clip(
    model: ReferenceVideoModel, ids: list[int], layout: FrameLayout, chunk: int, sums: MassSums
) -> None:
    """Adds to ``sums`` the attention of every query of the last generated frame of ``ids``
    (prompt + whole generated frames): the prefix runs first, then that frame in chunks."""
    per_frame = layout.tokens_per_frame
    last_frame = (len(ids) - layout.anchor_len) // per_frame - 1
    if last_frame < 0 or (len(ids) - layout.anchor_len) % per_frame:
        raise ValueError(f"ids must be the prompt + whole frames ({per_frame} tokens each)")
    start = layout.anchor_len + last_frame * per_frame
    cache = KVCache.empty(model.config, model.dtype)
    token_ids = model.check_ids(ids)
    index = torch.arange(len(ids), dtype=torch.int64)
    model.run_layers(token_ids[:start], index[:start], cache, layout, 0)
    groups = key_groups(index, layout, last_frame)

    def probe(layer: int, probs: torch.Tensor) -> None:  # probs [H, n, M]
        by_key = probs.sum(dim=1)  # [H, M]
        sums.sums[layer].index_add_(1, groups[: by_key.shape[1]], by_key.to(sums.sums.dtype))

    model.attention_probe = probe
    try:
        for begin in range(start, len(ids), chunk):
            end = min(begin + chunk, len(ids))
            model.run_layers(token_ids[begin:end], index[begin:end], cache, layout, 0)
            sums.queries += end - begin
    finally:
        model.attention_probe = None


def clip_ids(model: ReferenceVideoModel, clip, layout: FrameLayout, source: str) -> list[int]:
    """The prompt and the frames to measure: the scene's truth or the model's greedy own."""
    if source == "truth":
        return list(clip.prompt) + list(clip.continuation)
    generated = model.generate(clip.prompt, layout, len(clip.continuation)).token_ids
    return list(clip.prompt) + list(generated)


def measure(
    model: ReferenceVideoModel, clips: list, source: str = "truth", chunk: int = 512
) -> MassSums:
    """Mean-ready sums over every clip (all clips of one length)."""
    groups = DISTANCE0 + len(clips[0].continuation) // clips[0].layout.tokens_per_frame
    config = model.config
    sums = MassSums(
        torch.zeros(
            config.num_hidden_layers, config.num_attention_heads, groups, dtype=torch.float64
        )
    )
    for clip in clips:
        layout = model.layout_for(clip.prompt)
        measure_clip(model, clip_ids(model, clip, layout, source), layout, chunk, sums)
    return sums


# --- recommendation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    target_frames: float
    window: int
    decay: float
    min_keep: float
    steady_state_frames: float
    history_mass_kept: float  # share of the history mass kept under uniform thinning
    sliding_window: int  # floor(X) frames whole, for comparison
    sliding_history_mass_kept: float
    rule: str


def mass_quantile_window(history: list[float], quantile: float) -> int:
    """Fewest nearest frames whose mass reaches ``quantile`` of the total history mass."""
    total, running = sum(history), 0.0
    for k, mass in enumerate(history):
        running += mass
        if running >= quantile * total - 1e-12:
            return k + 1
    return len(history)


def fitted_decay(history: list[float], window: int) -> float:
    """exp of the least-squares slope of log h(k), k < window (1.0 for one frame)."""
    points = [(k, math.log(h)) for k, h in enumerate(history[:window]) if h > 0]
    if len(points) < 2:
        return 1.0
    mean_k = sum(k for k, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    slope = sum((k - mean_k) * (y - mean_y) for k, y in points) / sum(
        (k - mean_k) ** 2 for k, _ in points
    )
    return min(1.0, max(MIN_DECAY, math.exp(slope)))


def _round_down(value: float) -> float:
    """To 4 decimals, downwards (the budget is non-decreasing in ρ and b_min: stays <= X)."""
    return math.floor(value * 1e4) / 1e4


def _budget(window: int, decay: float, min_keep: float) -> float:
    return PackCacheConfig(window, decay, min_keep).steady_state_frames()


def _bisect(f, low: float, high: float, target: float) -> float:
    """The largest x in [low, high] with f(x) <= target, f non-decreasing."""
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if f(mid) <= target else (low, mid)
    return low


def history_mass_kept(config: PackCacheConfig, history: list[float]) -> float:
    """Share of the history mass a config keeps when thinning keeps a share s of a frame's mass."""
    kept = sum(config.frame_fraction(k) * h for k, h in enumerate(history[: config.window]))
    return kept / sum(history)


def recommend(
    history: list[float], target: float, quantile: float = 0.9, max_window: int | None = None
) -> Recommendation:
    """W, ρ, b_min for a budget of ``target`` frames' worth of history (module docstring);
    ``max_window`` caps W (the fill phase holds W whole frames: the peak)."""
    longest = len(history) if max_window is None else min(max_window, len(history))
    if not 1 <= target <= longest:
        raise ValueError(
            f"target must lie in [1, {longest}] frames (the history measured, at most "
            f"max_window), got {target}"
        )
    window = max(mass_quantile_window(history, quantile), math.ceil(target - 1e-9))
    window = min(window, longest)
    while window > 1 and _budget(window, MIN_DECAY, 0.0) > target:
        window -= 1  # X barely above one frame: only W = 1 fits
    decay = fitted_decay(history, window)
    rule = f"W: {quantile:.0%} of the history mass, at least ceil(X); rho: fitted decay"
    if _budget(window, decay, 0.0) > target:
        decay = _bisect(lambda r: _budget(window, r, 0.0), MIN_DECAY, decay, target)
        rule += f"; lowered to {decay:.3f} so that b_min = 0 fits X"
    decay = _round_down(decay)
    min_keep = _round_down(_bisect(lambda b: _budget(window, decay, b), 0.0, 1.0, target))
    config = PackCacheConfig(window, decay, min_keep)
    sliding = PackCacheConfig(int(target + 1e-9), 1.0, 1.0)
    return Recommendation(
        target_frames=target,
        window=window,
        decay=decay,
        min_keep=min_keep,
        steady_state_frames=config.steady_state_frames(),
        history_mass_kept=history_mass_kept(config, history),
        sliding_window=sliding.window,
        sliding_history_mass_kept=history_mass_kept(sliding, history),
        rule=rule,
    )


# --- report --------------------------------------------------------------------------------------


def profile(sums: MassSums) -> dict:
    """Means over layers and heads, and per layer (over heads)."""
    mean = sums.mean()  # [L, H, G]
    per_layer = mean.mean(dim=1)  # [L, G]
    overall = per_layer.mean(dim=0)  # [G]
    return {
        "text": overall[TEXT].item(),
        "condition": overall[CONDITION].item(),
        "anchors": (overall[TEXT] + overall[CONDITION]).item(),
        "by_distance": overall[DISTANCE0:].tolist(),
        "per_layer": [
            {
                "text": row[TEXT].item(),
                "condition": row[CONDITION].item(),
                "by_distance": row[DISTANCE0:].tolist(),
            }
            for row in per_layer
        ],
        "per_layer_head": mean.tolist(),
        "queries_per_layer": sums.queries,
    }


def write_csv(result: dict, path: Path) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["layer", "group", "distance", "mass"])
        layers = [("mean", result)] + list(enumerate(result["per_layer"]))
        for layer, row in layers:
            out.writerow([layer, "text", "", f"{row['text']:.6f}"])
            out.writerow([layer, "condition", "", f"{row['condition']:.6f}"])
            for d, mass in enumerate(row["by_distance"]):
                out.writerow([layer, "generated", d, f"{mass:.6f}"])


def plot(result: dict, recommendations: list[Recommendation], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve, cumulative) = plt.subplots(1, 2, figsize=(13, 4.8))
    for layer, row in enumerate(result["per_layer"]):
        curve.plot(row["by_distance"], alpha=0.5, marker=".", label=f"layer {layer}")
    curve.plot(result["by_distance"], color="black", linewidth=2, marker="o", label="mean")
    curve.axhline(result["text"], color="tab:red", linestyle="--", label="text anchors (all)")
    curve.axhline(
        result["condition"], color="tab:purple", linestyle=":", label="conditioning frame (all)"
    )
    curve.set(
        yscale="log",
        xlabel="temporal distance d (0 = the frame being generated)",
        ylabel="attention mass per frame (mean over queries, heads)",
        title=title,
    )
    curve.legend(fontsize=7)
    history = result["by_distance"][1:]
    total = sum(history)
    shares = [sum(history[: k + 1]) / total for k in range(len(history))]
    cumulative.plot(
        range(1, len(history) + 1),
        shares,
        color="black",
        marker="o",
        label="history mass in the nearest k frames",
    )
    for rec in recommendations:
        keep = [
            PackCacheConfig(rec.window, rec.decay, rec.min_keep).frame_fraction(k)
            for k in range(rec.window)
        ]
        cumulative.step(
            range(1, rec.window + 1),
            keep,
            where="mid",
            label=f"X={rec.target_frames:g}: W={rec.window} ρ={rec.decay:.2f} "
            f"b_min={rec.min_keep:.2f} keeps ({rec.history_mass_kept:.0%} of mass)",
        )
    cumulative.set(
        xlabel="history frames k (1 = the newest complete frame)",
        ylabel="cumulative mass share / recommended keep share",
        ylim=(0, 1.05),
        title=f"anchors take {result['anchors']:.0%} of the attention",
    )
    cumulative.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- command line --------------------------------------------------------------------------------


def load_model(model_dir: Path, device: str, dtype: torch.dtype) -> ReferenceVideoModel:
    """The reference model with its weights on ``device`` (also made torch's default device,
    so the reference's own tensors are made there)."""
    torch.set_default_device(device)
    model = ReferenceVideoModel.from_pretrained(model_dir, dtype)
    model.weights = _to_device(model.weights, device)
    return model


def _to_device(obj, device: str):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to_device(item, device) for item in obj)
    if obj is None:
        return None
    return replace(obj, **{f.name: _to_device(getattr(obj, f.name), device) for f in fields(obj)})


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m packcache_vllm.calibrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--prompts", type=int, default=8, help="held-out scenes (8)")
    parser.add_argument("--frames", type=int, default=24, help="generated frames per clip (24)")
    parser.add_argument(
        "--target-kv-frames",
        type=float,
        nargs="+",
        default=[2.0, 4.0],
        help="memory targets X, frames' worth of history (2 4)",
    )
    parser.add_argument("--mass-quantile", type=float, default=0.9)
    parser.add_argument(
        "--max-window",
        type=int,
        default=None,
        help="cap on W (the fill phase keeps W whole frames: the peak); default the history",
    )
    parser.add_argument("--source", choices=("truth", "generated"), default="truth")
    parser.add_argument("--chunk", type=int, default=512, help="queries per forward")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.frames < 2 or args.chunk < 1:
        parser.error("--prompts >= 1, --frames >= 2 and --chunk >= 1 are required")
    if not 0 < args.mass_quantile <= 1:
        parser.error(f"--mass-quantile must be in (0, 1], got {args.mass_quantile}")
    history = args.frames - 1
    bad = [x for x in args.target_kv_frames if not 1 <= x <= history]
    if bad:
        parser.error(f"--target-kv-frames must lie in [1, {history}] (--frames - 1), got {bad}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.device, getattr(torch, args.dtype))
    clips = model_heldout_clips(args.model, args.frames, args.prompts)
    result = profile(measure(model, clips, args.source, args.chunk))
    history = result["by_distance"][1:]
    recs = [
        recommend(history, x, args.mass_quantile, args.max_window) for x in args.target_kv_frames
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "max_window": args.max_window,
        "model": str(args.model),
        "prompts": args.prompts,
        "frames": args.frames,
        "source": args.source,
        "dtype": args.dtype,
        "mass_quantile": args.mass_quantile,
    }
    record = {**meta, **result, "recommendations": [asdict(r) for r in recs]}
    (args.out / "calibration.json").write_text(json.dumps(record, indent=1) + "\n")
    write_csv(result, args.out / "attention_by_distance.csv")
    title = (
        f"{args.model.name}: last of {args.frames} frames, {args.prompts} scenes ({args.source})"
    )
    plot(result, recs, args.out / "calibration.png", title)
    print(
        f"anchors {result['anchors']:.1%} (text {result['text']:.1%}, conditioning "
        f"{result['condition']:.1%}); by distance "
        + " ".join(f"{m:.3f}" for m in result["by_distance"])
    )
    for r in recs:
        print(
            f"X={r.target_frames:g}: W={r.window} rho={r.decay} b_min={r.min_keep} "
            f"({r.steady_state_frames:.2f} frames, keeps {r.history_mass_kept:.1%} of the "
            f"history mass; sliding W={r.sliding_window}: {r.sliding_history_mass_kept:.1%})"
        )
    print(
        "written:",
        *(
            args.out / n
            for n in ("calibration.json", "attention_by_distance.csv", "calibration.png")
        ),
    )


if __name__ == "__main__":
    main()
