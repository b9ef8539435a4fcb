"""One interface over the two ways a backend arranges a token inside a KV page.

* ``PlainRowAccess``: each token is one row ``[K | V]`` (vLLM's GPU backends; ``token_rows``),
  any strides, any device; index tensors of one entry per token.
* ``LearnedPageAccess``: the backend permutes elements inside the page (CPU_ATTN's kernel
  layouts; ``kv_layout``), contiguous CPU caches; index tensors of one entry per element.

``kv_access_for`` picks from the order learned through the backend's own write path, so a
backend is never assumed to be plain: one that is neither is refused with its name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from packcache_vllm.engine import kv_layout, token_rows
from packcache_vllm.engine.kv_layout import PageLayout


class KVAccess(Protocol):
    device: torch.device

    def move(
        self, kv_caches: Sequence[torch.Tensor], src_slots: torch.Tensor, dst_slots: torch.Tensor
    ) -> None:
        """Copy K and V of ``src_slots`` ``[M]`` to ``dst_slots`` ``[M]`` in every layer."""

    def read_keys(self, kv_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``[N]`` slots -> ``[N, num_kv_heads, head_size]`` keys (a copy)."""

    def write_keys(self, kv_cache: torch.Tensor, slots: torch.Tensor, keys: torch.Tensor) -> None:
        """Overwrite the keys of ``[N]`` distinct slots with ``[N, num_kv_heads, head_size]``."""


@dataclass(frozen=True)
class PlainRowAccess:
    device: torch.device

    def move(self, kv_caches, src_slots, dst_slots) -> None:
        token_rows.move_token_rows(kv_caches, src_slots, dst_slots)

    def read_keys(self, kv_cache, slots):
        return token_rows.read_key_rows(kv_cache, slots)

    def write_keys(self, kv_cache, slots, keys) -> None:
        token_rows.write_key_rows(kv_cache, slots, keys)


@dataclass(frozen=True)
class LearnedPageAccess:
    layout: PageLayout
    device: torch.device = torch.device("cpu")

    def move(self, kv_caches, src_slots, dst_slots) -> None:
        kv_layout.move_tokens(kv_caches, self.layout, src_slots, dst_slots)

    def read_keys(self, kv_cache, slots):
        return kv_layout.read_keys(kv_cache, self.layout, slots)

    def write_keys(self, kv_cache, slots, keys) -> None:
        kv_layout.write_keys(kv_cache, self.layout, slots, keys)


def kv_access_for(layout: PageLayout, device: torch.device, backend: str) -> KVAccess:
    """The access for a backend whose learned page order is ``layout``; its caches live on
    ``device``. Raises ValueError for a permuted page off the CPU (no such backend in vLLM 0.32)."""
    if layout.is_plain_rows():
        return PlainRowAccess(device)
    if device.type == "cpu":
        return LearnedPageAccess(layout)
    raise ValueError(
        f"PackCache cannot pack the KV cache of attention backend {backend} on {device}: its "
        "pages are neither plain [K | V] token rows nor a CPU layout"
    )
