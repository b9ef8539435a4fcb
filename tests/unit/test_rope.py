"""MM-RoPE: channel axes, the 1D special case, and the temporal re-rotation behind the rebase."""

from __future__ import annotations

import pytest
import torch

from packcache_vllm.core.layout import FrameLayout
from packcache_vllm.core.rope import (
    AXIS_H,
    AXIS_T,
    AXIS_W,
    MMRoPE,
    channel_axes,
    supports_time_rebase,
)

T, H, W = AXIS_T, AXIS_H, AXIS_W
# Angles are computed in float64 and rounded once; only the float32 result rounding remains.
ATOL = 1e-5
LUMOS_GROUP = [T, T, T, T, H, H, W, W, H, H, W, W, H, H, W, W]


def test_channel_axes_follow_lumos():
    assert channel_axes(16).tolist() == LUMOS_GROUP
    assert channel_axes(64).tolist() == LUMOS_GROUP * 4
    axes = channel_axes(16)
    assert [c for c in range(16) if axes[c] == T] == [0, 1, 2, 3]
    assert [c for c in range(16) if axes[c] == H] == [4, 5, 8, 9, 12, 13]
    assert [c for c in range(16) if axes[c] == W] == [6, 7, 10, 11, 14, 15]
    assert channel_axes(20).tolist() == LUMOS_GROUP + [T] * 4  # a partial group uses t


def unit_values(*shape: int, seed: int) -> torch.Tensor:
    """Uniform in [-1, 1): the magnitude ATOL is stated for."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def plain_rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Textbook 1D rotate-half RoPE in float64, with float32 frequencies as Lumos-1 (and HF
    Llama) compute them. x: [N, H, D]; positions: [N]."""
    dim = x.shape[-1]
    inv_freq = (1.0 / theta ** (torch.arange(0, dim, 2).float() / dim)).double()
    angle = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # [N, D/2]
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
    first, second = x.double()[..., : dim // 2], x.double()[..., dim // 2 :]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
def test_text_positions_are_plain_1d_rope(head_dim):
    p = torch.arange(0, 4000, 7)
    x = unit_values(len(p), 2, head_dim, seed=head_dim)
    rotated = MMRoPE(head_dim).apply(x, torch.stack([p, p, p]))
    torch.testing.assert_close(rotated.double(), plain_rope(x, p), atol=ATOL, rtol=0)


def test_apply_keeps_dtype():
    x = torch.randn(3, 1, 32).to(torch.bfloat16)
    assert MMRoPE(32).apply(x, torch.zeros(3, 3, dtype=torch.int64)).dtype == torch.bfloat16


def test_head_dim_validation():
    with pytest.raises(ValueError, match="even and >= 2"):
        MMRoPE(15)


def generated_indices(layout: FrameLayout, num_frames: int) -> torch.Tensor:
    start = layout.anchor_len
    return torch.arange(start, start + num_frames * layout.tokens_per_frame)


@pytest.mark.parametrize("head_dim", [8, 32, 64, 96, 128])
@pytest.mark.parametrize("dropped_frames", [1, 3, 7])
def test_rotate_time_equals_rebased_positions(head_dim, dropped_frames):
    """Keys rotated at their original positions, then shifted by -t_stride * D in time, equal
    keys rotated at the positions FrameLayout gives after D frames were dropped."""
    layout = FrameLayout(frame_start=7, anchor_len=7 + 2 * 44, rows=4, cols=9)  # F = 44
    rope = MMRoPE(head_dim)
    index = generated_indices(layout, 60)  # logical indices up to ~2,700
    keys = unit_values(len(index), 2, head_dim, seed=dropped_frames)
    cached = rope.apply(keys, layout.positions(index))
    shifted = rope.rotate_time(cached, -layout.t_stride * dropped_frames)
    expected = rope.apply(keys, layout.positions(index, dropped_frames=dropped_frames))
    torch.testing.assert_close(shifted, expected, atol=ATOL, rtol=0)


def test_rotate_time_touches_only_time_channels():
    rope = MMRoPE(32)
    keys = torch.randn(10, 2, 32)
    shifted = rope.rotate_time(keys, 12)
    space = channel_axes(32) != T
    torch.testing.assert_close(shifted[..., space], keys[..., space], atol=0, rtol=0)
    assert not torch.allclose(shifted[..., ~space], keys[..., ~space])


def test_rotate_time_per_key_deltas():
    rope = MMRoPE(64)
    keys = torch.randn(2, 1, 64)
    both = rope.rotate_time(keys, torch.tensor([3, -5]))
    torch.testing.assert_close(both[:1], rope.rotate_time(keys[:1], 3))
    torch.testing.assert_close(both[1:], rope.rotate_time(keys[1:], -5))


@pytest.mark.parametrize("head_dim", [32, 128])
def test_rotate_time_composes(head_dim):
    rope = MMRoPE(head_dim)
    keys = unit_values(16, 2, head_dim, seed=1)
    twice = rope.rotate_time(rope.rotate_time(keys, -8), -20)
    torch.testing.assert_close(twice, rope.rotate_time(keys, -28), atol=1e-5, rtol=0)
    back = rope.rotate_time(rope.rotate_time(keys, 100), -100)
    torch.testing.assert_close(back, keys, atol=1e-5, rtol=0)


def shift_changes_scores(head_dim: int) -> bool:
    """Whether moving queries and keys by one common time shift changes MM-RoPE attention scores
    (beyond float32 rounding). When it does not, moving the anchors forward by the shift equals
    moving every later token back by it."""
    rope, n = MMRoPE(head_dim), 16
    q, k = unit_values(n, 1, head_dim, seed=3), unit_values(n, 1, head_dim, seed=4)
    at_q, at_k = torch.randint(0, 3000, (2, 3, n), generator=torch.Generator().manual_seed(5))
    shift = torch.zeros(3, n, dtype=torch.int64)
    shift[T] = -4 * 5

    def scores(shift_by: torch.Tensor) -> torch.Tensor:
        return (rope.apply(q, at_q + shift_by) * rope.apply(k, at_k + shift_by)).sum(-1)

    return not torch.allclose(scores(shift), scores(0 * shift), atol=1e-3, rtol=0)


def test_time_rebase_support_is_what_the_model_rope_does():
    """The rebase re-rotates only the anchors' keys. That equals moving every later token back
    iff the model's own MM-RoPE scores are invariant under a common time shift, which depends on
    how head_dim splits the channels: a rotate-half pair joining a t channel with an h/w channel
    breaks it (head_dim 48, 80, ...)."""
    for head_dim in range(2, 194, 2):
        expected = not shift_changes_scores(head_dim)
        assert supports_time_rebase(head_dim) is expected, head_dim
        assert expected is (head_dim % 32 == 0 or head_dim < 16), head_dim


@pytest.mark.parametrize("head_dim", [8, 16, 32, 48, 64, 80, 96, 128])
def test_rotate_time_equals_the_rope_at_the_shifted_time_or_refuses(head_dim):
    """Re-rotating rotated keys by a shift equals the rotary embedding recomputed at the shifted
    time; where no re-rotation can (the shift is not a rotation of the cached keys), the refusal
    names head_dim and why."""
    rope = MMRoPE(head_dim)
    keys = unit_values(8, 2, head_dim, seed=head_dim)
    positions = torch.randint(0, 500, (3, 8), generator=torch.Generator().manual_seed(head_dim))
    if not supports_time_rebase(head_dim):
        with pytest.raises(ValueError, match=rf"head_dim {head_dim}\b.*h/w channel"):
            rope.rotate_time(rope.apply(keys, positions), 12)
        return
    later = positions.clone()
    later[T] += 12
    shifted = rope.rotate_time(rope.apply(keys, positions), 12)
    torch.testing.assert_close(shifted, rope.apply(keys, later), atol=ATOL, rtol=0)
