"""Engine RSS over many rounds of requests, in-process: is the worker's memory growth bounded?

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/rss_growth.py \\
        --run packcache:frame-parallel --rounds 60 --label fp-default
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 ... --label fp-onednn0     # oneDNN's primitive cache off
    ... --shapes fixed --label fp-fixed                          # the same requests every round
    ... --trim-every 1 --label fp-trim                           # malloc_trim(0) after each round
    ... --run none:next-token --label stock                      # stock vLLM, the same requests

One ``LLM`` in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, so the engine core and the worker
are this process) with the tiny random-weight Lumos-1 of the soak (``artifacts/soak-tiny-lumos``,
float32, eager, a 64 MiB KV pool) and the soak's server policy (PackCache W=3, min_keep 1/4).
Each round generates ``--per-round`` requests drawn (seeded) from the soak's request specs
(``soak.good_specs``: random text- and image-to-video prompts, 1..``--max-frames`` frames,
per-request PackCache and AR-DF overrides, CFG twins); ``--shapes fixed`` sends one spec
``--per-round`` times every round instead, so every round runs the same batches.

After each round it appends one line to ``--out``/``<label>.jsonl``: the process RSS (psutil;
and its anonymous part, which the page cache cannot shrink when the machine is short of memory),
glibc's heap counters (``mallinfo2``: in use, free inside the heap, mmapped), how many distinct
(M, N) shapes vLLM's oneDNN GEMM (``onednn_mm``, every linear layer on this CPU) has been called
with so far, and the memory-related environment (ONEDNN_PRIMITIVE_CACHE_CAPACITY, MALLOC_*).
``--trim-every K`` calls glibc's ``malloc_trim(0)`` after every K-th round (``rss_after_trim``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (ROOT, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

ENV_RECORDED = (
    "ONEDNN_PRIMITIVE_CACHE_CAPACITY",
    "MALLOC_ARENA_MAX",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "OMP_NUM_THREADS",
    "LD_PRELOAD",
)
KV_CACHE_BYTES = 64 << 20
MAX_MODEL_LEN = 512


class Mallinfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc >= 2.33), every field a size_t."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


LIBC = ctypes.CDLL("libc.so.6")
LIBC.mallinfo2.restype = Mallinfo2
MIB = 1 << 20


def rss_parts() -> dict[str, float]:
    """MiB: RssAnon (this process's own memory; the page cache cannot take it back) and RssFile
    (mapped files: shared libraries, weights; shrinks when the machine is short of memory)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {
        f"{name.lower().replace('rss', 'rss_')}_mib": int(fields[name].split()[0]) / 1024
        for name in ("RssAnon", "RssFile")
    }


def heap_counters() -> dict[str, float]:
    """MiB: in_use (uordblks + mmapped), free_in_heap (fordblks), mmapped (hblkhd), all of the
    main arena and the others together."""
    info = LIBC.mallinfo2()
    return {
        "heap_in_use_mib": (info.uordblks + info.hblkhd) / MIB,
        "heap_free_mib": info.fordblks / MIB,
        "heap_mmapped_mib": info.hblkhd / MIB,
    }


class GemmShapes:
    """Counts the distinct (M, N) shapes ``vllm._custom_ops.onednn_mm`` is called with (every
    linear layer reads ``ops.onednn_mm`` at call time, so wrapping the module attribute sees
    them all)."""

    def __init__(self) -> None:
        from vllm import _custom_ops as ops

        self.seen: set[tuple[int, int]] = set()
        original = ops.onednn_mm

        def counting(handler, x, bias):
            self.seen.add((x.numel() // handler.k, handler.n))
            return original(handler, x, bias)

        ops.onednn_mm = counting


def make_engine(model_dir: Path, run: str):
    from soak import SERVER_MIN_KEEP, SERVER_WINDOW
    from vllm import LLM

    from packcache_vllm.cli import engine_overrides

    policy, mode = run.split(":")
    knobs = {} if policy == "none" else {"window": SERVER_WINDOW, "min_keep": SERVER_MIN_KEEP}
    overrides = {"enable_prefix_caching": False, **engine_overrides(policy, mode=mode, **knobs)}
    return LLM(
        str(model_dir),
        dtype="float32",
        enforce_eager=True,
        block_size=32,
        kv_cache_memory_bytes=KV_CACHE_BYTES,
        max_model_len=MAX_MODEL_LEN,
        seed=0,
        **overrides,
    )


def sampling_params(spec, run: str, per_frame: int):
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=spec.max_tokens(per_frame),
        temperature=0.0,
        ignore_eos=True,
        detokenize=False,
        extra_args=None if run.startswith("none:") else dict(spec.xargs),
    )


def round_requests(specs, args, rng: random.Random) -> list:
    if args.shapes == "fixed":
        return [specs[0]] * args.per_round
    return [rng.choice(specs) for _ in range(args.per_round)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import psutil
    from soak import ensure_model, good_specs

    from packcache_vllm.core.layout import tokens_per_frame

    model_dir = ensure_model(args)
    config = json.loads((model_dir / "config.json").read_text())
    rows, cols = config["video_rows"], config["video_cols"]
    per_frame = tokens_per_frame(rows, cols)
    mode = args.run.split(":")[1]
    specs = good_specs(mode, rows, cols, args.distinct, args.max_frames, args.seed)
    engine = make_engine(model_dir, args.run)
    shapes = GemmShapes()
    process = psutil.Process()
    rng = random.Random(args.seed + 1)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{args.label}.jsonl"
    out.unlink(missing_ok=True)
    env = {name: os.environ.get(name) for name in ENV_RECORDED}
    started = time.monotonic()
    requests = 0
    for index in range(args.rounds):
        batch = round_requests(specs, args, rng)
        prompts = [{"prompt_token_ids": list(spec.prompt)} for spec in batch]
        params = [sampling_params(spec, args.run, per_frame) for spec in batch]
        engine.generate(prompts, params, use_tqdm=False)
        requests += len(batch)
        line = {
            "label": args.label,
            "run": args.run,
            "shapes": args.shapes,
            "round": index,
            "requests": requests,
            "elapsed_s": round(time.monotonic() - started, 1),
            "rss_mib": process.memory_info().rss / MIB,
            **rss_parts(),
            **heap_counters(),
            "gemm_shapes": len(shapes.seen),
            "env": env,
        }
        if args.trim_every and (index + 1) % args.trim_every == 0:
            LIBC.malloc_trim(0)
            line["rss_after_trim_mib"] = process.memory_info().rss / MIB
            line["rss_anon_after_trim_mib"] = rss_parts()["rss_anon_mib"]
        with out.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        print(json.dumps({k: v for k, v in line.items() if k != "env"}), flush=True)
    engine.llm_engine.engine_core.shutdown()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from soak import RUNS

    parser.add_argument("--label", required=True, help="names the JSONL: <out>/<label>.jsonl")
    parser.add_argument("--run", choices=RUNS, default="packcache:frame-parallel")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--per-round", type=int, default=16)
    parser.add_argument("--max-frames", type=int, default=5)
    parser.add_argument("--distinct", type=int, default=48, help="distinct request specs")
    parser.add_argument("--shapes", choices=("varied", "fixed"), default="varied")
    parser.add_argument("--trim-every", type=int, default=0, help="malloc_trim(0) every K rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=None, help="default: the soak's tiny model")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "rss")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
