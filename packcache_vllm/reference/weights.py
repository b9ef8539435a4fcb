"""Lumos-1 checkpoint loading for the reference: the config (``core.lumos_schema``), the
weights of each layer, and the tensors of a checkpoint directory checked against the schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from packcache_vllm.core.lumos_schema import (
    IGNORED_PREFIXES,
    LumosConfig,
    check_weight_shapes,
    layer_keys,
)

ReferenceConfig = LumosConfig  # the config.json fields the forward pass uses (core.lumos_schema)


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
