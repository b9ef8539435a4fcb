"""Token-granular access to a paged KV cache whose pages use a backend-specific element order.

Shapes
------
One layer's cache is ``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` (vLLM's CPU_ATTN
"LBHNC" view). Each (block, kv_head) *page* holds ``page_size = 2 * block_size * head_size``
elements: the first half K, the second half V (``do_kv_cache_update`` views the page as
``[2 * block_size, head_size]`` and chunks it in two), each half permuted the way the kernel wants
it. On AVX-512 without AMX (ISA ``vec``) K is dim-major ``[head_size, block_size]`` and V
token-major ``[block_size, head_size]``; the ``amx`` ISA packs VNNI pairs. A token is therefore
not a contiguous row, and we never hard-code the order: :func:`learn_page_layout` writes known
codes through the backend's own write path and reads where they land. With the learned
:class:`PageLayout`, moving a token is plain tensor indexing (:func:`move_tokens`), and so is
reading or re-writing the keys of a few tokens (:func:`read_keys`, :func:`write_keys`).

A *slot* is vLLM's global token address ``block_id * block_size + offset_in_block``.

Where ``write_fn`` and the caches come from (checked against vLLM 0.32, V1 CPU runner)
-------------------------------------------------------------------------------------------
* Every attention layer registers itself in
  ``runner.compilation_config.static_forward_context[layer_name]`` (an
  ``vllm.model_executor.layers.attention.Attention`` module; see ``Attention.__init__``). Its
  ``impl`` is the backend's ``AttentionImpl`` (``CPUAttentionBackendImpl`` for CPU_ATTN), and
  CPU_ATTN's metadata builder stores the kernel ISA on the layer as ``layer.isa``.
* The backend's write path is ``layer.impl.do_kv_cache_update(layer, key, value, kv_cache,
  slot_mapping)`` with key/value ``[num_tokens, num_kv_heads, head_size]`` and slot_mapping
  ``[num_tokens]`` int64; it is exactly what the forward calls (``unified_kv_cache_update`` in
  ``attention.py``). So the runner passes::

      layer = runner.compilation_config.static_forward_context[name]
      write_fn = lambda k, v, cache, slots: layer.impl.do_kv_cache_update(layer, k, v, cache, slots)

* ``GPUModelRunner.initialize_kv_cache`` -> ``initialize_kv_cache_tensors`` -> ``bind_kv_cache``
  puts the per-layer caches, in layer order, in ``runner.kv_caches`` (views addressed by the
  scheduler's block ids) and binds each layer's kernel-block view to ``layer.kv_cache``. The two
  are the same tensor whenever the kernel block size equals the manager's block size (always for
  CPU_ATTN with ``block_size`` a multiple of 32; checked by ``tests/engine/test_kv_layout.py``).
  Moves must use the block ids the scheduler hands out, i.e. ``runner.kv_caches``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from packcache_vllm.engine import debug_checks

WriteFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]
"""``write_fn(key, value, kv_cache, slot_mapping)``: key/value ``[N, num_kv_heads, head_size]``,
kv_cache ``[num_blocks, num_kv_heads, block_size, 2 * head_size]``, slot_mapping ``[N]`` int64."""

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Every supported dtype holds the integers 0..256 exactly (bf16 has an 8-bit significand), so
# codes are written as base-256 digits, one pass per digit.
_DIGIT_BASE = 256


@dataclass(frozen=True, eq=False)
class PageLayout:
    """Where each element of a token lives inside a (block, kv_head) page.

    block_size: tokens per block.
    head_size: elements per token per head, for K and for V.
    key_offsets: ``[block_size, head_size]`` int64; ``key_offsets[t, d]`` is the flat offset,
        inside a page of ``page_size`` elements, of K element (token t, dim d).
    value_offsets: ``[block_size, head_size]`` int64; the same for V.

    The K and V offsets together are a permutation of ``range(page_size)``, and the map is the
    same for every page (every block and every kv head).
    """

    block_size: int
    head_size: int
    key_offsets: torch.Tensor
    value_offsets: torch.Tensor

    def __post_init__(self) -> None:
        shape = (self.block_size, self.head_size)
        for name in ("key_offsets", "value_offsets"):
            offsets = getattr(self, name)
            if offsets.shape != shape or offsets.dtype != torch.int64:
                raise ValueError(
                    f"{name} must be int64 of shape {shape}, got {offsets.dtype} "
                    f"{tuple(offsets.shape)}"
                )

    @property
    def page_size(self) -> int:
        """Elements in one (block, kv_head) page: ``2 * block_size * head_size``."""
        return 2 * self.block_size * self.head_size

    def key_offsets_of(self, in_page: torch.Tensor) -> torch.Tensor:
        """in_page: ``[N]`` token indices inside their block -> ``[N, head_size]`` int64 page
        offsets of their K elements."""
        return self.key_offsets[in_page]

    def value_offsets_of(self, in_page: torch.Tensor) -> torch.Tensor:
        """in_page: ``[N]`` token indices inside their block -> ``[N, head_size]`` int64 page
        offsets of their V elements."""
        return self.value_offsets[in_page]

    def is_plain_rows(self) -> bool:
        """True when each token is one row ``[K | V]`` of a ``[block_size, 2 * head_size]``
        page: the order ``token_rows`` assumes (vLLM's GPU backends)."""
        rows = torch.arange(self.block_size).view(-1, 1) * 2 * self.head_size
        dims = torch.arange(self.head_size).view(1, -1)
        return torch.equal(self.key_offsets, rows + dims) and torch.equal(
            self.value_offsets, rows + self.head_size + dims
        )

    def token_offsets(self, in_page: torch.Tensor) -> torch.Tensor:
        """in_page: ``[N]`` token indices inside their block -> ``[N, 2 * head_size]`` int64
        page offsets of all their elements, K dims first then V dims."""
        return torch.cat([self.key_offsets[in_page], self.value_offsets[in_page]], dim=1)


# --- learning the layout ---------------------------------------------------------------------
def learn_page_layout(
    write_fn: WriteFn,
    num_kv_heads: int,
    block_size: int,
    head_size: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> PageLayout:
    """Learn the page order of ``write_fn`` (the backend's own KV write path).

    Every element of a one-block scratch cache gets a distinct code ``(kv_head, element)``,
    element = ``t * head_size + d`` for K and ``block_size * head_size + t * head_size + d`` for
    V. The codes are written in base-256 digits, one ``write_fn`` pass per digit, so they
    round-trip exactly in fp32, bf16 and fp16. Reading the page back gives, for each page
    position, which element landed there; the inverse is the layout. The scratch cache lives on
    ``device`` (where ``write_fn``'s kernel runs); the layout's tensors are on the CPU.

    Raises:
        ValueError: unsupported dtype or non-positive sizes.
        RuntimeError: the write path left page positions unwritten, altered the codes, wrote a
            head's elements into another head's page, used different orders for different heads,
            or did not place each K/V element exactly once.
    """
    _check_learning_arguments(num_kv_heads, block_size, head_size, dtype)
    page_size = 2 * block_size * head_size
    codes = _written_codes(write_fn, num_kv_heads, block_size, head_size, dtype, device)
    element_at = _page_elements(codes, page_size)
    offset_of = torch.empty(page_size, dtype=torch.int64)
    offset_of[element_at] = torch.arange(page_size)
    half = block_size * head_size
    return PageLayout(
        block_size,
        head_size,
        key_offsets=offset_of[:half].view(block_size, head_size).clone(),
        value_offsets=offset_of[half:].view(block_size, head_size).clone(),
    )


def _check_learning_arguments(
    num_kv_heads: int, block_size: int, head_size: int, dtype: torch.dtype
) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"cannot learn a page layout for dtype {dtype}; supported: {SUPPORTED_DTYPES}"
        )
    if min(num_kv_heads, block_size, head_size) <= 0:
        raise ValueError(
            f"sizes must be positive: num_kv_heads={num_kv_heads}, block_size={block_size}, "
            f"head_size={head_size}"
        )


def _written_codes(
    write_fn: WriteFn,
    num_kv_heads: int,
    block_size: int,
    head_size: int,
    dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor:
    """Write every (head, element) code through ``write_fn``; return what each position of the
    scratch block holds: ``[num_kv_heads, page_size]`` int64 codes ``head * page_size + element``.
    """
    page_size = 2 * block_size * head_size
    # code[part, t, h, d]: K (part 0) and V (part 1) inputs in write_fn's [N, heads, dims] order
    part = torch.arange(2).view(2, 1, 1, 1)
    token = torch.arange(block_size).view(1, block_size, 1, 1)
    head = torch.arange(num_kv_heads).view(1, 1, num_kv_heads, 1)
    dim = torch.arange(head_size).view(1, 1, 1, head_size)
    code = head * page_size + (part * block_size + token) * head_size + dim
    read_back = torch.zeros(num_kv_heads, page_size, dtype=torch.int64)
    place = 1
    for _ in range(_num_digits(num_kv_heads * page_size)):
        digit = (code // place) % _DIGIT_BASE
        read_back += _write_digit_page(write_fn, digit, dtype, device) * place
        place *= _DIGIT_BASE
    return read_back


def _num_digits(num_codes: int) -> int:
    digits, capacity = 1, _DIGIT_BASE
    while capacity < num_codes:
        digits, capacity = digits + 1, capacity * _DIGIT_BASE
    return digits


def _write_digit_page(
    write_fn: WriteFn, digit: torch.Tensor, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """digit: ``[2, block_size, num_kv_heads, head_size]`` values in [0, 256) for K and V.
    Writes them to tokens 0..block_size-1 of a NaN-filled one-block cache and returns the block
    as ``[num_kv_heads, page_size]`` int64."""
    _, block_size, num_kv_heads, head_size = digit.shape
    shape = (1, num_kv_heads, block_size, 2 * head_size)
    cache = torch.full(shape, float("nan"), dtype=dtype, device=device)
    key, value = digit.to(device=device, dtype=dtype).unbind(0)
    slots = torch.arange(block_size, device=device)
    write_fn(key.contiguous(), value.contiguous(), cache, slots)
    page = cache.reshape(num_kv_heads, -1).double().cpu()
    if page.isnan().any():
        unwritten = int(page.isnan().sum())
        raise RuntimeError(f"the backend's write left {unwritten} page positions unwritten")
    if not torch.equal(page, page.round()) or page.min() < 0 or page.max() >= _DIGIT_BASE:
        raise RuntimeError("the backend's write altered the written values (not an exact copy)")
    return page.long()


def _page_elements(codes: torch.Tensor, page_size: int) -> torch.Tensor:
    """codes: ``[num_kv_heads, page_size]`` -> ``[page_size]``: the element stored at each page
    position, checked to be the same for every head and a permutation of the page."""
    heads = torch.arange(codes.shape[0]).view(-1, 1)
    if not torch.equal(codes // page_size, heads.expand_as(codes)):
        raise RuntimeError("the backend's write put a kv head's elements into another head's page")
    elements = codes % page_size
    if not torch.equal(elements, elements[:1].expand_as(elements)):
        raise RuntimeError("the backend's page layout differs between kv heads")
    if not torch.equal(elements[0].sort().values, torch.arange(page_size)):
        raise RuntimeError("the learned K/V offsets do not form a permutation of the page")
    return elements[0]


# --- using the layout ------------------------------------------------------------------------
def move_tokens(
    kv_caches: Sequence[torch.Tensor],
    layout: PageLayout,
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor,
) -> None:
    """Copy the K and V of ``src_slots[i]`` to ``dst_slots[i]`` in every layer, every kv head.

    kv_caches: per layer ``[num_blocks, num_kv_heads, block_size, 2 * head_size]``, contiguous,
        all of one shape and dtype.
    src_slots, dst_slots: ``[M]`` int64 global slots; destinations distinct.

    Per layer this is one gather of all ``M * num_kv_heads * 2 * head_size`` source elements
    into a new tensor, then one scatter, so overlapping sets (e.g. packing left by a few slots)
    are safe. An empty move is a no-op.
    """
    _check_slot_pair(src_slots, dst_slots)
    if src_slots.numel() == 0 or not kv_caches:
        return
    _check_caches(kv_caches, layout)
    num_blocks, num_kv_heads = kv_caches[0].shape[:2]
    _check_slots(src_slots, num_blocks * layout.block_size, "src_slots")
    _check_slots(dst_slots, num_blocks * layout.block_size, "dst_slots", distinct=True)
    src = _element_index(layout, num_kv_heads, src_slots, layout.token_offsets).flatten()
    dst = _element_index(layout, num_kv_heads, dst_slots, layout.token_offsets).flatten()
    for cache in kv_caches:
        flat = cache.view(-1)
        flat.index_copy_(0, dst, flat.index_select(0, src))


def read_keys(kv_cache: torch.Tensor, layout: PageLayout, slots: torch.Tensor) -> torch.Tensor:
    """One layer's keys of ``slots`` ([N] int64) -> ``[N, num_kv_heads, head_size]`` (a copy)."""
    return _read(kv_cache, layout, slots, layout.key_offsets_of)


def read_values(kv_cache: torch.Tensor, layout: PageLayout, slots: torch.Tensor) -> torch.Tensor:
    """One layer's values of ``slots`` ([N] int64) -> ``[N, num_kv_heads, head_size]`` (a copy)."""
    return _read(kv_cache, layout, slots, layout.value_offsets_of)


def write_keys(
    kv_cache: torch.Tensor, layout: PageLayout, slots: torch.Tensor, keys: torch.Tensor
) -> None:
    """Overwrite one layer's keys of ``slots`` ([N] int64, distinct) with ``keys``
    ``[N, num_kv_heads, head_size]`` (cast to the cache dtype). Values are untouched."""
    _check_caches([kv_cache], layout)
    num_blocks, num_kv_heads = kv_cache.shape[:2]
    expected = (slots.numel(), num_kv_heads, layout.head_size)
    if keys.shape != expected:
        raise ValueError(f"keys must have shape {expected}, got {tuple(keys.shape)}")
    _check_slots(slots, num_blocks * layout.block_size, "slots", distinct=True)
    index = _element_index(layout, num_kv_heads, slots, layout.key_offsets_of).flatten()
    kv_cache.view(-1).index_copy_(0, index, keys.to(kv_cache.dtype).reshape(-1))


def _read(
    kv_cache: torch.Tensor,
    layout: PageLayout,
    slots: torch.Tensor,
    offsets_of: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    _check_caches([kv_cache], layout)
    num_blocks, num_kv_heads = kv_cache.shape[:2]
    _check_slots(slots, num_blocks * layout.block_size, "slots")
    index = _element_index(layout, num_kv_heads, slots, offsets_of)
    return kv_cache.view(-1).index_select(0, index.flatten()).view(index.shape)


def _element_index(
    layout: PageLayout,
    num_kv_heads: int,
    slots: torch.Tensor,
    offsets_of: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Flat indices into one layer's cache viewed as ``[num_blocks * num_kv_heads * page_size]``
    (the flattening of the ``[num_blocks, num_kv_heads, page_size]`` page view).

    slots: ``[N]``; offsets_of: token-in-block ``[N]`` -> page offsets ``[N, E]``.
    Returns ``[N, num_kv_heads, E]`` int64.
    """
    block, in_page = slots // layout.block_size, slots % layout.block_size
    page = block[:, None] * num_kv_heads + torch.arange(num_kv_heads)
    return (page * layout.page_size)[:, :, None] + offsets_of(in_page)[:, None, :]


def _check_caches(kv_caches: Sequence[torch.Tensor], layout: PageLayout) -> None:
    first = kv_caches[0]
    if first.dim() != 4 or first.shape[2:] != (layout.block_size, 2 * layout.head_size):
        raise ValueError(
            f"kv cache shape {tuple(first.shape)} does not match the layout "
            f"[num_blocks, num_kv_heads, {layout.block_size}, {2 * layout.head_size}]"
        )
    for cache in kv_caches:
        if cache.shape != first.shape or cache.dtype != first.dtype:
            raise ValueError("all kv caches must share one shape and dtype")
        if not cache.is_contiguous():
            raise ValueError("kv caches must be contiguous")


def _check_slot_pair(src_slots: torch.Tensor, dst_slots: torch.Tensor) -> None:
    if src_slots.shape != dst_slots.shape:
        raise ValueError(
            f"src and dst slots differ in shape: {tuple(src_slots.shape)} vs "
            f"{tuple(dst_slots.shape)}"
        )


def _check_slots(slots: torch.Tensor, num_slots: int, name: str, distinct: bool = False) -> None:
    """Shape and dtype always; range and distinctness (host reads) under ``debug_checks``."""
    if slots.dim() != 1 or slots.dtype != torch.int64:
        raise ValueError(
            f"{name} must be a 1-D int64 tensor, got {slots.dtype} {tuple(slots.shape)}"
        )
    if slots.numel() == 0 or not debug_checks.enabled():
        return
    if int(slots.min()) < 0 or int(slots.max()) >= num_slots:
        raise ValueError(f"{name} out of range [0, {num_slots})")
    if distinct and slots.unique().numel() != slots.numel():
        raise ValueError(f"{name} must be distinct (a repeated destination has no defined value)")
