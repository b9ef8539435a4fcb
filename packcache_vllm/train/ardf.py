"""Lumos-1's AR-DF training objective, built to match the frame-parallel inference of
``reference_ardf`` exactly (same tokens, same logical indices, same attention).

A clip (caption + T frames) becomes one sequence of four kinds of segment (``Role``):

    text | commit 0 | commit 1 | ... | commit T-2 | canvas 1 | canvas 2 | ... | canvas T-1

* text: the prompt before its first frame (caption, ``<video_start>``, duration, fps), causal,
  as ``ARDFSession.prefill_prompt`` forwards it;
* commit f: frame f's history-masked copy (``history_mask(rows, cols, 0.7)``, the periodic
  pattern every commit uses at inference) at frame f's logical indices; it sees the text,
  commits 0..f-1 and itself (bidirectionally): what ``ARDFSession.commit`` computes. The
  prompt's conditioning frame(s) (frame 0) are committed with ``ARDFConfig.condition_ratio``
  instead: 0 (default, Lumos-1's inference: ``ardf_condition_mask_ratio`` 0) caches them whole,
  as ``ARDFSession.prefill_prompt`` does; 0.7 masks them like every commit (the earlier
  checkpoints were trained so);
* canvas f: the true frame f with a random fraction of its visual cells ``<mask>`` (MaskGIT:
  ``ceil(cos(pi/2 * u) * cells)`` of them, u ~ U(0, 1), at least one; layout tokens never
  masked) at frame f's logical indices, the ones its commit uses later, as the denoising
  canvas does; it sees the text, commits 0..f-1 and itself (bidirectionally), never its own
  frame's commit or a later one: what ``ARDFSession.canvas_logits`` attends to.

Loss (``ardf_loss``): cross-entropy over the visual vocabulary (the palette codes) at the masked
cells, the logits read at the cell's own position (no shift), as ``reference_ardf.visual_logits``.

CFG: with probability ``ARDFConfig.drop_caption`` an example is the unconditional twin's. Its
sequence is the prompt from ``<video_start>`` on (``unconditional_prompt``), at logical indices
from 0, frame_start 3: the layout ``twin_layout`` gives the uncond twin. Every frame is the same.

``tests/unit/test_ardf_train.py`` checks that the training forward's canvas logits equal
``ARDFSession.canvas_logits`` for both twins.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from packcache_vllm.core.layout import LUMOS_TOKENS, find_frame_start
from packcache_vllm.core.maskgit import (
    ARDFSamplingParams,
    apply_history_mask,
    history_mask,
    visual_offsets,
)
from packcache_vllm.reference_ardf import unconditional_prompt
from packcache_vllm.train.data import PAD_ID
from packcache_vllm.train.model import TrainableLumos
from packcache_vllm.video.tokens import SceneClip, frame_tokens

# what inference commits with unless a request overrides it (Lumos-1's 0.7), and what it caches
# the prompt's conditioning frames with (Lumos-1's 0: whole)
LUMOS_HISTORY_MASK_RATIO = ARDFSamplingParams().history_mask_ratio
LUMOS_CONDITION_MASK_RATIO = ARDFSamplingParams().condition_mask_ratio


class Role(enum.IntEnum):
    """What a token of an AR-DF sequence is (``ARDFExample.role``)."""

    TEXT = 0
    COMMIT = 1
    CANVAS = 2
    PAD = 3  # batch padding: attends to itself only, attended by nothing, no loss


@dataclass(frozen=True)
class ARDFConfig:
    """history_ratio: the commits' history-mask ratio (inference's ``history_mask_ratio``);
    condition_ratio: the same for the prompt's conditioning frames (inference's
    ``condition_mask_ratio``; 0: cached whole); drop_caption: probability that an example is
    the unconditional twin's (CFG)."""

    history_ratio: float = LUMOS_HISTORY_MASK_RATIO
    condition_ratio: float = LUMOS_CONDITION_MASK_RATIO
    drop_caption: float = 0.1

    def __post_init__(self) -> None:
        for name in ("history_ratio", "condition_ratio", "drop_caption"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ARDFConfig.{name} must lie in [0, 1], got {value}")


@dataclass(frozen=True)
class ARDFExample:
    """One clip's AR-DF sequence of N tokens.

    ids, index: [N] int64 token ids and logical indices (a frame's commit and canvas share its
    indices); role: [N] int64 ``Role``; frame: [N] int64 frame of each commit / canvas token (0
    for text); loss_mask: [N] bool, the canvases' masked cells; targets: [N] int64 the true
    palette code at each masked cell (0 elsewhere); frame_start: index of frame 0's <break>.
    """

    ids: torch.Tensor
    index: torch.Tensor
    role: torch.Tensor
    frame: torch.Tensor
    loss_mask: torch.Tensor
    targets: torch.Tensor
    frame_start: int


@dataclass(frozen=True)
class ARDFBatch:
    """ids, index, targets: [B, N] int64; allowed: [B, N, N] bool; loss_mask: [B, N] bool;
    frame_start: [B] int64. Right-padded with ``Role.PAD`` tokens."""

    ids: torch.Tensor
    index: torch.Tensor
    allowed: torch.Tensor
    loss_mask: torch.Tensor
    targets: torch.Tensor
    frame_start: torch.Tensor


# --- one example --------------------------------------------------------------------------------


def text_prefix(prompt: Sequence[int], unconditional: bool) -> list[int]:
    """The prompt's tokens before its first frame; from ``<video_start>`` on if unconditional."""
    prompt = unconditional_prompt(prompt) if unconditional else list(prompt)
    return prompt[: find_frame_start(prompt)]


def canvas_cell_mask(num_cells: int, gen: torch.Generator) -> torch.Tensor:
    """[num_cells] bool: MaskGIT's random mask, ``ceil(cos(pi/2 * u) * num_cells)`` cells
    (at least one), u ~ U(0, 1), cells chosen uniformly (u, then a permutation, from gen)."""
    u = float(torch.rand((), generator=gen))
    count = min(num_cells, max(1, math.ceil(math.cos(math.pi / 2 * u) * num_cells)))
    return random_cells(num_cells, count, gen)


def random_cells(num_cells: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """[num_cells] bool: ``count`` cells chosen uniformly (one permutation from gen)."""
    mask = torch.zeros(num_cells, dtype=torch.bool)
    mask[torch.randperm(num_cells, generator=gen)[:count]] = True
    return mask


def mask_cells(
    frame_ids: torch.Tensor, cell_mask: torch.Tensor, rows: int, cols: int
) -> torch.Tensor:
    """frame_ids: [F] a true frame; cell_mask: [rows * cols] bool over its visual cells in
    raster order. Returns [F] int64: the frame with those cells ``<mask>``."""
    offsets = visual_offsets(rows, cols)[cell_mask]
    canvas = frame_ids.clone()
    canvas[offsets] = LUMOS_TOKENS.mask
    return canvas


def build_example(clip: SceneClip, config: ARDFConfig, gen: torch.Generator) -> ARDFExample:
    """The clip's AR-DF sequence (module docstring). Draws from ``gen``: one number for the
    caption drop, then per canvas (frames 1..T-1 in order) ``canvas_cell_mask``'s draws."""
    unconditional = float(torch.rand((), generator=gen)) < config.drop_caption
    text = torch.tensor(text_prefix(clip.prompt, unconditional), dtype=torch.int64)
    frames = clip.frames
    num_frames, rows, cols = frames.shape
    if num_frames < 2:
        raise ValueError(f"an AR-DF example needs >= 2 frames, got {num_frames}")
    truth = torch.stack([torch.tensor(frame_tokens(f)) for f in frames])  # [T, F]
    per_frame = truth.shape[1]
    conditioning = clip.layout.num_anchor_frames  # the prompt's frames: 0..conditioning-1
    ratios = [config.condition_ratio if f < conditioning else config.history_ratio
              for f in range(num_frames - 1)]  # fmt: skip
    commit_masks = [history_mask(rows, cols, ratio) for ratio in ratios]
    segments = [Segment(text, Role.TEXT, 0, torch.arange(text.numel()))]

    def span(f: int) -> torch.Tensor:
        return text.numel() + f * per_frame + torch.arange(per_frame)

    for f, commit in enumerate(commit_masks):
        segments.append(Segment(apply_history_mask(truth[f], commit), Role.COMMIT, f, span(f)))
    for f in range(1, num_frames):
        canvas = mask_cells(truth[f], canvas_cell_mask(rows * cols, gen), rows, cols)
        segments.append(Segment(canvas, Role.CANVAS, f, span(f), truth[f]))
    return join_segments(segments, frame_start=text.numel())


@dataclass(frozen=True)
class Segment:
    """A run of tokens of one role. ids, index: [S] int64; truth: [S] the true frame tokens
    (canvases only: where ids is ``<mask>`` at a visual cell, the loss target)."""

    ids: torch.Tensor
    role: Role
    frame: int
    index: torch.Tensor
    truth: torch.Tensor | None = None

    def loss_mask(self) -> torch.Tensor:
        if self.truth is None:
            return torch.zeros(self.ids.numel(), dtype=torch.bool)
        return (self.ids == LUMOS_TOKENS.mask) & (self.truth >= LUMOS_TOKENS.visual_base)

    def targets(self) -> torch.Tensor:
        """[S] int64 palette codes at the loss positions, 0 elsewhere."""
        if self.truth is None:
            return torch.zeros(self.ids.numel(), dtype=torch.int64)
        return torch.where(self.loss_mask(), self.truth - LUMOS_TOKENS.visual_base, 0)


def join_segments(segments: list[Segment], frame_start: int) -> ARDFExample:
    return ARDFExample(
        ids=torch.cat([s.ids for s in segments]),
        index=torch.cat([s.index for s in segments]),
        role=torch.cat([torch.full(s.ids.shape, int(s.role)) for s in segments]),
        frame=torch.cat([torch.full(s.ids.shape, s.frame) for s in segments]),
        loss_mask=torch.cat([s.loss_mask() for s in segments]),
        targets=torch.cat([s.targets() for s in segments]),
        frame_start=frame_start,
    )


def attention_mask(role: torch.Tensor, frame: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """role, frame, index: [..., N] int64 -> [..., N, N] bool (query i may attend to key j).

    text: earlier-or-equal text (causal by logical index); commit f: text and commits <= f;
    canvas f: text, commits < f and canvas f; padding: itself."""
    q_role, k_role = role[..., :, None], role[..., None, :]
    q_frame, k_frame = frame[..., :, None], frame[..., None, :]
    k_text = k_role == Role.TEXT
    k_commit = k_role == Role.COMMIT
    text = (q_role == Role.TEXT) & k_text & (index[..., None, :] <= index[..., :, None])
    commit = (q_role == Role.COMMIT) & (k_text | (k_commit & (k_frame <= q_frame)))
    own_canvas = (k_role == Role.CANVAS) & (k_frame == q_frame)
    canvas = (q_role == Role.CANVAS) & (k_text | (k_commit & (k_frame < q_frame)) | own_canvas)
    pad = (q_role == Role.PAD) & torch.eye(role.shape[-1], dtype=torch.bool)
    return text | commit | canvas | pad


# --- batches and the loss -----------------------------------------------------------------------


def make_ardf_batch(examples: Sequence[ARDFExample]) -> ARDFBatch:
    """Right-pad the examples to one length with ``Role.PAD`` tokens."""
    n = max(e.ids.numel() for e in examples)

    def padded(values: torch.Tensor, fill: int) -> torch.Tensor:
        return F.pad(values, (0, n - values.numel()), value=fill)

    role = torch.stack([padded(e.role, int(Role.PAD)) for e in examples])
    frame = torch.stack([padded(e.frame, 0) for e in examples])
    index = torch.stack([padded(e.index, 0) for e in examples])
    return ARDFBatch(
        ids=torch.stack([padded(e.ids, PAD_ID) for e in examples]),
        index=index,
        allowed=attention_mask(role, frame, index),
        loss_mask=torch.stack([padded(e.loss_mask, 0) for e in examples]),
        targets=torch.stack([padded(e.targets, 0) for e in examples]),
        frame_start=torch.tensor([e.frame_start for e in examples], dtype=torch.int64),
    )


def ardf_batch(clips: Sequence[SceneClip], config: ARDFConfig, gen: torch.Generator) -> ARDFBatch:
    """One AR-DF example per clip (in order, drawing from ``gen``), batched."""
    return make_ardf_batch([build_example(clip, config, gen) for clip in clips])


def ardf_hidden(model: TrainableLumos, batch: ARDFBatch) -> torch.Tensor:
    """[B, N, D] final hidden states of the batch, at its logical indices and mask."""
    return model(batch.ids, batch.frame_start, batch.allowed, index=batch.index)


def ardf_logits(model: TrainableLumos, batch: ARDFBatch) -> torch.Tensor:
    """[B, N, V - visual_base] visual logits at every position of the batch."""
    return model.visual_logits(ardf_hidden(model, batch))


def ardf_loss(model: TrainableLumos, batch: ARDFBatch) -> torch.Tensor:
    """Mean cross-entropy (visual vocabulary) over the canvases' masked cells."""
    logits = model.visual_logits(ardf_hidden(model, batch)[batch.loss_mask])  # [K, V_visual]
    return F.cross_entropy(logits, batch.targets[batch.loss_mask])
