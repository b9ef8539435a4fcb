"""A learned VQ tokenizer: transformers' ``Emu3VQVAE`` (Emu3's video VQ-VAE) as a ``VisualCodec``.

Loaded from its own folder (``Emu3VQVAE.save_pretrained``: ``config.json`` with
``model_type: emu3_vqgan`` and the weights). Geometry from its config: a code covers
``2 ** (len(channel_multiplier) - 1)`` pixels square; ``temporal_downsample_factor`` (t) pixel
frames make one latent frame (not causal: a clip's frame count must be a multiple of t; an image
is repeated t times, as ``Emu3VQVAE.encode`` does, and is one latent frame). Pixels are
normalised ``(rgb / 255 - mean) / std`` (default mean = std = 0.5: [-1, 1]) and decoded back,
clamped to [0, 255] and rounded.

Round trips: with trained weights ``encode(decode(codes))`` reproduces most codes; with random
weights (the tiny test tokenizer) nothing ties the decoder to the encoder, so only the quantizer's
fixed point holds exactly (a codebook vector quantizes to its own code) and encode/decode are
deterministic. ``tiny_emu3_vq`` builds a seconds-fast random one for tests and tiny checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from packcache_vllm.codec.base import CodecGeometry, VisualCodec

DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def emu3_geometry(vq_config: dict) -> CodecGeometry:
    """The geometry of an Emu3 VQ-VAE from its config.json contents."""
    multiplier = vq_config.get("channel_multiplier", (1, 2, 2, 4))
    return CodecGeometry(
        pixels_per_token=2 ** (len(multiplier) - 1),
        temporal_compression=int(vq_config.get("temporal_downsample_factor", 4)),
    )


class Emu3VQCodec(VisualCodec):
    def __init__(
        self,
        vq,
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
    ) -> None:
        """vq: a ``transformers.Emu3VQVAE`` (eval mode, float32)."""
        self.vq = vq.eval()
        self.geometry = emu3_geometry(vq.config.to_dict())
        self.codebook_size = int(vq.config.codebook_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def from_pretrained(cls, path: str | Path, **normalisation) -> Emu3VQCodec:
        from transformers import Emu3VQVAE

        return cls(Emu3VQVAE.from_pretrained(str(path), dtype=torch.float32), **normalisation)

    def encode_clip(self, clip: np.ndarray, is_image: bool) -> torch.Tensor:
        n, height, width, _ = clip.shape
        t = self.geometry.temporal_compression
        if not is_image and n % t:
            raise ValueError(
                f"this codec takes an image or a clip of a multiple of {t} frames, got {n} frames"
            )
        pixels = torch.as_tensor(clip, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
        pixels = (pixels - self.mean) / self.std  # [N, 3, H, W]
        batch = pixels if is_image else pixels[None]  # image: [1, 3, H, W]; clip: [1, N, 3, H, W]
        with torch.no_grad():
            out = self.vq.encode(batch, torch.tensor([[height, width]]))
        codes = out.image_tokens[0].to(torch.int64)
        return codes[None] if is_image else codes

    def decode_codes(self, codes: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            video = self.vq.decode(codes[None])[0]  # [N, 3, H, W]
        rgb = (video * self.std + self.mean) * 255.0
        return rgb.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def tiny_emu3_vq(
    codebook_size: int = 256,
    pixels_per_token: int = 8,
    temporal_compression: int = 4,
    seed: int = 0,
):
    """A random-weight ``Emu3VQVAE`` small enough to run in about a second on a CPU: 32 channels
    (GroupNorm's 32 groups need a multiple of 32), one residual block per level, no attention
    levels, embeddings of 4. ``pixels_per_token`` must be a power of two."""
    from transformers import Emu3VQVAE, Emu3VQVAEConfig

    levels = pixels_per_token.bit_length()
    if pixels_per_token < 1 or 2 ** (levels - 1) != pixels_per_token:
        raise ValueError(f"pixels_per_token must be a power of two, got {pixels_per_token}")
    if temporal_compression < 1 or temporal_compression & (temporal_compression - 1):
        raise ValueError(f"temporal_compression must be a power of two, got {temporal_compression}")
    config = Emu3VQVAEConfig(
        codebook_size=codebook_size,
        embed_dim=4,
        latent_channels=4,
        base_channels=32,
        channel_multiplier=[1] * levels,
        num_res_blocks=1,
        attn_resolutions=[],
        temporal_downsample_factor=temporal_compression,
        hidden_size=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Emu3VQVAE(config).eval()
