"""salience: a thinned frame keeps the tokens the model attended to most. When a frame's
successor completes, the worker measures the attention the successor's queries paid to each of
the frame's tokens (last layer, softmax over everything those queries saw, summed over the
successor's queries, averaged over heads); the frame gives up its least-attended cells first.
The budget is PackCache's (``PackCacheConfig``: window, decay, min_keep).

After SnapKV (Li et al., arXiv 2404.14469): an observation window of the newest queries votes
for the cached tokens worth keeping. Here the window is the whole next frame (its F queries),
the vote is taken once per frame, and it only orders which tokens the frame gives up first as
it ages; the four frame markers always stay first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.layout import NUM_LEADING_MARKERS, tokens_per_frame
from packcache_vllm.core.select import Selector, check_grid, marker_offsets


@dataclass(frozen=True)
class SalienceSelector(Selector):
    """Markers, then cells by descending attention from the next frame; ties by lower offset."""

    name: ClassVar[str] = "salience"
    needs_keys: ClassVar[bool] = True
    needs_newer_frame: ClassVar[bool] = True
    needs_attention: ClassVar[bool] = True

    def order(
        self, rows: int, cols: int, keys=None, newer_keys=None, attention=None
    ) -> torch.Tensor:
        """attention: [F] float (see ``Selector.order``). Returns [F] int64 on its device."""
        check_grid(rows, cols)
        frame_len = tokens_per_frame(rows, cols)
        if attention is None or tuple(attention.shape) != (frame_len,):
            got = "None" if attention is None else list(attention.shape)
            raise ValueError(
                f"selector {self.name!r} needs the attention paid to the frame's tokens, of "
                f"shape [F] with F = {frame_len} ({rows} rows x {cols} cols), got {got}"
            )
        device = attention.device
        cells = torch.arange(NUM_LEADING_MARKERS, frame_len - 1, device=device)
        by_attention = torch.sort(attention[cells].float(), descending=True, stable=True).indices
        markers = torch.tensor(marker_offsets(rows, cols), dtype=torch.int64, device=device)
        return torch.cat([markers, cells[by_attention]])


@dataclass(frozen=True)
class SaliencePolicy(PackCacheConfig):
    """PackCache's budget; a thinned frame keeps the cells the next frame attended to most
    (``SalienceSelector``). Knobs: window, decay, min_keep (as ``packcache``)."""

    @classmethod
    def build(cls, **budget: object) -> SaliencePolicy:
        """The ``packcache`` preset with ``budget``'s knobs (min_keep following the window as
        there)."""
        base = PackCacheConfig.preset("packcache", **budget)
        return cls(base.window, base.decay, base.min_keep)

    def make_selector(self) -> SalienceSelector:
        return SalienceSelector()
