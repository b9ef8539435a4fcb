"""Per-frame cell accuracy of a trained model against the truth and a copy-the-last-frame baseline.

Two measures on held-out clips, both with the dense reference model (``ReferenceVideoModel``):

* teacher-forced (``next_frame_accuracy``): one causal forward over the true clip; each cell of
  frame t is predicted (greedy) from the true frames < t and the true cells before it in raster
  order. Baseline: frame t-1 copied.
* free-running (``rollout_accuracy``): the model generates the continuation greedily from the
  prompt alone (caption + first frame), optionally under a KV policy. Baseline: the first frame
  copied into every frame.

A cell counts as correct when the decoded cell equals the true palette index; a token that is not
a palette code counts as wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from packcache_vllm.reference import KeepPolicy, ReferenceVideoModel
from packcache_vllm.video.tokens import SceneClip, decode_frames


@dataclass(frozen=True)
class FrameAccuracy:
    """model, baseline: [T] fraction of correct cells per predicted frame (frame 1 first)."""

    model: torch.Tensor
    baseline: torch.Tensor


def cell_accuracy(predicted_tokens: list[int], truth: torch.Tensor) -> torch.Tensor:
    """predicted_tokens: whole frames of tokens; truth: [T, rows, cols]. Returns [T] accuracy."""
    _, rows, cols = truth.shape
    decoded = decode_frames(predicted_tokens, rows, cols, strict=False)
    correct = (decoded.cells == truth) & decoded.valid
    return correct.float().mean(dim=(1, 2))


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
