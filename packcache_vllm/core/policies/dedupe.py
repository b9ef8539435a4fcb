"""dedupe: training-free temporal dedupe. A cell whose key is near-identical to the key of the
same cell one frame later (cosine similarity >= ``threshold`` in the last layer, the layer
``key_norm`` reads) carries little the newer frame does not: it is evicted first. The budget is
PackCache's (``PackCacheConfig``: window, decay, min_keep).

After the redundancy pruning of video tokens across frames (static background, a slow pan):
e.g. RLT / "run-length tokenization" (Choudhury et al., arXiv 2411.05222) drops patches equal to
the previous frame's before the model sees them; here the decision is on cached keys, after the
fact, and only orders which tokens a thinned frame gives up first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from packcache_vllm.core.budget import PackCacheConfig, check_fraction_knob
from packcache_vllm.core.layout import NUM_LEADING_MARKERS
from packcache_vllm.core.select import Selector, check_frame_keys, uniform_order

DEDUPE_THRESHOLD = 0.95


@dataclass(frozen=True)
class DedupeSelector(Selector):
    """Markers, then the cells that differ from the newer frame, then the near-duplicates, each
    group in the uniform selector's spatial spread.

    Parameters
    ----------
    threshold : a cell is a near-duplicate when the cosine similarity of its key and the newer
        frame's key at the same cell, averaged over KV heads, is >= threshold.
    """

    threshold: float = DEDUPE_THRESHOLD

    name: ClassVar[str] = "dedupe"
    needs_keys: ClassVar[bool] = True
    needs_newer_frame: ClassVar[bool] = True

    def order(
        self, rows: int, cols: int, keys=None, newer_keys=None, attention=None
    ) -> torch.Tensor:
        """keys, newer_keys: [F, num_kv_heads, head_dim] at one rotary time. Returns [F] int64
        on keys' device."""
        check_frame_keys(self.name, "the frame's keys", rows, cols, keys)
        check_frame_keys(self.name, "the newer frame's keys", rows, cols, newer_keys)
        spread = torch.tensor(uniform_order(rows, cols), dtype=torch.int64, device=keys.device)
        markers, cells = spread[: NUM_LEADING_MARKERS + 1], spread[NUM_LEADING_MARKERS + 1 :]
        duplicate = self.near_duplicates(keys[cells], newer_keys[cells])  # [cells]
        return torch.cat([markers, cells[~duplicate], cells[duplicate]])

    def near_duplicates(self, keys: torch.Tensor, newer_keys: torch.Tensor) -> torch.Tensor:
        """keys, newer_keys: [N, num_kv_heads, head_dim] -> [N] bool."""
        similarity = torch.nn.functional.cosine_similarity(
            keys.float(), newer_keys.to(keys.device).float(), dim=-1
        )  # [N, num_kv_heads]
        return similarity.mean(dim=-1) >= self.threshold


@dataclass(frozen=True)
class DedupePolicy(PackCacheConfig):
    """PackCache's budget; a thinned frame gives up its near-duplicates of the newer frame
    first (``DedupeSelector``). Knobs: window, decay, min_keep (as ``packcache``), threshold, a
    number in (0, 1]."""

    threshold: float = DEDUPE_THRESHOLD

    def __post_init__(self) -> None:
        threshold = check_fraction_knob("dedupe threshold", self.threshold)
        object.__setattr__(self, "threshold", threshold)
        super().__post_init__()

    @classmethod
    def build(cls, threshold: float = DEDUPE_THRESHOLD, **budget: object) -> DedupePolicy:
        """The ``packcache`` preset with ``budget``'s knobs (min_keep following the window as
        there), deduplicating at ``threshold``."""
        base = PackCacheConfig.preset("packcache", **budget)
        return cls(base.window, base.decay, base.min_keep, threshold=threshold)

    def make_selector(self) -> DedupeSelector:
        return DedupeSelector(self.threshold)
