"""RSS of stock vLLM's oneDNN GEMM alone (no engine, no plugin) called with many distinct M.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/rss_onednn_gemm.py --label gemm-default
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 ... --label gemm-onednn-cache-0

Every linear layer of a float32 model on vLLM's CPU backend calls ``vllm._custom_ops.onednn_mm``
(``dispatch_cpu_unquantized_gemm``), which builds one oneDNN matmul primitive per distinct row
count M. This makes five handlers of the tiny Lumos-1's weight shapes (qkv, o, gate_up, down,
lm_head: N x K below) and calls each with M = 1..``--distinct-m`` (shuffled, seeded), ``--passes``
times over. Every ``--every`` calls it appends {calls, distinct (M, N) so far, RssAnon MiB} to
``--out``/``<label>.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
WEIGHT_SHAPES = ((384, 128), (128, 128), (512, 128), (128, 256), (6000, 128))  # N x K


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--label", required=True)
    parser.add_argument("--distinct-m", type=int, default=600)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "rss")
    args = parser.parse_args()
    import torch
    from rss_growth import rss_parts
    from vllm import _custom_ops as ops

    torch.manual_seed(0)
    weights = [torch.randn(n, k) for n, k in WEIGHT_SHAPES]
    handlers = [ops.create_onednn_mm(w.t(), 32) for w in weights]  # as vLLM's dispatch does
    rows = list(range(1, args.distinct_m + 1))
    random.Random(0).shuffle(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{args.label}.jsonl"
    out.unlink(missing_ok=True)
    capacity = os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    for calls, m in enumerate(rows * args.passes, start=1):
        for handler, weight in zip(handlers, weights, strict=True):
            ops.onednn_mm(handler, torch.randn(m, weight.shape[1]), None)
        if calls % args.every == 0:
            line = {
                "label": args.label,
                "calls": calls,
                "distinct_shapes": min(calls, args.distinct_m) * len(WEIGHT_SHAPES),
                "rss_anon_mib": rss_parts()["rss_anon_mib"],
                "onednn_primitive_cache_capacity": capacity,
            }
            with out.open("a") as handle:
                handle.write(json.dumps(line) + "\n")
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
