"""The synthetic scenes' codec: code k is palette colour k painted over a square of pixels.

Encoding takes the mean colour of each ``cell_pixels`` x ``cell_pixels`` square and picks the
nearest palette colour (RGB distance), so ``encode(decode(codes)) == codes`` for every code and
``decode(encode(rgb)) == rgb`` for every frame painted in palette colours. No temporal compression.
"""

from __future__ import annotations

import numpy as np
import torch

from packcache_vllm.codec.base import CodecGeometry, VisualCodec
from packcache_vllm.codec.frames import DecodedFrames
from packcache_vllm.video.palette import PALETTE_SIZE, palette_rgb
from packcache_vllm.video.render import DEFAULT_CELL_PIXELS, to_rgb


class PaletteCodec(VisualCodec):
    codebook_size = PALETTE_SIZE

    def __init__(self, cell_pixels: int = DEFAULT_CELL_PIXELS) -> None:
        self.geometry = CodecGeometry(pixels_per_token=cell_pixels)

    def encode_clip(self, clip: np.ndarray, is_image: bool) -> torch.Tensor:
        n, height, width, _ = clip.shape
        p = self.geometry.pixels_per_token
        pixels = torch.as_tensor(clip, dtype=torch.float32)
        means = pixels.view(n, height // p, p, width // p, p, 3).mean(dim=(2, 4))
        palette = palette_rgb()[:PALETTE_SIZE].float()
        nearest = torch.cdist(means.reshape(-1, 3), palette).argmin(dim=1)
        return nearest.view(means.shape[:3])

    def decode_codes(self, codes: torch.Tensor) -> np.ndarray:
        return to_rgb(DecodedFrames(codes, torch.ones_like(codes, dtype=torch.bool)), self.cell)

    def decode_frames(self, frames: DecodedFrames) -> np.ndarray:
        """Invalid cells are painted ``palette.INVALID_RGB``."""
        return to_rgb(frames, self.cell)

    @property
    def cell(self) -> int:
        return self.geometry.pixels_per_token
