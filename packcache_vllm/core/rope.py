"""Lumos-1 MM-RoPE: rotate-half RoPE whose channels are split between t, h and w.

Channel c of a head (0 <= c < head_dim) rotates with frequency inv_freq[c mod head_dim/2] at
the position of axis ``CHANNEL_AXES[c mod 16]`` (t: 0-3, h: 4,5,8,9,12,13, w: 6,7,10,11,14,15),
exactly as Lumos-1's "MMRoPE v9"; channels past the last full group of 16 use t. Text tokens get
(p, p, p), which is plain 1D RoPE on every channel. Keys are stored rotated, so a temporal rebase
of cached keys is a rotation of their t channels only (``rotate_time``).

That holds only where no rotate-half pair (c, c + head_dim/2) joins a t channel with an h/w
channel (``supports_time_rebase``: head_dim a multiple of 32, or below 16). Where one does (head_dim
48, 80, ...), the pair's map [[cos ft, -sin ft], [sin fh, cos fh]] is not a rotation: attention
scores change under a common time shift, so moving the anchors forward is not moving the rest
back, and a cached key cannot be re-rotated in t at all (undoing the map divides by cos f(t - h)).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

AXIS_T, AXIS_H, AXIS_W = 0, 1, 2
CHANNEL_AXES = (0, 0, 0, 0, 1, 1, 2, 2, 1, 1, 2, 2, 1, 1, 2, 2)
GROUP = len(CHANNEL_AXES)


def channel_axes(head_dim: int) -> torch.Tensor:
    """[head_dim] int64: the axis (0=t, 1=h, 2=w) whose position drives each channel."""
    axes = torch.full((head_dim,), AXIS_T, dtype=torch.int64)
    full = (head_dim // GROUP) * GROUP
    axes[:full] = torch.tensor(CHANNEL_AXES).repeat(head_dim // GROUP)
    return axes


def time_mixed_pairs(head_dim: int) -> torch.Tensor:
    """[head_dim/2] bool: rotate-half pairs (c, c + head_dim/2) that join a t channel with an h
    or w channel (channel_axes decides, as it does for the model)."""
    on_t = channel_axes(head_dim) == AXIS_T
    half = head_dim // 2
    return on_t[:half] != on_t[half:]


@lru_cache
def supports_time_rebase(head_dim: int) -> bool:
    """Whether a shift in t is a rotation of rotated keys (``MMRoPE.rotate_time``): no pair mixes
    t with h/w. Then attention depends on t only through differences, and PackCache can rebase
    time by re-rotating the anchors' keys."""
    return not bool(time_mixed_pairs(head_dim).any())


def time_rebase_refusal(head_dim: int) -> str:
    """Why MM-RoPE at ``head_dim`` (one ``supports_time_rebase`` refuses) cannot be rebased."""
    half = head_dim // 2
    mixed = int(time_mixed_pairs(head_dim).sum())
    return (
        f"MM-RoPE at head_dim {head_dim} cannot rebase time: rotate-half pairs channel c with "
        f"c + {half}, and {mixed} of the {half} pairs join a t channel with an h/w channel, so a "
        "shift in t is not a rotation of the cached keys (attention scores change under a common "
        "time shift); dropping frames needs head_dim a multiple of 32 (or below 16)"
    )


@dataclass(frozen=True)
class MMRoPE:
    head_dim: int
    theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"MMRoPE.head_dim must be even and >= 2, got {self.head_dim}")

    @property
    def rebases_time(self) -> bool:
        """Whether ``rotate_time`` can shift rotated keys in t (``supports_time_rebase``)."""
        return supports_time_rebase(self.head_dim)

    def inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        """[head_dim/2] float32 frequencies theta^(-2i/head_dim)."""
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float()
        return 1.0 / (self.theta ** (exponent / self.head_dim))

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [3, N] (t, h, w). Returns (cos, sin), each [N, head_dim] float32."""
        axes = channel_axes(self.head_dim).to(positions.device)
        freq = self.inv_freq(positions.device).repeat(2)  # [head_dim]: cat(freqs, freqs)
        channel_pos = positions.to(torch.float64)[axes]  # [head_dim, N]
        angle = channel_pos.t() * freq.to(torch.float64)  # float64: exact at long positions
        return angle.cos().to(torch.float32), angle.sin().to(torch.float32)

    def apply(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate x: [N, H, head_dim] at positions [3, N]. Math in float32, result in x's dtype."""
        cos, sin = self.cos_sin(positions)
        return rotate(x, cos, sin)

    def rotate_time(self, keys: torch.Tensor, delta_t: torch.Tensor | int) -> torch.Tensor:
        """Shift already-rotated keys [N, H, head_dim] by ``delta_t`` along t only.

        delta_t: int or [N] int64 (per key). Equal to rotating the un-rotated key at
        (t + delta_t, h, w), exact up to float rounding. Raises ValueError (why, naming head_dim)
        where no pair may mix t with h/w (``supports_time_rebase``).
        """
        if not self.rebases_time:
            raise ValueError(time_rebase_refusal(self.head_dim))
        n = keys.shape[0]
        delta = torch.as_tensor(delta_t, dtype=torch.int64, device=keys.device).expand(n)
        shift = torch.zeros(3, n, dtype=torch.int64, device=keys.device)
        shift[AXIS_T] = delta
        return self.apply(keys, shift)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE. x: [N, H, D]; cos, sin: [N, D]. Math in float32, result in x.dtype."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    out = xf * cos[:, None, :] + rotated * sin[:, None, :]
    return out.to(x.dtype)
