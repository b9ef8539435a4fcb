"""Token-granular access to a paged KV cache whose pages store each token as one row ``[K | V]``.

vLLM 0.32's GPU backends (FlashAttention, Triton, FlashInfer) view one layer's cache as
``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` with a token's K in the first
``head_size`` entries of its row and V in the rest (FlashAttention splits the last dim in two).
The physical strides depend on the KV cache layout vLLM picked (``KVCacheLayout``: NHD, HND, or a
cross-layer layout), so these functions never flatten the tensor: they index the logical view,
which is exact for any strides and on any device. Moving ``M`` tokens costs index tensors of
``M`` entries (not ``M * heads * dims`` as a learned element map does).

Whether a backend really writes plain rows is not assumed: ``kv_layout.learn_page_layout`` learns
its write order at start-up and ``PageLayout.is_plain_rows()`` says whether these functions apply.

A *slot* is vLLM's global token address ``block_id * block_size + offset_in_block``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from packcache_vllm.engine import debug_checks


def slot_coordinates(slots: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """slots ``[M]`` int64 -> (block ids ``[M]``, offsets in block ``[M]``)."""
    return slots // block_size, slots % block_size


def move_token_rows(
    kv_caches: Sequence[torch.Tensor], src_slots: torch.Tensor, dst_slots: torch.Tensor
) -> None:
    """Copy K and V of ``src_slots[i]`` to ``dst_slots[i]`` in every layer and kv head.

    kv_caches: per layer ``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` (any
        strides, one shape and dtype). src_slots, dst_slots: ``[M]`` int64 on the caches'
        device; destinations distinct. Each layer gathers all sources before scattering, so
        overlapping sets are safe.
    """
    check_rows(kv_caches, src_slots, dst_slots)
    if src_slots.numel() == 0:
        return
    block_size = kv_caches[0].shape[2]
    src_block, src_offset = slot_coordinates(src_slots, block_size)
    dst_block, dst_offset = slot_coordinates(dst_slots, block_size)
    for cache in kv_caches:
        cache[dst_block, :, dst_offset] = cache[src_block, :, src_offset]  # [M, heads, 2*hd]


def read_key_rows(kv_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """One layer's keys of ``slots`` ``[N]`` -> ``[N, num_kv_heads, head_size]`` (a copy)."""
    block, offset = slot_coordinates(slots, kv_cache.shape[2])
    return kv_cache[block, :, offset, : kv_cache.shape[3] // 2]


def read_value_rows(kv_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """One layer's values of ``slots`` ``[N]`` -> ``[N, num_kv_heads, head_size]`` (a copy)."""
    block, offset = slot_coordinates(slots, kv_cache.shape[2])
    return kv_cache[block, :, offset, kv_cache.shape[3] // 2 :]


def write_key_rows(kv_cache: torch.Tensor, slots: torch.Tensor, keys: torch.Tensor) -> None:
    """Overwrite one layer's keys of distinct ``slots`` ``[N]`` with ``keys``
    ``[N, num_kv_heads, head_size]`` (cast to the cache dtype); values untouched."""
    head_size = kv_cache.shape[3] // 2
    expected = (slots.numel(), kv_cache.shape[1], head_size)
    if tuple(keys.shape) != expected:
        raise ValueError(f"keys must have shape {expected}, got {tuple(keys.shape)}")
    check_rows([kv_cache], slots, slots)
    block, offset = slot_coordinates(slots, kv_cache.shape[2])
    kv_cache[block, :, offset, :head_size] = keys.to(kv_cache.dtype)


def check_rows(
    kv_caches: Sequence[torch.Tensor], src_slots: torch.Tensor, dst_slots: torch.Tensor
) -> None:
    """Shapes, dtypes and devices always; slot ranges and distinct destinations (host reads of
    device tensors) only under ``debug_checks``."""
    if not kv_caches:
        raise ValueError("no kv caches given")
    first = kv_caches[0]
    if first.dim() != 4 or first.shape[3] % 2:
        raise ValueError(
            "kv cache must be [num_blocks, num_kv_heads, block_size, 2 * head_size], got "
            f"{tuple(first.shape)}"
        )
    for cache in kv_caches:
        if cache.shape != first.shape or cache.dtype != first.dtype:
            raise ValueError("all kv caches must share one shape and dtype")
    if src_slots.shape != dst_slots.shape or src_slots.dim() != 1:
        raise ValueError(
            f"src and dst slots must be 1-D of one shape, got {tuple(src_slots.shape)} and "
            f"{tuple(dst_slots.shape)}"
        )
    num_slots = first.shape[0] * first.shape[2]
    for name, slots in (("src_slots", src_slots), ("dst_slots", dst_slots)):
        if slots.dtype != torch.int64 or slots.device != first.device:
            raise ValueError(f"{name} must be int64 on {first.device}, got {slots.dtype} on "
                             f"{slots.device}")  # fmt: skip
    if debug_checks.enabled():
        check_slot_values(src_slots, dst_slots, num_slots)


def check_slot_values(src_slots: torch.Tensor, dst_slots: torch.Tensor, num_slots: int) -> None:
    for name, slots in (("src_slots", src_slots), ("dst_slots", dst_slots)):
        if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= num_slots):
            raise ValueError(f"{name} out of range [0, {num_slots})")
    if dst_slots.unique().numel() != dst_slots.numel():
        raise ValueError("dst_slots must be distinct (a repeated destination has no defined value)")
