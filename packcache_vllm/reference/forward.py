"""The forward pass, one function per block: RMSNorm, Lumos QK-norm, the MLP, the q/k/v
projection and softmax attention (GQA) with its optional probe of the probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from packcache_vllm.core.lumos_schema import QK_NORM_EPS
from packcache_vllm.reference.weights import LayerWeights, ReferenceConfig


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
