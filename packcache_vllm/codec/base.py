"""The codec interface: RGB pixels <-> grids of visual codes, and its pixel/grid geometry.

``VisualCodec.encode`` takes an image ``[H, W, 3]`` or a clip ``[N, H, W, 3]`` of uint8 pixels and
returns codes ``[T, rows, cols]`` int64 (an image gives T = 1); ``decode`` takes codes
``[T, rows, cols]`` and returns ``[N, H, W, 3]`` uint8 (N = ``geometry.pixel_frames(T)``).
``decode_frames`` decodes what ``frames.decode_frame_ids`` read from generated token ids.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from packcache_vllm.codec.frames import DecodedFrames, code_ids


@dataclass(frozen=True)
class CodecGeometry:
    """pixels_per_token: a code covers that many pixels square; temporal_compression: pixel
    frames per latent frame; first_frame_alone: the first pixel frame is a latent frame of its
    own (causal video tokenizers such as Cosmos: N frames -> 1 + ceil((N - 1) / t))."""

    pixels_per_token: int
    temporal_compression: int = 1
    first_frame_alone: bool = False

    def __post_init__(self) -> None:
        for name in ("pixels_per_token", "temporal_compression"):
            if getattr(self, name) < 1:
                raise ValueError(f"CodecGeometry.{name} must be >= 1, got {getattr(self, name)}")

    def size(self, rows: int, cols: int) -> str:
        """The "WIDTHxHEIGHT" of a frame of rows x cols codes."""
        return f"{cols * self.pixels_per_token}x{rows * self.pixels_per_token}"

    def latent_frames(self, pixel_frames: int) -> int:
        """Latent frames that hold ``pixel_frames`` frames (a partial group takes a whole one)."""
        if pixel_frames < 1:
            raise ValueError(f"a video has >= 1 frame, got {pixel_frames}")
        t = self.temporal_compression
        if self.first_frame_alone:
            return 1 + math.ceil((pixel_frames - 1) / t)
        return math.ceil(pixel_frames / t)

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames that ``latent_frames`` latent frames decode to."""
        t = self.temporal_compression
        return 1 + t * (latent_frames - 1) if self.first_frame_alone else t * latent_frames


# Lumos-1's own tokenizer: NVIDIA Cosmos-Tokenizer-DV4x8x8 (4x in time, causal; 8 x 8 pixels).
COSMOS_DV4X8X8 = CodecGeometry(pixels_per_token=8, temporal_compression=4, first_frame_alone=True)


class VisualCodec(ABC):
    """Pixels <-> visual code grids. Subclasses set ``geometry`` and ``codebook_size`` and
    implement ``encode_clip`` / ``decode_codes`` on checked inputs."""

    geometry: CodecGeometry
    codebook_size: int

    def encode(self, pixels: np.ndarray) -> torch.Tensor:
        """pixels: [H, W, 3] (an image) or [N, H, W, 3] (a clip) uint8 -> [T, rows, cols] int64."""
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.ndim not in (3, 4) or pixels.shape[-1] != 3:
            raise ValueError(
                f"pixels must be [H, W, 3] or [N, H, W, 3] uint8, got {pixels.shape} {pixels.dtype}"
            )
        height, width = pixels.shape[-3:-1]
        p = self.geometry.pixels_per_token
        if height % p or width % p or height == 0 or width == 0:
            raise ValueError(
                f"an image of {width}x{height} pixels is not a whole grid of {p}x{p}-pixel codes"
            )
        return self.encode_clip(pixels[None] if pixels.ndim == 3 else pixels, pixels.ndim == 3)

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """codes: [T, rows, cols] int64 in [0, codebook_size) -> [N, H, W, 3] uint8."""
        codes = torch.as_tensor(codes, dtype=torch.int64)
        if codes.dim() != 3 or 0 in codes.shape:
            raise ValueError(f"codes must be [T, rows, cols], got shape {tuple(codes.shape)}")
        code_ids(codes, self.codebook_size)  # range check, names the first bad code
        return self.decode_codes(codes)

    def decode_frames(self, frames: DecodedFrames) -> np.ndarray:
        """Frames read from generated ids (``frames.decode_frame_ids``) -> [N, H, W, 3] uint8;
        invalid cells decode as code 0 unless the codec can mark them (the palette can)."""
        return self.decode(frames.cells)

    @abstractmethod
    def encode_clip(self, clip: np.ndarray, is_image: bool) -> torch.Tensor:
        """clip: [N, H, W, 3] uint8, H and W multiples of pixels_per_token -> [T, rows, cols]."""

    @abstractmethod
    def decode_codes(self, codes: torch.Tensor) -> np.ndarray:
        """codes: [T, rows, cols] int64, in range -> [N, H, W, 3] uint8."""
