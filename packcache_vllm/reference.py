"""Dense PyTorch Lumos-1 with an explicit PackCache generation loop: the oracle.

Independent of vLLM (never imports it). Loads a Lumos-1 checkpoint directory (config.json and
safetensors, any dtype; run in float32 by default) and generates greedily, one token at a time
after a prefill of the prompt, with a KV cache it evicts explicitly:

* The cache holds, per layer, every kept token's QK-normed key and its value, plus (shared by the
  layers) the token's logical index. A token's K/V, once computed, never change: they were
  computed under whatever was kept at that time, as in the engine.
* After every token, when the number n of complete generated frames grows, a ``KeepPolicy`` says
  which frame-relative offsets of each complete generated frame stay and how many of the oldest
  frames were dropped whole (Δ); everything else of those frames leaves the cache. Anchors (the
  prompt) and the current frame always stay.
* Positions are Lumos-1's MM-RoPE positions of the logical index, rebased: ``FrameLayout.positions
  (index, Δ)`` moves every generated token's t back by ``t_stride * Δ``. Two equivalent ways
  (``RebaseMode``): keys stored pre-RoPE and rotated at their current rebased positions every step
  (the definition), or keys stored rotated at un-rebased positions with the anchor keys' t channels
  rotated by ``+t_stride * Δ`` when frames are dropped (what an engine with rotated keys does).

Model (Lumos-1 = Chameleon decoder + QK-norm + GQA + MM-RoPE; lumos-checkpoint-format.md):
embed -> layers -> RMSNorm -> lm_head. A layer is pre-norm
``h = x + attn(ln1(x)); out = h + mlp(ln2(h))``, or with ``swin_norm``
``h = x + ln1(attn(x)); out = h + ln2(mlp(h))``. QK-norm is a LayerNorm over head_dim (eps 1e-5,
no affine) times/plus weights ``[model_parallel_size, head_dim]`` shared by each shard's heads.
"""

from __future__ import annotations

import enum
import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from packcache_vllm.core.layout import FrameLayout, find_frame_start
from packcache_vllm.core.lumos_schema import (
    IGNORED_PREFIXES,
    QK_NORM_EPS,
    LumosConfig,
    check_weight_shapes,
    layer_keys,
)
from packcache_vllm.core.rope import MMRoPE, rotate, time_rebase_refusal
from packcache_vllm.core.select import key_layer

ReferenceConfig = LumosConfig  # the config.json fields the forward pass uses (core.lumos_schema)


# --- config and weights -------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer. Shapes: q [H*hd, D], k/v [KV*hd, D], o [D, H*hd], *_norm_weight and
    *_norm_bias [mp, hd], gate/up [I, D], down [D, I], layernorms [D]; biases [out] or None."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    q_norm_weight: torch.Tensor
    q_norm_bias: torch.Tensor
    k_norm_weight: torch.Tensor
    k_norm_bias: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    input_layernorm: torch.Tensor
    post_attention_layernorm: torch.Tensor
    q_bias: torch.Tensor | None = None
    k_bias: torch.Tensor | None = None
    v_bias: torch.Tensor | None = None
    o_bias: torch.Tensor | None = None
    gate_bias: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None


@dataclass(frozen=True)
class ModelWeights:
    """embed [V, D], layers, norm [D], lm_head [V, D]."""

    embed: torch.Tensor
    layers: tuple[LayerWeights, ...]
    norm: torch.Tensor
    lm_head: torch.Tensor


def load_checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the directory's safetensors files, minus ``model.vqmodel.*``."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path} has no *.safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        for name, tensor in load_file(str(file)).items():
            if not name.startswith(IGNORED_PREFIXES):
                tensors[name] = tensor
    return tensors


def check_tensors(tensors: dict[str, torch.Tensor], config: ReferenceConfig) -> None:
    """ValueError unless the tensors' keys and shapes are ``core.lumos_schema.weight_shapes``."""
    check_weight_shapes({name: tuple(t.shape) for name, t in tensors.items()}, config)


def build_weights(
    tensors: dict[str, torch.Tensor], config: ReferenceConfig, dtype: torch.dtype
) -> ModelWeights:
    def get(name: str) -> torch.Tensor:
        return tensors[name].to(dtype)

    keys = layer_keys(config)
    layers = tuple(
        LayerWeights(**{attr: get(f"model.layers.{i}.{key}") for attr, key in keys.items()})
        for i in range(config.num_hidden_layers)
    )
    return ModelWeights(
        embed=get("model.embed_tokens.weight"),
        layers=layers,
        norm=get("model.norm.weight"),
        lm_head=get("lm_head.weight"),
    )


# --- the forward pass, one function per block ---------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [N, D]. Normalised in float32, cast back, then scaled (Llama/Chameleon order)."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def qk_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Lumos QK-norm. x: [N, heads, hd]; weight, bias: [mp, hd], shard s covering heads
    [s * heads/mp, (s+1) * heads/mp). Returns [N, heads, hd]."""
    heads_per_shard = x.shape[1] // weight.shape[0]
    per_head_weight = weight.repeat_interleave(heads_per_shard, dim=0)  # [heads, hd]
    per_head_bias = bias.repeat_interleave(heads_per_shard, dim=0)
    normed = F.layer_norm(x, x.shape[-1:], eps=QK_NORM_EPS)
    return normed * per_head_weight + per_head_bias


def mlp(x: torch.Tensor, w: LayerWeights) -> torch.Tensor:
    """x: [N, D] -> [N, D]: down(silu(gate(x)) * up(x))."""
    hidden = F.silu(F.linear(x, w.gate, w.gate_bias)) * F.linear(x, w.up, w.up_bias)
    return F.linear(hidden, w.down, w.down_bias)


def project_qkv(
    x: torch.Tensor, w: LayerWeights, config: ReferenceConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: [N, D] -> QK-normed, un-rotated q [N, H, hd], k [N, KV, hd], and v [N, KV, hd]."""
    n, hd = x.shape[0], config.head_dim
    q = F.linear(x, w.q, w.q_bias).view(n, config.num_attention_heads, hd)
    k = F.linear(x, w.k, w.k_bias).view(n, config.num_key_value_heads, hd)
    v = F.linear(x, w.v, w.v_bias).view(n, config.num_key_value_heads, hd)
    q = qk_norm(q, w.q_norm_weight, w.q_norm_bias)
    k = qk_norm(k, w.k_norm_weight, w.k_norm_bias)
    return q, k, v


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor,
    probe: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Softmax attention with GQA. q: [N, H, hd] and k: [M, KV, hd] (both rotated), v: [M, KV, hd],
    allowed: [N, M] bool. Returns [N, H * hd]; softmax in float32. ``probe``, if given, is called
    with the float32 probabilities [H, N, M] (calibration reads them)."""
    n, heads, hd = q.shape
    group = heads // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,mhd->hnm", q.float(), k.float()) / math.sqrt(hd)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(dim=-1)
    if probe is not None:
        probe(probs)
    probs = probs.to(v.dtype)
    return torch.einsum("hnm,mhd->nhd", probs, v).reshape(n, heads * hd)


# --- KV cache and eviction policies -------------------------------------------------------------


class RebaseMode(enum.Enum):
    """How the time rebase after dropped frames is realised (equivalent: RoPE is relative)."""

    POSITIONS = "positions"  # keys kept pre-RoPE, rotated at current rebased positions each step
    ROTATE_ANCHORS = "rotate_anchors"  # keys kept rotated un-rebased; anchors' t rotated by +t·Δ


@dataclass
class KVCache:
    """One request's kept tokens. indices: [M] int64 logical indices (ascending, shared by all
    layers); keys[l], values[l]: [M, KV, hd] per layer. Keys are QK-normed and pre-RoPE under
    RebaseMode.POSITIONS, rotated at un-rebased positions (anchors shifted by +t·Δ) otherwise."""

    indices: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @classmethod
    def empty(cls, config: ReferenceConfig, dtype: torch.dtype) -> KVCache:
        shape = (0, config.num_key_value_heads, config.head_dim)
        layers = range(config.num_hidden_layers)
        return cls(
            indices=torch.zeros(0, dtype=torch.int64),
            keys=[torch.zeros(shape, dtype=dtype) for _ in layers],
            values=[torch.zeros(shape, dtype=dtype) for _ in layers],
        )

    def __len__(self) -> int:
        return self.indices.numel()

    def keep(self, mask: torch.Tensor) -> None:
        """Keep only the tokens where mask ([M] bool) is True."""
        self.indices = self.indices[mask]
        self.keys = [k[mask] for k in self.keys]
        self.values = [v[mask] for v in self.values]


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
    then counted from the first one after the sinks.
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
    ) -> KeptHistory:
        counts = tuple(self.config.keep_counts(num_complete_frames, layout.tokens_per_frame))
        if len(counts) != num_complete_frames:
            raise ValueError(
                f"keep_counts({num_complete_frames}, ...) returned {len(counts)} counts"
            )
        orders = self._orders(num_complete_frames, layout, newest_frame_keys)
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
        self, num_complete_frames: int, layout: FrameLayout, newest_frame_keys
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
            return self._order_previous_frame(layout, keys)
        order = self.selector.order(layout.rows, layout.cols, keys).to(torch.int64).cpu()
        check_permutation(order, per_frame)
        self._frame_orders.append(order)
        return self._frame_orders

    def _order_previous_frame(self, layout: FrameLayout, keys: torch.Tensor) -> list[torch.Tensor]:
        """A selector that compares a frame with the next one orders the previous frame now,
        from its keys and the newest frame's (``keys``, [F, KV, hd]); the newest frame keeps
        its raster order until its successor completes (it is whole until then)."""
        if self._frame_orders:
            previous = self._newest_keys
            order = self.selector.order(layout.rows, layout.cols, previous, newer_keys=keys)
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


# --- generation ---------------------------------------------------------------------------------


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
    """

    model: ReferenceVideoModel
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

    def __post_init__(self) -> None:
        self.cache = KVCache.empty(self.model.config, self.model.dtype)
        self.prompt_len = self.layout.anchor_len
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
        history = self.policy.kept_history(complete, layout, self._newest_frame_keys())
        newly_dropped = history.dropped_frames - self.dropped_frames
        if newly_dropped < 0:
            raise ValueError(
                f"dropped_frames went back from {self.dropped_frames} to {history.dropped_frames}"
            )
        self.cache.keep(self._keep_mask(history))
        if newly_dropped and self.rebase is RebaseMode.ROTATE_ANCHORS:
            self._rotate_anchor_keys(layout.t_stride * newly_dropped)
        self.dropped_frames = history.dropped_frames

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


class ReferenceVideoModel:
    """Lumos-1 in plain PyTorch (no vLLM), with an explicit PackCache generation loop."""

    def __init__(
        self, config: ReferenceConfig, weights: ModelWeights, dtype: torch.dtype = torch.float32
    ) -> None:
        self.config = config
        self.weights = weights
        self.dtype = dtype
        self.rope = MMRoPE(config.head_dim, config.rope_theta)
        # Called per layer of every forward with (layer, probabilities [H, N, M]); None: off.
        self.attention_probe: Callable[[int, torch.Tensor], None] | None = None

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype = torch.float32
    ) -> ReferenceVideoModel:
        """Load a Lumos-1 checkpoint directory (config.json + *.safetensors) and cast to dtype."""
        path = Path(path)
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ValueError(f"{path} has no config.json")
        config = ReferenceConfig.from_dict(json.loads(config_path.read_text()))
        tensors = load_checkpoint_tensors(path)
        check_tensors(tensors, config)
        return cls(config, build_weights(tensors, config, dtype), dtype)

    # --- layout and inputs ----------------------------------------------------------------------
    def layout_for(self, prompt_ids: Sequence[int]) -> FrameLayout:
        """The FrameLayout of a prompt on this model's frame grid (video_rows x video_cols)."""
        prompt = list(prompt_ids)
        return FrameLayout(
            find_frame_start(prompt), len(prompt), self.config.video_rows, self.config.video_cols
        )

    def check_ids(self, token_ids: Sequence[int]) -> torch.Tensor:
        ids = torch.as_tensor(list(token_ids), dtype=torch.int64)
        bad = (ids < 0) | (ids >= self.config.vocab_size)
        if bad.any():
            raise ValueError(
                f"token ids must lie in [0, {self.config.vocab_size}), got {ids[bad].tolist()[:8]}"
            )
        return ids

    # --- forward --------------------------------------------------------------------------------
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
    ) -> torch.Tensor:
        """Forward new tokens ``ids`` [N] at logical ``index`` [N] (ascending, after the cache)
        through every layer, appending their K/V to ``cache``. Positions are rebased by
        ``dropped_frames``; ``keys_rotated``: the cache holds rotated keys (else pre-RoPE keys,
        rotated here at their current positions). ``allowed``: [N, M] bool over the M = cached +
        N keys each new token may attend to; None: causal by logical index. Returns the
        final-normed hidden states [N, D]."""
        all_index = torch.cat([cache.indices, index])
        if allowed is None:
            allowed = all_index[None, :] <= index[:, None]  # causal by logical index
        if allowed.shape != (index.numel(), all_index.numel()):
            raise ValueError(
                f"allowed must be [{index.numel()}, {all_index.numel()}] (new x cached + new "
                f"tokens), got {list(allowed.shape)}"
            )
        step = StepPositions(
            query=self.rope.cos_sin(layout.positions(index, dropped_frames)),
            keys=self.rope.cos_sin(layout.positions(all_index, dropped_frames)),
            allowed=allowed,
            keys_rotated=keys_rotated,
        )
        x = self.weights.embed[ids]
        for layer, w in enumerate(self.weights.layers):
            x = self._layer(x, w, cache, layer, step)
        cache.indices = all_index
        return rms_norm(x, self.weights.norm, self.config.rms_norm_eps)

    def _layer(
        self, x: torch.Tensor, w: LayerWeights, cache: KVCache, layer: int, step: StepPositions
    ) -> torch.Tensor:
        eps = self.config.rms_norm_eps
        if self.config.swin_norm:
            attn = self._attention(x, w, cache, layer, step)
            h = x + rms_norm(attn, w.input_layernorm, eps)
            return h + rms_norm(mlp(h, w), w.post_attention_layernorm, eps)
        h = x + self._attention(rms_norm(x, w.input_layernorm, eps), w, cache, layer, step)
        return h + mlp(rms_norm(h, w.post_attention_layernorm, eps), w)

    def _attention(
        self, x: torch.Tensor, w: LayerWeights, cache: KVCache, layer: int, step: StepPositions
    ) -> torch.Tensor:
        """x: [N, D] -> [N, D]. Appends the new tokens' keys and values to the layer's cache."""
        q, k, v = project_qkv(x, w, self.config)
        n = x.shape[0]
        cos_k, sin_k = step.keys
        if step.keys_rotated:
            k = rotate(k, cos_k[-n:], sin_k[-n:])
        cache.keys[layer] = keys = torch.cat([cache.keys[layer], k])
        cache.values[layer] = values = torch.cat([cache.values[layer], v])
        if not step.keys_rotated:
            keys = rotate(keys, cos_k, sin_k)
        probe = self.attention_probe
        probe = None if probe is None else functools.partial(probe, layer)
        out = attend(rotate(q, *step.query), keys, values, step.allowed, probe)
        return F.linear(out, w.o, w.o_bias)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, D] final-normed -> [N, V] float32 logits."""
        return F.linear(hidden, self.weights.lm_head).float()

    # --- entry points ---------------------------------------------------------------------------
    def session(
        self,
        layout: FrameLayout,
        policy: KeepPolicy | None = None,
        rebase: RebaseMode = RebaseMode.POSITIONS,
    ) -> ReferenceSession:
        return ReferenceSession(self, layout, policy, rebase)

    def causal_logits(self, token_ids: Sequence[int], layout: FrameLayout) -> torch.Tensor:
        """One full-sequence causal forward without eviction: [N, V] float32 logits, row i
        predicting token i + 1."""
        return self.session(layout).prefill(token_ids, all_logits=True)

    def generate(
        self,
        prompt_ids: Sequence[int],
        layout: FrameLayout,
        num_new_tokens: int,
        policy: KeepPolicy | None = None,
        *,
        rebase: RebaseMode = RebaseMode.POSITIONS,
        return_logits: bool = False,
    ) -> ReferenceResult:
        """Greedy (argmax over the full vocabulary) generation of ``num_new_tokens`` after
        ``prompt_ids``, evicting with ``policy`` (None: keep everything)."""
        if layout.anchor_len != len(prompt_ids):
            raise ValueError(
                f"layout.anchor_len ({layout.anchor_len}) must equal the prompt length "
                f"({len(prompt_ids)})"
            )
        if num_new_tokens < 0:
            raise ValueError(f"num_new_tokens must be >= 0, got {num_new_tokens}")
        session = self.session(layout, policy, rebase)
        logits = session.prefill(prompt_ids)
        tokens: list[int] = []
        steps: list[StepRecord] = []
        chosen_logits: list[torch.Tensor] = []
        for step in range(num_new_tokens):
            tokens.append(int(logits.argmax()))
            index = len(prompt_ids) + step
            steps.append(StepRecord(index, session.last_attended, session.last_dropped_frames))
            if return_logits:
                chosen_logits.append(logits)
            if step + 1 < num_new_tokens:
                logits = session.feed(tokens[-1])
        return ReferenceResult(
            prompt_ids=tuple(prompt_ids),
            token_ids=tuple(tokens),
            steps=tuple(steps),
            logits=self._stack_logits(chosen_logits) if return_logits else None,
        )

    def _stack_logits(self, rows: list[torch.Tensor]) -> torch.Tensor:
        """[T, V] float32 (T may be 0)."""
        if not rows:
            return torch.zeros(0, self.config.vocab_size)
        return torch.stack(rows)


@dataclass(frozen=True)
class StepPositions:
    """Per-forward position data. query: (cos, sin) [N, hd] of the new tokens; keys: (cos, sin)
    [M, hd] of every attended key (cached, then new); allowed: [N, M] bool causal mask;
    keys_rotated: the cache holds rotated keys (RebaseMode.ROTATE_ANCHORS)."""

    query: tuple[torch.Tensor, torch.Tensor]
    keys: tuple[torch.Tensor, torch.Tensor]
    allowed: torch.Tensor
    keys_rotated: bool
