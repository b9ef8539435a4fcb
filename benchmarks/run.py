"""PackCache vs stock vLLM: speed, memory and concurrency over a matrix of runs, in one sitting.

    .venv/bin/python benchmarks/run.py                       # the default matrix (next-token mode)
    .venv/bin/python benchmarks/run.py --frames 13 --requests 1 4 --windows 2 4 8

Every configuration runs in its own child process (one process tree; no engine state leaks from
one run into the next) on one model: by default a Lumos-architecture checkpoint built here, with
Lumos-1's frame layout and attention/MLP proportions scaled down so a 13-frame video takes
seconds on a CPU (``--model DIR`` takes a real checkpoint). Videos are float32 greedy, prompts
image-to-video (text + one conditioning frame).

Per run: end-to-end time, the last four frames' time, per-frame latency (p50/p95 over videos),
peak and final KV blocks per video, videos per minute, how many such videos the run's KV pool
holds at once at that peak, and the share of engine step time spent inside attention. Written
under ``--out`` (default benchmarks/results/): bench.jsonl (raw), bench.md (table with ratios vs
stock vLLM and each row's W, ρ, b_min and steady-state history), and per workload
bench_<mode>_<frames>f_<videos>v.png.

Modes: next-token (raster decoding, greedy) and frame-parallel (Lumos-1's AR-DF: MaskGIT steps
per frame with a CFG twin, seeded; stock vLLM has no such mode, so there the full cache is the
baseline). Steps per frame are scaled down for the CPU (``--steps-per-frame``, Lumos-1 uses 50).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
POLICIES = ("stock", "full", "sliding", "packcache")
MODES = ("next-token", "frame-parallel")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        choices=POLICIES,
        default=list(POLICIES),
        help="'stock' = vLLM with the plugin's policy off; the others are "
        "--kv-policy presets (default: all)",
    )
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="generation modes (both)"
    )
    parser.add_argument(
        "--steps-per-frame",
        type=int,
        default=8,
        help="frame-parallel: MaskGIT steps per frame (Lumos-1: 50; default 8 for the CPU)",
    )
    parser.add_argument(
        "--cfg-scale",
        type=float,
        default=15.0,
        help="frame-parallel: guidance scale; > 1 runs the CFG twin (default 15, Lumos-1's)",
    )
    parser.add_argument(
        "--frames",
        nargs="+",
        type=int,
        default=[13, 48],
        help="latent frames per video (default: 13 48)",
    )
    parser.add_argument(
        "--requests",
        nargs="+",
        type=int,
        default=[1, 4, 16],
        help="videos generated together (default: 1 4 16)",
    )
    parser.add_argument(
        "--windows",
        nargs="+",
        type=int,
        default=[4],
        help="packcache windows W to run (a sweep; default: 4, whose steady "
        "history is about three frames' worth)",
    )
    parser.add_argument(
        "--sliding-windows",
        nargs="+",
        type=int,
        default=[1],
        help="sliding-window sizes W to run (default: 1, the preset; 3 holds about as much "
        "history as packcache W=4)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a Lumos-format checkpoint dir (default: build the benchmark model)",
    )
    parser.add_argument("--rows", type=int, default=12, help="frame grid rows of the built model")
    parser.add_argument("--cols", type=int, default=16, help="frame grid cols of the built model")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the built model")
    parser.add_argument(
        "--kv-heads",
        type=int,
        default=2,
        help="KV heads of the built model (of 4 query heads; 4 = no GQA, a KV-heavier model "
        "whose attention reads twice the cache per token)",
    )
    parser.add_argument(
        "--kv-cache-gib",
        type=float,
        default=1.0,
        help="KV pool size per engine (GiB; the same for every run)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="output directory")
    parser.add_argument(
        "--quality",
        type=Path,
        default=None,
        help="quality.jsonl of benchmarks/quality.py on the same --model: adds each row's "
        "quality (cell accuracy of the last 8 frames, object position error) to the table",
    )
    parser.add_argument("--one-run", help=argparse.SUPPRESS)  # internal: a child's config
    return parser.parse_args(argv)  # fmt: skip


def build_model(out: Path, args) -> Path:
    """Lumos-1's layout and proportions, scaled down: GQA 2:1 (``--kv-heads``), head_dim 64,
    MLP 8/3·hidden, ``--layers`` layers."""
    from packcache_vllm.model.factory import build_tiny_lumos

    return build_tiny_lumos(
        out,
        hidden_size=256,
        num_attention_heads=4,
        num_key_value_heads=args.kv_heads,
        num_hidden_layers=args.layers,
        intermediate_size=688,
        video_rows=args.rows,
        video_cols=args.cols,
        dtype=__import__("torch").float32,
    )


def prompts_for(model_dir: Path, count: int) -> tuple[list[list[int]], int]:
    from types import SimpleNamespace

    from packcache_vllm.core.layout import tokens_per_frame
    from packcache_vllm.model.config_hook import frame_grid, visual_codebook_size
    from packcache_vllm.model.factory import make_video_prompt

    config = SimpleNamespace(**json.loads((model_dir / "config.json").read_text()))
    rows, cols = frame_grid(config)
    rng = random.Random(0)
    texts = [[4 + b for b in f"clip {i}".encode()] for i in range(count)]
    codebook = visual_codebook_size(config)  # a trained model's is small
    prompts = [
        make_video_prompt(
            rows, cols, text, with_condition_frame=True, rng=rng, codebook_size=codebook
        )
        for text in texts
    ]
    return prompts, tokens_per_frame(rows, cols)


def configs(args, model_dir: Path) -> list[dict]:
    runs = []
    for mode in args.modes:
        for frames in args.frames:
            for requests in args.requests:
                for policy in args.policies:
                    if policy == "stock" and mode != "next-token":
                        continue  # stock vLLM has no frame-parallel mode
                    for window in windows_of(policy, args):
                        runs.append({
                            "model_dir": str(model_dir), "policy": policy, "frames": frames,
                            "requests": requests, "window": window, "mode": mode,
                            "steps_per_frame": args.steps_per_frame, "cfg_scale": args.cfg_scale,
                            "kv_cache_bytes": int(args.kv_cache_gib * (1 << 30)),
                        })  # fmt: skip
    return runs


def windows_of(policy: str, args) -> list[int | None]:
    """The W values a policy runs at; None = the preset's own (full: unbounded)."""
    if policy == "packcache":
        return args.windows
    if policy == "sliding":
        return [None if w == 1 else w for w in args.sliding_windows]
    return [None]


def run_child(config: dict) -> dict:
    """One configuration in a fresh Python process; its last stdout line is the result."""
    done = subprocess.run(
        [sys.executable, __file__, "--one-run", json.dumps(config)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"run {config} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_run(config_json: str) -> None:
    from bench_engine import RunConfig, run

    config = RunConfig(**json.loads(config_json))
    prompts, per_frame = prompts_for(Path(config.model_dir), config.requests)
    print(json.dumps(run(config, prompts, per_frame).to_dict()))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one_run:
        one_run(args.one_run)
        return
    from bench_report import markdown_table, plot, row_of
    from tqdm import tqdm

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_model(Path(tmp) / "model", args)
        results = [run_child(c) for c in tqdm(configs(args, model_dir), desc="runs", unit="run")]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "bench.jsonl", "w") as jsonl:
        for result in results:
            jsonl.write(json.dumps(result) + "\n")
    rows = [row_of(r) for r in results]
    table = markdown_table(rows, quality_summaries(args.quality))
    (args.out / "bench.md").write_text(header(args) + table)
    plots = plot(rows, results, args.out)
    print(table)
    print("written:", args.out / "bench.jsonl", args.out / "bench.md", *plots)


def quality_summaries(path: Path | None) -> list | None:
    if path is None:
        return None
    from quality import DRIFT_FRAMES, read_jsonl
    from quality_report import summarise

    return summarise(read_jsonl(path), DRIFT_FRAMES, [])


def header(args) -> str:
    import platform
    from datetime import date

    command = "benchmarks/run.py " + " ".join(sys.argv[1:])
    model = (
        f"model {args.model}"
        if args.model
        else f"built model: hidden 256, {args.layers} layers, 4 heads / {args.kv_heads} KV heads, "
        f"{args.rows} x {args.cols} grid"
    )
    return (
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; {date.today()}; "
        f"`{command.strip()}`; {model}; float32; next-token greedy; "
        f"frame-parallel {args.steps_per_frame} steps/frame, CFG {args.cfg_scale} "
        "(blocks per video include its CFG twin); KV pool "
        f"{args.kv_cache_gib} GiB per engine; 'videos in the pool' = pool blocks // peak blocks "
        "per video; 'vs' = the mode's baseline (stock vLLM; the full cache in frame-parallel).\n\n"
    )


if __name__ == "__main__":
    main()
