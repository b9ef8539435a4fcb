"""Per-frame latency and KV blocks: stock vLLM vs the PackCache engine, in one run.

    .venv/bin/python benchmarks/frame_latency.py [--frames 12] [--requests 4] [--window 4]

Builds a small Lumos-architecture checkpoint whose attention is KV-heavy for its size (a 12 x 16
frame grid, 208 tokens per frame), then, for each engine (stock vLLM with the plugin's model,
and ``--kv-policy packcache``), generates ``--requests`` videos of ``--frames`` latent frames
together, float32 greedy, stepping the engine by hand: the wall time of every step is charged to
the frame each request is generating. Prints a table of per-frame latency (mean over requests)
and the peak KV blocks per request, and writes it as JSON next to this file under results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

RESULTS = Path(__file__).parent / "results"
BLOCK_SIZE = 32


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=12, help="latent frames per video")
    parser.add_argument("--requests", type=int, default=4, help="videos generated together")
    parser.add_argument("--window", type=int, default=4, help="packcache window W (frames)")
    parser.add_argument("--rows", type=int, default=12, help="frame grid rows")
    parser.add_argument("--cols", type=int, default=16, help="frame grid columns")
    return parser.parse_args()


def build_model(out: Path, rows: int, cols: int) -> Path:
    from packcache_vllm.model.factory import build_tiny_lumos

    return build_tiny_lumos(
        out,
        hidden_size=256,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_hidden_layers=4,
        intermediate_size=512,
        video_rows=rows,
        video_cols=cols,
    )


def prompts_for(rows: int, cols: int, count: int) -> list[list[int]]:
    import random

    from packcache_vllm.model.factory import make_video_prompt

    rng = random.Random(0)
    return [
        make_video_prompt(
            rows, cols, [4 + b for b in f"clip {i}".encode()], with_condition_frame=True, rng=rng
        )
        for i in range(count)
    ]


def run_engine(model_dir: Path, prompts, frames: int, per_frame: int, overrides: dict) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(
        str(model_dir),
        dtype="float32",
        enforce_eager=True,
        block_size=BLOCK_SIZE,
        kv_cache_memory_bytes=512 << 20,
        max_model_len=16384,
        seed=0,
        **{"enable_prefix_caching": False, **overrides},
    )
    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    manager = scheduler.kv_cache_manager.coordinator.single_type_managers[0]
    params = SamplingParams(
        temperature=0.0, max_tokens=frames * per_frame, ignore_eos=True, detokenize=False
    )
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", {"prompt_token_ids": prompt}, params)
    frame_time = [0.0] * frames
    peak_blocks: dict[str, int] = {}
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        generating = {
            r.request_id: (r.num_computed_tokens - r.num_prompt_tokens) // per_frame
            for r in scheduler.running
            if r.num_computed_tokens >= r.num_prompt_tokens
        }
        t0 = time.perf_counter()
        engine.step()
        step = time.perf_counter() - t0
        for frame in generating.values():
            if frame < frames:
                frame_time[frame] += step / max(1, len(prompts))
        for rid, blocks in manager.req_to_blocks.items():
            peak_blocks[rid] = max(peak_blocks.get(rid, 0), len(blocks))
    total = time.perf_counter() - start
    engine.engine_core.shutdown()
    return {
        "frame_seconds": frame_time,
        "total_seconds": total,
        "peak_blocks_per_request": max(peak_blocks.values()),
    }


def main() -> None:
    from packcache_vllm.cli import engine_overrides

    args = parse_args()
    per_frame = args.rows * (args.cols + 1) + 4
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model", args.rows, args.cols)
        prompts = prompts_for(args.rows, args.cols, args.requests)
        runs = {
            "stock": run_engine(model_dir, prompts, args.frames, per_frame, {}),
            "packcache": run_engine(
                model_dir,
                prompts,
                args.frames,
                per_frame,
                engine_overrides("packcache", window=args.window),
            ),
        }
    print(
        f"{args.requests} requests x {args.frames} frames of {per_frame} tokens, "
        f"packcache W={args.window}; {platform.processor() or platform.machine()}"
    )
    print("frame | stock ms | packcache ms | ratio")
    for f in range(args.frames):
        s, p = runs["stock"]["frame_seconds"][f], runs["packcache"]["frame_seconds"][f]
        print(f"{f + 1:5d} | {1e3 * s:8.1f} | {1e3 * p:12.1f} | {s / p:5.2f}")
    for name, run in runs.items():
        print(
            f"{name}: total {run['total_seconds']:.2f} s, "
            f"peak blocks/request {run['peak_blocks_per_request']}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "frame_latency.json"
    out.write_text(
        json.dumps({"args": vars(args), "per_frame_tokens": per_frame, **runs}, indent=2)
    )
    print(f"written {out}")


if __name__ == "__main__":
    main()
