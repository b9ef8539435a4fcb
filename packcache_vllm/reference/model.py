"""``ReferenceVideoModel``: Lumos-1 in plain PyTorch, its layers over a request's KV cache at
rebased MM-RoPE positions, and greedy generation.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from packcache_vllm.core.layout import FrameLayout, find_frame_start
from packcache_vllm.core.rope import MMRoPE, rotate
from packcache_vllm.reference.cache import KVCache, RebaseMode
from packcache_vllm.reference.forward import attend, mlp, project_qkv, rms_norm
from packcache_vllm.reference.policies import KeepPolicy
from packcache_vllm.reference.session import ReferenceResult, ReferenceSession, StepRecord
from packcache_vllm.reference.weights import (
    LayerWeights,
    ModelWeights,
    ReferenceConfig,
    build_weights,
    check_tensors,
    load_checkpoint_tensors,
)


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
