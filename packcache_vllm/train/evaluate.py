"""Per-frame cell accuracy of a trained model against the truth and a copy-the-last-frame baseline.

Two measures on held-out clips, both with the dense reference model (``ReferenceVideoModel``):

* teacher-forced (``next_frame_accuracy``): one causal forward over the true clip; each cell of
  frame t is predicted (greedy) from the true frames < t and the true cells before it in raster
  order. Baseline: frame t-1 copied.
* free-running (``rollout_accuracy``): the model generates the continuation greedily from the
  prompt alone (caption + first frame), optionally under a KV policy. Baseline: the first frame
  copied into every frame.

Two more for frame-parallel (AR-DF) generation, with ``reference_ardf`` (conditioning and commits
exactly as inference does them):

* teacher-forced masked cells (``masked_cell_accuracy``): each frame t >= 1 as a canvas with some
  of its cells ``<mask>`` is read (argmax over the visual vocabulary) after the prompt (its
  conditioning frame cached whole by default, as inference) and the true frames < t were
  committed (history-masked); only the masked cells count. Baseline: frame
  t-1's cell copied, at the same cells.
* free-running (``ardf_rollout_accuracy``): ``generate_ardf`` from the prompt alone (MaskGIT
  denoising with CFG, ``ARDF_EVAL_PARAMS``: deterministic argmax). Baseline: the first frame
  copied into every frame.

A cell counts as correct when the decoded cell equals the true palette index; a token that is not
a palette code counts as wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from packcache_vllm.core.maskgit import ARDFSamplingParams, history_mask, visual_offsets
from packcache_vllm.reference import KeepPolicy, NoEviction, ReferenceVideoModel
from packcache_vllm.reference_ardf import ARDFSession, FrameAttention, generate_ardf
from packcache_vllm.train.ardf import canvas_cell_mask, mask_cells, random_cells
from packcache_vllm.video.quality import decoded_accuracy
from packcache_vllm.video.tokens import SceneClip, decode_frames, frame_tokens

# Deterministic frame-parallel sampling for evaluation: argmax draws (temperature 0, so no
# re-masking noise either) over the whole visual vocabulary (top_k None keeps the MaskGIT
# confidence meaningful: under top_k 1 every drawn code has log p = 0), 8 steps, CFG 3.
ARDF_EVAL_PARAMS = ARDFSamplingParams(
    steps_per_frame=8, cfg_scale=3.0, top_k=None, temperature=0.0, seed=0
)


@dataclass(frozen=True)
class FrameAccuracy:
    """model, baseline: [T] fraction of correct cells per predicted frame (frame 1 first)."""

    model: torch.Tensor
    baseline: torch.Tensor


def cell_accuracy(predicted_tokens: list[int], truth: torch.Tensor) -> torch.Tensor:
    """predicted_tokens: whole frames of tokens; truth: [T, rows, cols]. Returns [T] accuracy."""
    _, rows, cols = truth.shape
    decoded = decode_frames(predicted_tokens, rows, cols, strict=False)
    return decoded_accuracy(decoded.cells, decoded.valid, truth)


def copy_accuracy(source: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """source, truth: [T, rows, cols] -> [T] fraction of equal cells."""
    return (source == truth).float().mean(dim=(1, 2))


def next_frame_accuracy(model: ReferenceVideoModel, clip: SceneClip) -> FrameAccuracy:
    """Teacher-forced greedy accuracy of frames 1.. of the clip."""
    logits = model.causal_logits(clip.token_ids, clip.layout)  # [N, V]
    greedy = logits.argmax(dim=-1)  # row i predicts token i + 1
    start, end = len(clip.prompt) - 1, len(clip.token_ids) - 1
    truth = clip.frames[1:]
    return FrameAccuracy(
        cell_accuracy(greedy[start:end].tolist(), truth), copy_accuracy(clip.frames[:-1], truth)
    )


def rollout_accuracy(
    model: ReferenceVideoModel, clip: SceneClip, policy: KeepPolicy | None = None
) -> FrameAccuracy:
    """Free-running greedy accuracy of frames 1.. generated from the prompt alone."""
    result = model.generate(clip.prompt, clip.layout, len(clip.continuation), policy)
    truth = clip.frames[1:]
    first = clip.frames[:1].expand_as(truth)
    return FrameAccuracy(cell_accuracy(list(result.token_ids), truth), copy_accuracy(first, truth))


def mean_accuracy(results: list[FrameAccuracy]) -> FrameAccuracy:
    """Per-frame means over clips of equal length."""
    return FrameAccuracy(
        torch.stack([r.model for r in results]).mean(0),
        torch.stack([r.baseline for r in results]).mean(0),
    )


def chosen_cells(num_cells: int, mask_fraction: float | None, gen: torch.Generator) -> torch.Tensor:
    """[num_cells] bool: ``round(mask_fraction * num_cells)`` cells (at least one) at random, or
    MaskGIT's random fraction (``train.ardf.canvas_cell_mask``) when mask_fraction is None."""
    if mask_fraction is None:
        return canvas_cell_mask(num_cells, gen)
    if not 0.0 < mask_fraction <= 1.0:
        raise ValueError(f"mask_fraction must lie in (0, 1], got {mask_fraction}")
    return random_cells(num_cells, max(1, round(mask_fraction * num_cells)), gen)


def masked_cell_accuracy(
    model: ReferenceVideoModel,
    clip: SceneClip,
    mask_fraction: float | None = 1.0,
    seed: int = 0,
    history_ratio: float = ARDF_EVAL_PARAMS.history_mask_ratio,
    condition_ratio: float = ARDF_EVAL_PARAMS.condition_mask_ratio,
) -> FrameAccuracy:
    """Teacher-forced AR-DF accuracy at the masked cells of frames 1.. (module docstring), one
    canvas per frame, conditioned twin only. mask_fraction: the fraction of cells masked (1: the
    first denoising step's all-``<mask>`` canvas; None: MaskGIT's random fraction, as training
    draws it); the cells are drawn from a generator seeded with ``seed``. history_ratio,
    condition_ratio: the commits' and the prompt's conditioning frame's history-mask ratios
    (inference's defaults: 0.7, and 0 = cached whole)."""
    num_frames, rows, cols = clip.frames.shape
    commit_mask = history_mask(rows, cols, history_ratio)
    attention = FrameAttention.BIDIRECTIONAL
    session = ARDFSession(model, model.layout_for(clip.prompt), NoEviction())
    session.prefill_prompt(clip.prompt, history_mask(rows, cols, condition_ratio), attention)
    gen = torch.Generator().manual_seed(seed)
    model_acc, baseline_acc = [], []
    for t in range(1, num_frames):
        truth = torch.tensor(frame_tokens(clip.frames[t]))
        cells = chosen_cells(rows * cols, mask_fraction, gen)
        logits = session.canvas_logits(mask_cells(truth, cells, rows, cols), attention)
        predicted = logits[visual_offsets(rows, cols)].argmax(dim=-1)  # [R * C] palette codes
        true_cells, previous = clip.frames[t].flatten(), clip.frames[t - 1].flatten()
        model_acc.append((predicted == true_cells)[cells].float().mean())
        baseline_acc.append((previous == true_cells)[cells].float().mean())
        session.commit(truth, commit_mask, attention)
    return FrameAccuracy(torch.stack(model_acc), torch.stack(baseline_acc))


def ardf_rollout_accuracy(
    model: ReferenceVideoModel,
    clip: SceneClip,
    num_frames: int | None = None,
    params: ARDFSamplingParams = ARDF_EVAL_PARAMS,
) -> FrameAccuracy:
    """Free-running frame-parallel accuracy of frames 1..num_frames (None: all the clip's)
    generated by ``generate_ardf`` from the prompt alone."""
    num_frames = clip.frames.shape[0] - 1 if num_frames is None else num_frames
    result = generate_ardf(model, clip.prompt, num_frames, params)
    truth = clip.frames[1 : 1 + num_frames]
    first = clip.frames[:1].expand_as(truth)
    return FrameAccuracy(cell_accuracy(list(result.token_ids), truth), copy_accuracy(first, truth))
