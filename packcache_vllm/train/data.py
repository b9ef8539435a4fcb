"""Training batches of synthetic clips: token ids, frame starts, next-token targets, loss weights.

Scenes come from ``random_scene(f"{split}-{i}")``: the ``train`` and ``heldout`` splits never share
a seed. The loss covers the continuation only (frames 1.., markers included): the caption and the
first frame are the prompt, as in image-to-video generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from packcache_vllm.core.layout import LUMOS_TOKENS
from packcache_vllm.model.factory import FIRST_BYTE_ID, TEXT_VOCAB_SIZE
from packcache_vllm.train.model import ActiveVocab
from packcache_vllm.video.palette import PALETTE_SIZE
from packcache_vllm.video.scene import random_scene
from packcache_vllm.video.tokens import SceneClip, scene_clip

PAD_ID = 1  # the tiny tokenizer's <pad>
NUM_GRID_IDS = 64  # grid / duration / fps tokens 8804 .. 8804 + 63


def video_active_vocab(codebook_size: int = PALETTE_SIZE) -> ActiveVocab:
    """Specials, the 256 bytes, Lumos's frame/video markers, grid tokens and the palette codes."""
    t = LUMOS_TOKENS
    ids = set(range(FIRST_BYTE_ID + 256))
    ids |= {t.eoss, t.frame_break, t.newline, t.mask, t.video_start, t.video_end}
    ids |= set(range(t.grid_base, t.grid_base + NUM_GRID_IDS))
    ids |= set(range(t.visual_base, t.visual_base + codebook_size))
    return ActiveVocab(tuple(sorted(ids)), TEXT_VOCAB_SIZE + codebook_size)


@dataclass(frozen=True)
class ClipSpec:
    """What every clip of a run looks like."""

    rows: int = 8
    cols: int = 12
    num_frames: int = 6
    max_objects: int = 3
    pan_probability: float = 0.0

    def clip(self, split: str, index: int) -> SceneClip:
        scene = random_scene(
            f"{split}-{index}",
            self.rows,
            self.cols,
            self.num_frames,
            max_objects=self.max_objects,
            pan_probability=self.pan_probability,
        )
        return scene_clip(scene)


@dataclass(frozen=True)
class Batch:
    """ids, targets: [B, N] (targets[b, i] = ids[b, i + 1], PAD_ID past the end);
    loss_weight: [B, N] float, 1 where targets[b, i] is a continuation token;
    frame_start: [B] int64."""

    ids: torch.Tensor
    targets: torch.Tensor
    loss_weight: torch.Tensor
    frame_start: torch.Tensor


def make_batch(clips: Sequence[SceneClip]) -> Batch:
    """Right-padded batch of whole clips (prompt + continuation)."""
    n = max(len(c.token_ids) for c in clips)
    ids = torch.full((len(clips), n + 1), PAD_ID, dtype=torch.int64)
    weight = torch.zeros(len(clips), n)
    for b, clip in enumerate(clips):
        seq = clip.token_ids
        ids[b, : len(seq)] = torch.tensor(seq)
        weight[b, len(clip.prompt) - 1 : len(seq) - 1] = 1.0
    frame_start = torch.tensor([c.layout.frame_start for c in clips], dtype=torch.int64)
    return Batch(ids[:, :-1], ids[:, 1:], weight, frame_start)
