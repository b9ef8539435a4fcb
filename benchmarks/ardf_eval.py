"""Per-frame AR-DF accuracy of checkpoints (``packcache_vllm/train/evaluate.py``, dense reference
model, held-out clips), one JSON line per measure as it goes: the free-running rollout
(``ardf_rollout_accuracy``: 8 clips x 5 frames, CFG 3 and CFG 1; baseline: the first frame
copied) and the teacher-forced masked cells (``masked_cell_accuracy``: 16 clips x 5 frames,
MaskGIT fractions and all masked; baseline: the previous frame copied).

    .venv/bin/python benchmarks/ardf_eval.py checkpoints/lumos-motion-8x12-ardf \
        [--condition-mask-ratio 0.7]

``--condition-mask-ratio``: how the prompt's conditioning frame is cached (default inference's,
0: whole; 0.7: masked like every commit).
"""

import argparse
import json
import time
from dataclasses import replace

import torch

from packcache_vllm.reference import ReferenceVideoModel
from packcache_vllm.train.data import ClipSpec
from packcache_vllm.train.evaluate import (
    ARDF_EVAL_PARAMS,
    ardf_rollout_accuracy,
    masked_cell_accuracy,
    mean_accuracy,
)

HELDOUT = ClipSpec()


def pct(t: torch.Tensor) -> list[float]:
    return [round(100 * float(x), 1) for x in t]


def report(path: str, measure: str, condition: float, result, start: float) -> None:
    """Print one measure's per-frame accuracies (model, baseline) and means, in %."""
    record = {
        "checkpoint": path,
        "measure": measure,
        "condition": condition,
        "model": pct(result.model),
        "baseline": pct(result.baseline),
        "mean": round(100 * float(result.model.mean()), 1),
        "baseline_mean": round(100 * float(result.baseline.mean()), 1),
        "s": round(time.perf_counter() - start),
    }
    print(json.dumps(record), flush=True)


def evaluate(path: str, condition: float, rollout_clips: int = 8, masked_clips: int = 16) -> None:
    model = ReferenceVideoModel.from_pretrained(path)
    for cfg in (3.0, 1.0):
        start = time.perf_counter()
        params = replace(ARDF_EVAL_PARAMS, cfg_scale=cfg, condition_mask_ratio=condition)
        clips = [HELDOUT.clip("heldout", i) for i in range(rollout_clips)]
        result = mean_accuracy([ardf_rollout_accuracy(model, c, 5, params) for c in clips])
        report(path, f"rollout cfg {cfg:g}", condition, result, start)
    for fraction in (None, 1.0):
        start = time.perf_counter()
        clips = [HELDOUT.clip("heldout", i) for i in range(masked_clips)]
        result = mean_accuracy(
            [
                masked_cell_accuracy(model, c, fraction, seed=i, condition_ratio=condition)
                for i, c in enumerate(clips)
            ]
        )
        report(path, f"masked cells {fraction}", condition, result, start)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument(
        "--condition-mask-ratio", type=float, default=ARDF_EVAL_PARAMS.condition_mask_ratio
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    for path in args.checkpoints:
        evaluate(path, args.condition_mask_ratio)
