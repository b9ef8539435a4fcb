"""Token-granular access to a paged KV cache whose pages use a backend-specific element order.

One layer's cache is ``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` (vLLM's CPU_ATTN
"LBHNC" view); each (block, kv_head) page holds ``2 * block_size * head_size`` elements, K first
then V, permuted the way the backend's kernel wants them (on AVX-512 ``vec``: K dim-major
[head_size, block_size], V token-major; AMX packs pairs). We never hard-code that order: it is
learned once by writing known values through the backend's own write path
(``impl.do_kv_cache_update``) and reading where they land. A token move is then plain indexing.

``write_fn(key, value, kv_cache, slot_mapping)`` is supplied by the runner as
``layer.impl.do_kv_cache_update(layer, key, value, kv_cache, slot_mapping)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

WriteFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]
_EXACT_CODES = 256  # every dtype we support (fp32, bf16, fp16) holds the integers 0..256 exactly


@dataclass(frozen=True)
class PageLayout:
    """Where token t's dim d lives inside a page.

    key_offsets, value_offsets: [block_size, head_size] int64 flat offsets into a page of
    ``2 * block_size * head_size`` elements.
    """

    block_size: int
    head_size: int
    key_offsets: torch.Tensor
    value_offsets: torch.Tensor

    @property
    def page_size(self) -> int:
        return 2 * self.block_size * self.head_size

    def token_offsets(self, in_page: torch.Tensor) -> torch.Tensor:
        """in_page: [N] token indices inside their page -> [N, 2 * head_size] offsets (K then V)."""
        return torch.cat([self.key_offsets[in_page], self.value_offsets[in_page]], dim=1)


def learn_page_layout(
    write_fn: WriteFn, num_kv_heads: int, block_size: int, head_size: int, dtype: torch.dtype
) -> PageLayout:
    """Learn the page order by writing coded tokens through ``write_fn`` into a scratch page."""
    if max(block_size, head_size) > _EXACT_CODES:
        raise ValueError(f"block_size and head_size must be <= {_EXACT_CODES} to learn the layout")
    shape = (num_kv_heads, block_size, head_size)
    write = _page_writer(write_fn, shape, dtype)
    token_code = torch.arange(block_size, dtype=torch.float32)[:, None].expand(-1, head_size)
    dim_code = torch.arange(head_size, dtype=torch.float32)[None, :].expand(block_size, -1)
    ones, zeros = torch.ones(block_size, head_size), torch.zeros(block_size, head_size)
    tokens, dims = write(token_code, token_code), write(dim_code, dim_code)
    is_key = write(ones, zeros) > 0
    layout = PageLayout(
        block_size,
        head_size,
        key_offsets=_offsets_of(tokens, dims, is_key, block_size, head_size),
        value_offsets=_offsets_of(tokens, dims, ~is_key, block_size, head_size),
    )
    _check_permutation(layout)
    return layout


def _page_writer(write_fn: WriteFn, shape: tuple[int, int, int], dtype: torch.dtype):
    """A function writing K and V codes ([block_size, head_size], same for every head) for all
    tokens of one scratch block; it returns the page as [page_size] float32."""
    num_kv_heads, block_size, head_size = shape
    slots = torch.arange(block_size, dtype=torch.int64)

    def write(key_code: torch.Tensor, value_code: torch.Tensor) -> torch.Tensor:
        cache = torch.zeros(1, num_kv_heads, block_size, 2 * head_size, dtype=dtype)
        per_head = (block_size, num_kv_heads, head_size)
        key = key_code[:, None, :].expand(per_head).to(dtype).contiguous()
        value = value_code[:, None, :].expand(per_head).to(dtype).contiguous()
        write_fn(key, value, cache, slots)
        pages = cache.view(num_kv_heads, -1).float()
        if not torch.equal(pages, pages[:1].expand_as(pages)):
            raise RuntimeError("the backend's page layout differs between kv heads")
        return pages[0]

    return write


def _offsets_of(token_page, dim_page, in_part, block_size, head_size) -> torch.Tensor:
    """[block_size, head_size] page offsets of (t, d) among the positions in ``in_part``."""
    positions = torch.nonzero(in_part).flatten()
    if len(positions) != block_size * head_size:
        raise RuntimeError(
            f"expected {block_size * head_size} K (or V) elements per page, found {len(positions)}"
        )
    offsets = torch.empty(block_size, head_size, dtype=torch.int64)
    offsets[token_page[positions].long(), dim_page[positions].long()] = positions
    return offsets


def _check_permutation(layout: PageLayout) -> None:
    every = torch.cat([layout.key_offsets.flatten(), layout.value_offsets.flatten()])
    if not torch.equal(every.sort().values, torch.arange(layout.page_size)):
        raise RuntimeError("learned K/V offsets do not form a permutation of the page")


def _flat_indices(layout: PageLayout, slots: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """slots: [N] global slots -> [N, num_kv_heads, 2 * head_size] indices into a cache viewed as
    [num_blocks * num_kv_heads * page_size]."""
    block, in_page = slots // layout.block_size, slots % layout.block_size
    page_start = (block[:, None] * num_kv_heads + torch.arange(num_kv_heads)) * layout.page_size
    return page_start[:, :, None] + layout.token_offsets(in_page)[:, None, :]


def move_tokens(
    kv_caches: Sequence[torch.Tensor],
    layout: PageLayout,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor,
) -> None:
    """Copy every layer's K and V from ``src_slots`` to ``dst_slots`` ([M] int64 global slots).
    All sources are gathered before any destination is written, so overlapping sets are safe."""
    if src_slots.shape != dst_slots.shape:
        raise ValueError(
            f"src and dst slots differ in shape: {src_slots.shape} vs {dst_slots.shape}"
        )
    if src_slots.numel() == 0:
        return
    num_kv_heads = kv_caches[0].shape[1]
    src = _flat_indices(layout, src_slots, num_kv_heads).flatten()
    dst = _flat_indices(layout, dst_slots, num_kv_heads).flatten()
    for cache in kv_caches:
        flat = cache.view(-1)
        flat[dst] = flat[src]  # advanced indexing gathers into a new tensor first


def read_keys(kv_cache: torch.Tensor, layout: PageLayout, slots: torch.Tensor) -> torch.Tensor:
    """[N] global slots -> their keys [N, num_kv_heads, head_size] (one layer)."""
    index = _flat_indices(layout, slots, kv_cache.shape[1])[..., : layout.head_size]
    return kv_cache.view(-1)[index]


def write_keys(
    kv_cache: torch.Tensor, layout: PageLayout, slots: torch.Tensor, keys: torch.Tensor
) -> None:
    """Overwrite the keys of ``slots`` ([N]) with ``keys`` [N, num_kv_heads, head_size]."""
    index = _flat_indices(layout, slots, kv_cache.shape[1])[..., : layout.head_size]
    kv_cache.view(-1)[index] = keys.to(kv_cache.dtype)
