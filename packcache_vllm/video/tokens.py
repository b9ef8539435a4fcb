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

from packcache_vllm.codec.frames import DecodedFrames, decode_frame_ids, frames_ids
from packcache_vllm.core.layout import FrameLayout, find_frame_start
from packcache_vllm.model.factory import FIRST_BYTE_ID, make_video_prompt
from packcache_vllm.video.palette import PALETTE_SIZE
from packcache_vllm.video.scene import SCENE_FPS as VIDEO_FPS
from packcache_vllm.video.scene import Scene, render_clip


def caption_ids(caption: str) -> list[int]:
    """Byte-level ids of the caption (the tiny tokenizer: byte b is id FIRST_BYTE_ID + b)."""
    return [FIRST_BYTE_ID + b for b in caption.encode()]


def frame_tokens(cells: torch.Tensor) -> list[int]:
    """cells: [rows, cols] palette indices -> one frame in Lumos-1's format."""
    if cells.dim() != 2:
        raise ValueError(f"a frame is [rows, cols], got shape {tuple(cells.shape)}")
    return frames_ids(cells[None], PALETTE_SIZE)


def frames_tokens(frames: torch.Tensor) -> list[int]:
    """frames: [T, rows, cols] -> T frames back to back."""
    return frames_ids(frames, PALETTE_SIZE)


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


def decode_frames(
    tokens: Sequence[int], rows: int, cols: int, *, strict: bool = True
) -> DecodedFrames:
    """Video tokens (whole frames) -> palette frames (``codec.frames.decode_frame_ids`` over the
    palette's codes)."""
    return decode_frame_ids(tokens, rows, cols, PALETTE_SIZE, strict=strict)
