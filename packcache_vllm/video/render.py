"""Palette frames -> RGB pixels -> MP4, GIF and a PNG strip (imageio, imageio-ffmpeg for MP4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from packcache_vllm.codec.frames import DecodedFrames
from packcache_vllm.video.palette import PALETTE_SIZE, palette_rgb

DEFAULT_CELL_PIXELS = 16  # 8 x 12 cells -> 128 x 192 pixels (MP4 wants multiples of 16)
STRIP_GAP_PIXELS = 4


def to_rgb(frames: DecodedFrames, cell_pixels: int = DEFAULT_CELL_PIXELS) -> np.ndarray:
    """[T, rows, cols] palette cells -> [T, rows * cell_pixels, cols * cell_pixels, 3] uint8.
    Invalid cells are painted ``palette.INVALID_RGB``."""
    if cell_pixels < 1:
        raise ValueError(f"cell_pixels must be >= 1, got {cell_pixels}")
    index = torch.where(frames.valid, frames.cells, PALETTE_SIZE)
    rgb = palette_rgb()[index]  # [T, rows, cols, 3]
    rgb = rgb.repeat_interleave(cell_pixels, dim=1).repeat_interleave(cell_pixels, dim=2)
    return rgb.numpy()


@dataclass(frozen=True)
class VideoFiles:
    mp4: Path
    gif: Path
    strip: Path


def write_video(rgb: np.ndarray, stem: Path, fps: int = 4) -> VideoFiles:
    """Write ``stem``.mp4, ``stem``.gif and ``stem``-strip.png from rgb [T, H, W, 3] uint8."""
    import imageio.v2 as imageio

    if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be [T, H, W, 3] uint8, got {rgb.shape} {rgb.dtype}")
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    files = VideoFiles(
        stem.with_suffix(".mp4"), stem.with_suffix(".gif"), stem.with_name(stem.name + "-strip.png")
    )
    imageio.mimwrite(files.mp4, list(rgb), fps=fps, codec="libx264", macro_block_size=1)
    imageio.mimwrite(files.gif, list(rgb), duration=1000 / fps, loop=0)
    imageio.imwrite(files.strip, strip(rgb))
    return files


def strip(rgb: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] -> one [H, T * (W + gap) - gap, 3] image, frames left to right."""
    t, h, w, _ = rgb.shape
    out = np.full((h, t * (w + STRIP_GAP_PIXELS) - STRIP_GAP_PIXELS, 3), 255, dtype=np.uint8)
    for i in range(t):
        x = i * (w + STRIP_GAP_PIXELS)
        out[:, x : x + w] = rgb[i]
    return out
