"""One request being generated: prefill, one token at a time, eviction when a generated frame
completes (and the time rebase), and the records of how each token was chosen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from packcache_vllm.core.layout import FrameLayout
from packcache_vllm.core.rope import MMRoPE, rotate, time_rebase_refusal
from packcache_vllm.reference.cache import KVCache, RebaseMode
from packcache_vllm.reference.policies import KeepPolicy, KeptHistory
from packcache_vllm.reference.weights import ReferenceConfig


class SessionModel(Protocol):
    """What a session runs on: ``ReferenceVideoModel`` (``model.py``, which makes sessions)."""

    config: ReferenceConfig
    dtype: torch.dtype
    rope: MMRoPE
    attention_probe: Callable[[int, torch.Tensor], None] | None

    def check_ids(self, token_ids: Sequence[int]) -> torch.Tensor: ...

    def run_layers(
        self,
        ids: torch.Tensor,
        index: torch.Tensor,
        cache: KVCache,
        layout: FrameLayout,
        dropped_frames: int,
        *,
        keys_rotated: bool = False,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepRecord:
    """How one generated token was chosen.

    index: its logical index. kept_indices: [M] int64 logical indices whose K/V the logits that
    chose it attended to (the input token included). dropped_frames: Δ at that time.
    """

    index: int
    kept_indices: torch.Tensor
    dropped_frames: int


@dataclass(frozen=True)
class ReferenceResult:
    """token_ids: the generated ids; steps: one record per generated id; logits: [T, V] float32
    logits that chose each id (when asked for), else None."""

    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    steps: tuple[StepRecord, ...]
    logits: torch.Tensor | None = None


@dataclass
class ReferenceSession:
    """One request being generated: its cache, its Δ, and the policy that evicts.

    Use ``prefill(prompt)`` once, then ``feed(token)`` per token; both return logits of the next
    token and then evict if a generated frame just completed.

    For a policy that ``needs_attention``, every forward adds, from the last layer's softmax, the
    attention that the tokens of the frame being generated pay to each token of the generated
    frame before it (summed over those queries, averaged over heads): when the frame completes,
    the policy gets that sum (``previous_frame_attention``) and it starts again from zero.
    """

    model: SessionModel
    layout: FrameLayout
    policy: KeepPolicy | None = None
    rebase: RebaseMode = RebaseMode.POSITIONS
    cache: KVCache = field(init=False)
    prompt_len: int = field(default=0, init=False)  # ``layout`` becomes the eviction layout
    dropped_frames: int = field(default=0, init=False)
    num_tokens: int = field(default=0, init=False)
    complete_frames: int = field(default=0, init=False)
    last_attended: torch.Tensor = field(init=False)  # [M] indices the last forward attended to
    last_dropped_frames: int = field(default=0, init=False)  # Δ of the last forward
    previous_frame_attention: torch.Tensor = field(init=False)  # [F] float32, see the docstring

    def __post_init__(self) -> None:
        self.cache = KVCache.empty(self.model.config, self.model.dtype)
        self.prompt_len = self.layout.anchor_len
        self.previous_frame_attention = torch.zeros(self.layout.tokens_per_frame)
        eviction_layout = getattr(self.policy, "eviction_layout", None)  # optional in KeepPolicy
        if eviction_layout is not None:  # sink frames join the prompt's anchors
            self.layout = eviction_layout(self.layout)
        if self.rebase is RebaseMode.ROTATE_ANCHORS and not self.model.rope.rebases_time:
            raise ValueError(
                f"RebaseMode.ROTATE_ANCHORS: {time_rebase_refusal(self.model.config.head_dim)}; "
                "use RebaseMode.POSITIONS"
            )

    def prefill(self, prompt_ids: Sequence[int], *, all_logits: bool = False) -> torch.Tensor:
        """Forward the prompt (causal over itself). Returns the last position's logits [V], or
        every position's [N, V] with ``all_logits``."""
        if self.num_tokens:
            raise ValueError("prefill must be the session's first call")
        if not prompt_ids:
            raise ValueError("the prompt must hold at least one token")
        if self.policy is not None and len(prompt_ids) != self.prompt_len:
            raise ValueError(
                f"with a policy the prefill must be the prompt: {len(prompt_ids)} tokens given, "
                f"layout.anchor_len is {self.prompt_len}"
            )
        logits = self._forward(prompt_ids, last_only=not all_logits)
        return logits if all_logits else logits[-1]

    def feed(self, token_id: int) -> torch.Tensor:
        """Forward one token at the next logical index. Returns the next token's logits [V]."""
        if not self.num_tokens:
            raise ValueError("feed needs a prefill first")
        return self._forward([token_id], last_only=True)[-1]

    def _forward(self, token_ids: Sequence[int], *, last_only: bool) -> torch.Tensor:
        ids = self.model.check_ids(token_ids)
        index = torch.arange(self.num_tokens, self.num_tokens + len(ids), dtype=torch.int64)
        with self._recording_attention(index):
            hidden = self.model.run_layers(
                ids,
                index,
                self.cache,
                self.layout,
                self._rope_shift(),
                keys_rotated=self.rebase is RebaseMode.ROTATE_ANCHORS,
            )
        self.last_attended = self.cache.indices
        self.last_dropped_frames = self.dropped_frames
        self.num_tokens += len(ids)
        self._evict_if_frame_completed()
        return self.model.logits(hidden[-1:] if last_only else hidden)

    @contextlib.contextmanager
    def _recording_attention(self, index: torch.Tensor) -> Iterator[None]:
        """During one forward of the tokens at ``index`` [N], add their last-layer attention to
        the previous generated frame (policies that ``needs_attention`` only)."""
        if not getattr(self.policy, "needs_attention", False):
            yield
            return
        columns = torch.cat([self.cache.indices, index])  # [M] what the forward attends to
        last_layer = self.model.config.num_hidden_layers - 1
        outer = self.model.attention_probe

        def probe(layer: int, probs: torch.Tensor) -> None:
            if outer is not None:
                outer(layer, probs)
            if layer == last_layer:
                self._add_previous_frame_attention(index, columns, probs)

        self.model.attention_probe = probe
        try:
            yield
        finally:
            self.model.attention_probe = outer

    def _add_previous_frame_attention(
        self, index: torch.Tensor, columns: torch.Tensor, probs: torch.Tensor
    ) -> None:
        """index: [N] the queries' logical indices; columns: [M] the keys'; probs: [H, N, M]."""
        if not self.complete_frames:
            return  # the frame being generated is the first one: no generated frame before it
        current = self.layout.num_anchor_frames + self.complete_frames
        start, end = self.layout.frame_span(current)
        previous_start, previous_end = self.layout.frame_span(current - 1)
        rows = (index >= start) & (index < end)
        cols = (columns >= previous_start) & (columns < previous_end)
        mass = probs[:, rows][:, :, cols].sum(dim=1).mean(dim=0)  # [cols]
        self.previous_frame_attention.index_add_(0, columns[cols] - previous_start, mass)

    def _rope_shift(self) -> int:
        """Δ used for the forward: the rebase is in the positions, or already in the keys."""
        return self.dropped_frames if self.rebase is RebaseMode.POSITIONS else 0

    def _evict_if_frame_completed(self) -> None:
        layout = self.layout
        complete = layout.num_complete_frames(self.num_tokens) - layout.num_anchor_frames
        if self.policy is None or complete <= self.complete_frames:
            self.complete_frames = max(complete, self.complete_frames)
            return
        self.complete_frames = complete
        history = self._kept_history(complete)
        newly_dropped = history.dropped_frames - self.dropped_frames
        if newly_dropped < 0:
            raise ValueError(
                f"dropped_frames went back from {self.dropped_frames} to {history.dropped_frames}"
            )
        self.cache.keep(self._keep_mask(history))
        if newly_dropped and self.rebase is RebaseMode.ROTATE_ANCHORS:
            self._rotate_anchor_keys(layout.t_stride * newly_dropped)
        self.dropped_frames = history.dropped_frames

    def _kept_history(self, complete: int) -> KeptHistory:
        keys = self._newest_frame_keys()
        if not getattr(self.policy, "needs_attention", False):
            return self.policy.kept_history(complete, self.layout, keys)
        attention = self.previous_frame_attention
        self.previous_frame_attention = torch.zeros_like(attention)
        return self.policy.kept_history(
            complete, self.layout, keys, previous_frame_attention=attention
        )

    def _newest_frame_keys(self) -> list[torch.Tensor]:
        """Per layer [F, KV, hd]: the pre-RoPE keys of the frame that just completed (whole).
        Under RebaseMode.ROTATE_ANCHORS the cache holds them rotated at their (never rebased)
        positions, so they are rotated back."""
        start, end = self.layout.frame_span(
            self.layout.num_anchor_frames + self.complete_frames - 1
        )
        rows = (self.cache.indices >= start) & (self.cache.indices < end)
        keys = [layer_keys[rows] for layer_keys in self.cache.keys]
        if self.rebase is not RebaseMode.ROTATE_ANCHORS:
            return keys
        cos, sin = self.model.rope.cos_sin(self.layout.positions(self.cache.indices[rows]))
        return [rotate(layer_keys, cos, -sin) for layer_keys in keys]

    def _keep_mask(self, history: KeptHistory) -> torch.Tensor:
        """[M] bool over the cache: anchors, the kept offsets of complete frames, the current frame.
        Raises ValueError when the history keeps a token that is no longer cached."""
        per_frame = self.layout.tokens_per_frame
        n = len(history.kept_offsets)
        if n != self.complete_frames:
            raise ValueError(
                f"the policy described {n} frames, but {self.complete_frames} are complete"
            )
        wanted = torch.zeros(n, per_frame, dtype=torch.bool)
        for frame, offsets in enumerate(history.kept_offsets):
            if any(not 0 <= o < per_frame for o in offsets):
                raise ValueError(f"frame {frame}: kept offsets must lie in [0, {per_frame})")
            wanted[frame, list(offsets)] = True
        rel = self.cache.indices - self.layout.anchor_len
        frame = torch.div(rel, per_frame, rounding_mode="floor")
        in_history = (rel >= 0) & (frame < n)
        keep = ~in_history
        hist_frame, hist_offset = frame[in_history], rel[in_history] - frame[in_history] * per_frame
        keep[in_history] = wanted[hist_frame, hist_offset]
        still_cached = torch.bincount(hist_frame[keep[in_history]], minlength=n)
        if not torch.equal(still_cached, wanted.sum(dim=1)):
            raise ValueError(
                "the policy keeps tokens that were already evicted (kept sets must shrink): wanted "
                f"{wanted.sum(dim=1).tolist()} per frame, cached {still_cached.tolist()}"
            )
        return keep

    def _rotate_anchor_keys(self, delta_t: int) -> None:
        anchors = self.cache.indices < self.layout.anchor_len
        for layer, keys in enumerate(self.cache.keys):
            keys = keys.clone()
            keys[anchors] = self.model.rope.rotate_time(keys[anchors], delta_t)
            self.cache.keys[layer] = keys
