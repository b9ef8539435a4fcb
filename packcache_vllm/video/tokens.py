"""Palette frames <-> Lumos-1 token streams, and image-to-video prompts for a scene.

A frame of palette indices ``[rows, cols]`` becomes Lumos-1's frame format
(``<racm3:break> <grid_h> <grid_w>``, rows of visual codes each ending with ``<newline>``,
``<eoss>``); palette index k is visual code k, token ``65536 + k``. The prompt is Lumos-style
(``factory.make_video_prompt``: caption bytes, video start, duration and fps tokens) followed by
the scene's first frame as the conditioning image.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from packcache_vllm.core.layout import LUMOS_TOKENS, FrameLayout, find_frame_start
from packcache_vllm.model.factory import (
    FIRST_BYTE_ID,
    GRID_PIXELS,
    PIXELS_PER_TOKEN,
    grid_token,
    make_video_prompt,
)
from packcache_vllm.video.palette import PALETTE_SIZE
from packcache_vllm.video.scene import Scene, render_clip

VIDEO_FPS = 4  # one latent frame per 1/4 s in the prompt's fps token


def caption_ids(caption: str) -> list[int]:
    """Byte-level ids of the caption (the tiny tokenizer: byte b is id FIRST_BYTE_ID + b)."""
    return [FIRST_BYTE_ID + b for b in caption.encode()]


def frame_tokens(cells: torch.Tensor) -> list[int]:
    """cells: [rows, cols] palette indices -> one frame in Lumos-1's format."""
    if cells.dim() != 2:
        raise ValueError(f"a frame is [rows, cols], got shape {tuple(cells.shape)}")
    if cells.min() < 0 or cells.max() >= PALETTE_SIZE:
        raise ValueError(f"palette indices must lie in [0, {PALETTE_SIZE}), got {cells.unique()}")
    rows, cols = cells.shape
    tokens = [
        LUMOS_TOKENS.frame_break,
        grid_token(max(1, rows * PIXELS_PER_TOKEN // GRID_PIXELS)),
        grid_token(max(1, cols * PIXELS_PER_TOKEN // GRID_PIXELS)),
    ]
    for row in cells.tolist():
        tokens += [LUMOS_TOKENS.visual_base + k for k in row]
        tokens.append(LUMOS_TOKENS.newline)
    tokens.append(LUMOS_TOKENS.eoss)
    return tokens


def frames_tokens(frames: torch.Tensor) -> list[int]:
    """frames: [T, rows, cols] -> T frames back to back."""
    return [t for frame in frames for t in frame_tokens(frame)]


def scene_prompt(scene: Scene, first_frame: torch.Tensor | None = None) -> list[int]:
    """Image-to-video prompt: caption, video start, duration/fps tokens, the first frame."""
    if first_frame is None:
        first_frame = render_clip(scene)[0]
    duration_s = max(1, round(scene.num_frames / VIDEO_FPS))
    text = make_video_prompt(
        scene.rows,
        scene.cols,
        caption_ids(scene.caption()),
        with_condition_frame=False,
        rng=random.Random(0),
        duration_s=duration_s,
        fps=VIDEO_FPS,
    )
    return text + frame_tokens(first_frame)


@dataclass(frozen=True)
class SceneClip:
    """A scene's prompt (caption + first frame) and the ground-truth continuation.

    frames: [T, rows, cols] palette indices (frame 0 is the conditioning image);
    continuation: the tokens of frames 1..T-1.
    """

    scene: Scene
    frames: torch.Tensor
    prompt: list[int]
    continuation: list[int]

    @property
    def layout(self) -> FrameLayout:
        return FrameLayout(
            find_frame_start(self.prompt), len(self.prompt), self.scene.rows, self.scene.cols
        )

    @property
    def token_ids(self) -> list[int]:
        return self.prompt + self.continuation


def scene_clip(scene: Scene) -> SceneClip:
    frames = render_clip(scene)
    return SceneClip(scene, frames, scene_prompt(scene, frames[0]), frames_tokens(frames[1:]))


@dataclass(frozen=True)
class DecodedFrames:
    """cells: [T, rows, cols] int64 palette indices (0 where invalid); valid: [T, rows, cols]
    bool, False where the token at a visual cell was not a palette code."""

    cells: torch.Tensor
    valid: torch.Tensor


def decode_frames(
    tokens: Sequence[int], rows: int, cols: int, *, strict: bool = True
) -> DecodedFrames:
    """Video tokens (whole frames, each starting at its <racm3:break>) -> palette frames.

    Reads the visual cells by their place in the frame layout. ``strict``: raise ValueError
    naming the first token that is not where the format puts it (a marker or a visual code);
    otherwise mark bad cells invalid and ignore bad markers. A trailing partial frame is dropped.
    """
    layout = FrameLayout(0, 0, rows, cols)
    per_frame = layout.tokens_per_frame
    ids = torch.as_tensor(list(tokens), dtype=torch.int64)
    num_frames = ids.numel() // per_frame
    if strict and ids.numel() % per_frame:
        raise ValueError(f"{ids.numel()} tokens are not whole frames of {per_frame} tokens")
    frames = ids[: num_frames * per_frame].view(num_frames, per_frame)
    expected = torch.tensor(frame_tokens(torch.zeros(rows, cols, dtype=torch.int64)))
    is_cell = expected == LUMOS_TOKENS.visual_base
    codes = frames[:, is_cell].view(num_frames, rows, cols) - LUMOS_TOKENS.visual_base
    valid = (codes >= 0) & (codes < PALETTE_SIZE)
    if strict:
        check_markers(frames, expected, is_cell)
        if not valid.all():
            t, r, c = (valid == 0).nonzero()[0].tolist()
            token = int(codes[t, r, c]) + LUMOS_TOKENS.visual_base
            raise ValueError(f"frame {t} cell ({r}, {c}) holds token {token}, not a palette code")
    return DecodedFrames(torch.where(valid, codes, 0), valid)


def check_markers(frames: torch.Tensor, expected: torch.Tensor, is_cell: torch.Tensor) -> None:
    """frames: [T, F] ids; expected: [F] one frame's ids (markers where ~is_cell)."""
    wrong = (frames != expected) & ~is_cell
    if wrong.any():
        t, offset = wrong.nonzero()[0].tolist()
        raise ValueError(
            f"frame {t} offset {offset} holds token {int(frames[t, offset])}, the frame format "
            f"puts {int(expected[offset])} there"
        )
