"""A trainable Lumos-1 (batched, differentiable) on the reference model's math, and its writer.

The forward pass is the dense reference's (``reference/``): ``rms_norm``, ``project_qkv``
(QK-norm), MM-RoPE ``rotate`` at ``video_positions``, GQA softmax attention, ``mlp``, pre-norm
layers. Only the attention call differs (a batched ``scaled_dot_product_attention`` with a
[B, N, N] mask instead of ``attend`` over one sequence); ``tests/unit/test_video_train.py`` checks
both agree.

Only the ids the data uses are trained (``ActiveVocab``: bytes, markers, palette codes). The other
~65k ids of Lumos-1's vocabulary share one ``lm_head`` row, so the training loss is the exact
full-vocabulary cross-entropy (their logits are equal: ``log(num_rest)`` is added once), and in
the saved checkpoint their embeddings are zero and their ``lm_head`` rows that shared row. The
file stays Lumos-1's full format (vocab 65536 + palette) and compresses to little in git.
``TrainableLumos.from_pretrained`` is the writer's inverse (fine-tuning: ``train --init``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from packcache_vllm.core.layout import LUMOS_TOKENS, video_positions
from packcache_vllm.core.lumos_schema import LAYER_KEYS, LumosConfig, layer_field_shapes
from packcache_vllm.core.rope import MMRoPE, rotate
from packcache_vllm.model.factory import (
    SUPPORTED_DTYPES,
    TinyLumosSpec,
    lumos_config,
    make_tokenizer,
)
from packcache_vllm.reference import (
    LayerWeights,
    check_tensors,
    load_checkpoint_tensors,
    mlp,
    project_qkv,
    rms_norm,
)


@dataclass(frozen=True)
class ActiveVocab:
    """The token ids that get their own embedding and lm_head rows, ascending."""

    ids: tuple[int, ...]
    vocab_size: int

    def __post_init__(self) -> None:
        if list(self.ids) != sorted(set(self.ids)):
            raise ValueError("ActiveVocab.ids must be ascending and distinct")
        if not self.ids or self.ids[0] < 0 or self.ids[-1] >= self.vocab_size:
            raise ValueError(f"ActiveVocab.ids must lie in [0, {self.vocab_size})")

    @property
    def num_rest(self) -> int:
        return self.vocab_size - len(self.ids)

    def compact(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids: any shape of full-vocabulary ids -> same shape of row indices in [0, A)."""
        ids = torch.tensor(self.ids, dtype=torch.int64)
        token_ids = token_ids.contiguous()
        rows = torch.searchsorted(ids, token_ids)
        if (rows >= len(self.ids)).any() or (ids[rows.clamp(max=len(ids) - 1)] != token_ids).any():
            bad = token_ids[~torch.isin(token_ids, ids)]
            raise ValueError(
                f"token ids outside the active vocabulary: {bad.unique()[:8].tolist()}"
            )
        return rows


class TrainableLumos(nn.Module):
    """Lumos-1 parameters over an ``ActiveVocab``, in float32.

    Parameter names: ``embed`` [A, D], ``lm_head`` [A, D], ``lm_head_rest`` [D], ``norm`` [D],
    and ``layers.{i}.{LayerWeights field}`` with LayerWeights' shapes.
    """

    def __init__(self, spec: TinyLumosSpec, vocab: ActiveVocab, seed: int = 0) -> None:
        super().__init__()
        if vocab.vocab_size != spec.vocab_size:
            raise ValueError(f"vocab size {vocab.vocab_size} != the spec's {spec.vocab_size}")
        self.spec = spec
        self.vocab = vocab
        self.config = spec.schema
        self.rope = MMRoPE(self.config.head_dim, self.config.rope_theta)
        self.init_parameters(torch.Generator().manual_seed(seed))

    def init_parameters(self, gen: torch.Generator) -> None:
        spec, d, num_active = self.spec, self.spec.hidden_size, len(self.vocab.ids)
        shapes = layer_field_shapes(self.config)
        out_scale = 1 / math.sqrt(2 * spec.num_hidden_layers)

        def param(shape, std: float = 0.0, fill: float = 0.0) -> nn.Parameter:
            return nn.Parameter(torch.randn(shape, generator=gen) * std + fill)

        self.embed = param((num_active, d), 1.0)
        self.lm_head = param((num_active, d), 0.02)
        self.lm_head_rest = param((d,))
        self.norm = param((d,), fill=1.0)
        self.layers = nn.ModuleList()
        for _ in range(spec.num_hidden_layers):
            layer = nn.ParameterDict()
            for name, shape in shapes.items():
                if name.endswith(("layernorm", "norm_weight")):
                    layer[name] = param(shape, fill=1.0)
                elif name.endswith("norm_bias"):
                    layer[name] = param(shape)
                else:
                    scale = out_scale if name in ("o", "down") else 1.0
                    layer[name] = param(shape, scale / math.sqrt(shape[1]))
            self.layers.append(layer)

    def layer_weights(self, layer: int) -> LayerWeights:
        return LayerWeights(**dict(self.layers[layer].items()))

    def forward(
        self,
        ids: torch.Tensor,
        frame_start: torch.Tensor,
        allowed: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids: [B, N] full-vocabulary ids of B sequences; frame_start: [B] int64 index of each
        sequence's first <racm3:break>; allowed: [B, N, N] bool attention mask (None: causal);
        index: [B, N] int64 logical index of every token, which sets its MM-RoPE position (None:
        0..N-1; AR-DF sequences repeat a frame's indices, see ``train.ardf``). Returns
        final-normed hidden states [B, N, D]."""
        b, n = ids.shape
        if index is None:
            index = torch.arange(n).repeat(b)
        elif index.shape != ids.shape:
            raise ValueError(f"index must be {list(ids.shape)} like ids, got {list(index.shape)}")
        else:
            index = index.to(torch.int64).reshape(-1)
        starts = frame_start.to(torch.int64).repeat_interleave(n)
        positions = video_positions(index, starts, self.config.video_rows, self.config.video_cols)
        cos, sin = self.rope.cos_sin(positions)  # [B*N, hd] each
        x = self.embed[self.vocab.compact(ids)]  # [B, N, D]
        mask = None if allowed is None else additive_mask(allowed)[:, None]
        for layer in range(len(self.layers)):
            x = self.layer_forward(x, self.layer_weights(layer), cos, sin, mask)
        return rms_norm(x, self.norm, self.config.rms_norm_eps)

    def layer_forward(self, x, w: LayerWeights, cos, sin, mask) -> torch.Tensor:
        """x: [B, N, D]; cos, sin: [B*N, hd]; mask: [B, 1, N, N] float (0 / -inf) or None
        (causal)."""
        eps = self.config.rms_norm_eps
        h = x + self.attention(rms_norm(x, w.input_layernorm, eps), w, cos, sin, mask)
        return h + mlp(rms_norm(h, w.post_attention_layernorm, eps), w)

    def attention(self, x, w: LayerWeights, cos, sin, mask) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = project_qkv(x.reshape(b * n, d), w, self.config)  # [B*N, heads, hd]
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        group = self.config.num_attention_heads // self.config.num_key_value_heads

        def heads_first(t: torch.Tensor) -> torch.Tensor:  # [B*N, h, hd] -> [B, H, N, hd]
            t = t.view(b, n, t.shape[1], t.shape[2]).transpose(1, 2)
            return t if t.shape[1] == q.shape[1] else t.repeat_interleave(group, dim=1)

        out = F.scaled_dot_product_attention(
            heads_first(q), heads_first(k), heads_first(v), attn_mask=mask, is_causal=mask is None
        )
        return F.linear(out.transpose(1, 2).reshape(b, n, -1), w.o)

    def active_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [..., D] -> [..., A + 1]: the active ids' logits, then the log-sum-exp of all
        the other ids (they share one row, so it is their logit + log(num_rest))."""
        rest = hidden @ self.lm_head_rest + math.log(self.vocab.num_rest)
        return torch.cat([F.linear(hidden, self.lm_head), rest[..., None]], dim=-1)

    def visual_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [..., D] -> [..., V - visual_base] logits of the visual ids (column k: code k),
        the lm_head restricted to its visual rows as ``reference_ardf.visual_logits`` reads it."""
        return F.linear(hidden, self.lm_head[self.visual_rows()])

    def visual_rows(self) -> torch.Tensor:
        """[V - visual_base] int64 rows of the visual ids in ``embed`` / ``lm_head``."""
        visual = torch.arange(LUMOS_TOKENS.visual_base, self.vocab.vocab_size)
        return self.vocab.compact(visual)

    @classmethod
    def from_pretrained(cls, path: str | Path, vocab: ActiveVocab) -> TrainableLumos:
        """Load a checkpoint written by ``save_pretrained`` (the writer's inverse) over ``vocab``:
        its sizes from config.json, its tensors in float32. Raises ValueError when the file is not
        one this class writes for ``vocab`` (biases, swin-norm, a non-zero embedding outside the
        vocabulary, or differing lm_head rows there): loading would lose weights."""
        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        ref_config = LumosConfig.from_dict(config)
        if ref_config.attention_bias or ref_config.mlp_bias or ref_config.swin_norm:
            raise ValueError(f"{path}: biases and swin_norm are not trainable here")
        model = cls(spec_from_config(config), vocab)
        tensors = load_checkpoint_tensors(path)
        check_tensors(tensors, ref_config)
        model.load_checkpoint_tensors(tensors)
        return model

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy full-vocabulary Lumos-1 tensors (``checkpoint_tensors``' keys) into the
        parameters (module docstring: the other ids' rows must be the writer's)."""
        embed = tensors["model.embed_tokens.weight"].float()
        lm_head = tensors["lm_head.weight"].float()
        ids = torch.tensor(self.vocab.ids)
        rest = torch.ones(self.vocab.vocab_size, dtype=torch.bool)
        rest[ids] = False
        if embed[rest].any():
            raise ValueError("the checkpoint embeds ids outside the active vocabulary")
        rest_rows = lm_head[rest]
        if rest_rows.numel() and not (rest_rows == rest_rows[:1]).all():
            raise ValueError("the checkpoint's lm_head rows outside the active vocabulary differ")
        with torch.no_grad():
            self.embed.copy_(embed[ids])
            self.lm_head.copy_(lm_head[ids])
            if rest_rows.numel():
                self.lm_head_rest.copy_(rest_rows[0])
            self.norm.copy_(tensors["model.norm.weight"].float())
            for i, layer in enumerate(self.layers):
                for attr, key in LAYER_KEYS.items():
                    layer[attr].copy_(tensors[f"model.layers.{i}.{key}"].float())

    def checkpoint_tensors(self, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
        """Every Lumos-1 checkpoint tensor over the full vocabulary (see the module docstring)."""
        ids = torch.tensor(self.vocab.ids)
        v, d = self.vocab.vocab_size, self.spec.hidden_size
        embed = torch.zeros(v, d)
        embed[ids] = self.embed.detach()
        lm_head = self.lm_head_rest.detach().expand(v, d).clone()
        lm_head[ids] = self.lm_head.detach()
        tensors = {"model.embed_tokens.weight": embed}
        for i, layer in enumerate(self.layers):
            for attr, key in LAYER_KEYS.items():
                tensors[f"model.layers.{i}.{key}"] = layer[attr].detach()
        tensors["model.norm.weight"] = self.norm.detach()
        tensors["lm_head.weight"] = lm_head
        return {name: t.to(dtype).contiguous() for name, t in tensors.items()}

    def save_pretrained(self, out_dir: str | Path, extra_config: dict | None = None) -> Path:
        """Write config.json, model.safetensors and the tokenizer, as ``build_tiny_lumos`` does."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        config = {**lumos_config(self.spec), **(extra_config or {})}
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tensors = self.checkpoint_tensors(self.spec.dtype)
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        make_tokenizer(self.spec.codebook_size).save_pretrained(str(out))
        return out


def additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """[..., N, N] bool -> float32 0 / -inf: what attention adds to its scores (made once per
    forward instead of once per layer from the bool mask; the same attention)."""
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


def spec_from_config(config: dict) -> TinyLumosSpec:
    """The TinyLumosSpec whose ``lumos_config`` is this config.json (``lumos_config``'s inverse)."""
    dtypes = {name: dtype for dtype, name in SUPPORTED_DTYPES.items()}
    if config.get("torch_dtype") not in dtypes:
        raise ValueError(f"config torch_dtype must be one of {sorted(dtypes)}")
    schema = LumosConfig.from_dict(config)
    return TinyLumosSpec(
        hidden_size=schema.hidden_size,
        num_attention_heads=schema.num_attention_heads,
        num_key_value_heads=schema.num_key_value_heads,
        num_hidden_layers=schema.num_hidden_layers,
        intermediate_size=schema.intermediate_size,
        codebook_size=config["codebook_size"],
        video_rows=schema.video_rows,
        video_cols=schema.video_cols,
        dtype=dtypes[config["torch_dtype"]],
        swin_norm=schema.swin_norm,
        model_parallel_size=schema.model_parallel_size,
    )
