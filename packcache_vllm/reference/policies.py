"""Eviction policies of the reference: what each keeps of the generated history
(``KeptHistory``) when a frame completes; the full cache and PackCache's budget with a selector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from packcache_vllm.core.layout import FrameLayout
from packcache_vllm.core.select import key_layer


@dataclass(frozen=True)
class KeptHistory:
    """What a policy keeps of the generated history once ``n`` frames are complete.

    dropped_frames: how many of the oldest generated frames are dropped whole (Δ, which rebases
    time). kept_offsets: one set per complete generated frame, oldest -> newest (length n), of the
    frame-relative offsets (0 = its <break>, F-1 = its <eoss>) that stay; the first
    ``dropped_frames`` sets are empty.
    """

    dropped_frames: int
    kept_offsets: tuple[frozenset[int], ...]

    def __post_init__(self) -> None:
        if not 0 <= self.dropped_frames <= len(self.kept_offsets):
            raise ValueError(
                f"dropped_frames must be in [0, {len(self.kept_offsets)}] (the complete frames), "
                f"got {self.dropped_frames}"
            )
        if any(self.kept_offsets[: self.dropped_frames]):
            raise ValueError(
                f"the {self.dropped_frames} frames dropped whole must keep no offsets, got "
                f"{[sorted(s) for s in self.kept_offsets[: self.dropped_frames]]}"
            )


class KeepPolicy(Protocol):
    """Which part of the generated history stays (see KeptHistory).

    Asked each time a generated frame completes (the count grows by one per call), with the keys
    of the frame that just completed: one [F, KV, hd] QK-normed pre-RoPE key tensor per layer.
    Kept sets may only shrink
    over time: evicted KV is gone.

    Optionally ``eviction_layout(layout) -> FrameLayout``: the layout the session evicts by, with
    the policy's sink frames among the anchors (kept whole, rebased with the prompt); frames are
    then counted from the first one after the sinks. Optionally ``needs_attention`` (True): the
    session then also passes ``previous_frame_attention``, [F] float32: the attention the frame
    that just completed paid to each token of the frame before it (see ``ReferenceSession``).
    """

    def kept_history(
        self,
        num_complete_frames: int,
        layout: FrameLayout,
        newest_frame_keys: Sequence[torch.Tensor],
    ) -> KeptHistory: ...


class NoEviction:
    """The full cache: every token of every frame stays."""

    def kept_history(
        self,
        num_complete_frames: int,
        layout: FrameLayout,
        newest_frame_keys: Sequence[torch.Tensor] = (),
    ) -> KeptHistory:
        whole = frozenset(range(layout.tokens_per_frame))
        return KeptHistory(0, (whole,) * num_complete_frames)


class PackCachePolicy:
    """PackCache's budget (``core.budget.PackCacheConfig``: ``keep_counts``, ``dropped_frames``,
    ``selector``) with a selector's priority order (``core.select``): a frame keeps the first
    ``keep_counts(n, F)[frame]`` offsets of its order, so its kept sets are nested as it ages.

    orders: None (the config's selector) or one explicit permutation of the F frame offsets used
    for every frame. A selector that reads keys (``needs_keys``) orders each frame once, when it
    completes, from that frame's keys in layer ``key_layer`` (None: the layer the engine reads,
    ``core.select.key_layer``); such a policy remembers the orders of one request, so use one
    instance per request.
    """

    def __init__(
        self,
        config,
        orders: Sequence[int] | torch.Tensor | None = None,
        *,
        key_layer: int | None = None,
    ) -> None:
        self.config = config
        self.key_layer = key_layer
        self._explicit = None if orders is None else torch.as_tensor(orders).to(torch.int64)
        self._selector = None
        self._frame_orders: list[torch.Tensor] = []  # per generated frame (key-reading selectors)
        self._newest_keys: torch.Tensor | None = None  # the newest frame's, [F, KV, hd]

    @property
    def selector(self):
        """The config's ``make_selector()`` (``core.budget.PackCacheConfig`` and its policy
        subclasses), or the selector its ``selector`` names (a plain budget-like config)."""
        if self._selector is None:
            from packcache_vllm.core.select import make_selector

            make = getattr(self.config, "make_selector", None)
            self._selector = make() if make is not None else make_selector(self.config.selector)
        return self._selector

    @property
    def needs_attention(self) -> bool:
        """Whether the selector ranks a frame by the attention the next frame paid to it."""
        return self._explicit is None and self.selector.needs_attention

    def eviction_layout(self, layout: FrameLayout) -> FrameLayout:
        """The layout eviction sees: a policy's sink frames join the prompt's anchors (a config
        without ``eviction_layout`` has none)."""
        of_config = getattr(self.config, "eviction_layout", None)
        return of_config(layout) if of_config is not None else layout

    def kept_history(
        self,
        num_complete_frames: int,
        layout: FrameLayout,
        newest_frame_keys: Sequence[torch.Tensor] = (),
        previous_frame_attention: torch.Tensor | None = None,
    ) -> KeptHistory:
        counts = tuple(self.config.keep_counts(num_complete_frames, layout.tokens_per_frame))
        if len(counts) != num_complete_frames:
            raise ValueError(
                f"keep_counts({num_complete_frames}, ...) returned {len(counts)} counts"
            )
        orders = self._orders(
            num_complete_frames, layout, newest_frame_keys, previous_frame_attention
        )
        if self.selector.needs_newer_frame and counts and counts[-1] != layout.tokens_per_frame:
            raise ValueError(
                f"selector {self.selector.name!r} orders a frame when the next one completes, "
                f"so the newest frame must stay whole; the budget keeps {counts[-1]} of "
                f"{layout.tokens_per_frame}"
            )
        kept = tuple(
            frozenset(order[:count].tolist()) for order, count in zip(orders, counts, strict=True)
        )
        return KeptHistory(self.config.dropped_frames(num_complete_frames), kept)

    def _orders(
        self,
        num_complete_frames: int,
        layout: FrameLayout,
        newest_frame_keys,
        previous_frame_attention: torch.Tensor | None,
    ) -> list[torch.Tensor]:
        """One [F] priority permutation per complete generated frame, oldest -> newest."""
        per_frame = layout.tokens_per_frame
        if self._explicit is not None or not self.selector.needs_keys:
            order = self._explicit
            if order is None:
                order = self.selector.order(layout.rows, layout.cols).to(torch.int64).cpu()
            check_permutation(order, per_frame)
            return [order] * num_complete_frames
        if num_complete_frames != len(self._frame_orders) + 1:
            raise ValueError(
                f"a key-reading PackCachePolicy serves one request, frame by frame: it has "
                f"ordered {len(self._frame_orders)} frames and was asked about "
                f"{num_complete_frames}; make a new policy per request"
            )
        layer = key_layer(len(newest_frame_keys)) if self.key_layer is None else self.key_layer
        if not 0 <= layer < len(newest_frame_keys):
            raise ValueError(
                f"key_layer {layer} is out of range: the model has {len(newest_frame_keys)} layers"
            )
        keys = newest_frame_keys[layer]
        if self.selector.needs_newer_frame:
            return self._order_previous_frame(layout, keys, previous_frame_attention)
        order = self.selector.order(layout.rows, layout.cols, keys).to(torch.int64).cpu()
        check_permutation(order, per_frame)
        self._frame_orders.append(order)
        return self._frame_orders

    def _order_previous_frame(
        self, layout: FrameLayout, keys: torch.Tensor, attention: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """A selector that compares a frame with the next one orders the previous frame now,
        from its keys and the newest frame's (``keys``, [F, KV, hd]) or from the attention the
        newest frame paid to it (``attention``, [F]); the newest frame keeps its raster order
        until its successor completes (it is whole until then)."""
        if self._frame_orders:
            previous = self._newest_keys
            order = self.selector.order(
                layout.rows, layout.cols, previous, newer_keys=keys, attention=attention
            )
            order = order.to(torch.int64).cpu()
            check_permutation(order, layout.tokens_per_frame)
            self._frame_orders[-1] = order
        self._frame_orders.append(torch.arange(layout.tokens_per_frame))
        self._newest_keys = keys
        return self._frame_orders


def check_permutation(order: torch.Tensor, size: int) -> None:
    if order.shape != (size,) or not torch.equal(order.sort().values, torch.arange(size)):
        raise ValueError(
            f"a selector order must be a permutation of the {size} frame offsets, got shape "
            f"{tuple(order.shape)}"
        )
