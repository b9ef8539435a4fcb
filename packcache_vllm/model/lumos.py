"""Lumos-1 (Chameleon decoder + QK-norm + GQA + MM-RoPE) as an out-of-tree vLLM model.

Loads a Lumos-1 checkpoint directory (``architectures: ["ChameleonXLLMXForConditionalGeneration"]``,
keys and shapes in lumos-checkpoint-format) through vLLM's normal loader.

Positions: vLLM runs this model on its M-RoPE path (the plugin adds ``mrope_section`` to the
config, see ``config_hook.py``). ``get_mrope_input_positions`` returns *position codes*
(``core/position_code.py``) so that generated tokens also reach the model with their request's
frame start; the model turns codes into Lumos-1's (t, h, w) positions with the frame grid of the
config (``video_rows`` x ``video_cols``; Lumos-1's 672x384 default is 48 x 84). Explicit positions
(values below the code flag) are used as given: that is how a runner passes rebased positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
)
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsMRoPE

from packcache_vllm.core import position_code
from packcache_vllm.core.layout import find_frame_start, video_positions
from packcache_vllm.core.lumos_schema import (
    IGNORED_PREFIXES,
    QK_NORM_EPS,
    LumosConfig,
    weight_shapes,
)
from packcache_vllm.core.rope import MMRoPE, rotate
from packcache_vllm.model.config_hook import lumos_schema

STACKED_PARAMS = (  # (vLLM parameter, checkpoint name, shard id)
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)


class LumosQKNorm(nn.Module):
    """LayerNorm over head_dim (no affine, eps 1e-5), then per-shard gamma/beta.

    Weights are [model_parallel_size, head_dim], shared by the heads of one shard — the
    checkpoint's layout, which upstream Chameleon's [heads, head_dim] cannot load.
    """

    def __init__(self, num_heads: int, head_dim: int, model_parallel_size: int) -> None:
        super().__init__()
        if num_heads % model_parallel_size:
            raise ValueError(
                f"model_parallel_size={model_parallel_size} must divide the head count {num_heads}"
            )
        self.heads_per_shard = num_heads // model_parallel_size
        self.weight = nn.Parameter(torch.ones(model_parallel_size, head_dim))
        self.bias = nn.Parameter(torch.zeros(model_parallel_size, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, heads, head_dim] -> same shape."""
        normed = F.layer_norm(x, x.shape[-1:], eps=QK_NORM_EPS)
        weight = self.weight.repeat_interleave(self.heads_per_shard, dim=0)
        bias = self.bias.repeat_interleave(self.heads_per_shard, dim=0)
        return normed * weight + bias


class LumosAttention(nn.Module):
    def __init__(self, config: LumosConfig, cache_config, quant_config, prefix: str) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = config.q_size
        self.kv_size = config.kv_size
        bias = config.attention_bias
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size,
            self.head_dim,
            self.num_heads,
            self.num_kv_heads,
            bias=bias,
            quant_config=quant_config,
            prefix=f"{prefix}.qkv_proj",
        )
        self.o_proj = RowParallelLinear(
            self.q_size,
            config.hidden_size,
            bias=bias,
            quant_config=quant_config,
            prefix=f"{prefix}.o_proj",
        )
        mp = config.model_parallel_size
        self.q_norm = LumosQKNorm(self.num_heads, self.head_dim, mp)
        self.k_norm = LumosQKNorm(self.num_kv_heads, self.head_dim, mp)
        self.attn = Attention(
            self.num_heads,
            self.head_dim,
            self.head_dim**-0.5,
            num_kv_heads=self.num_kv_heads,
            cache_config=cache_config,
            quant_config=quant_config,
            prefix=f"{prefix}.attn",
        )
        # Called with every forward's rotated queries [N, H, head_dim] when set (a KV policy
        # that ranks tokens by attention records the last layer's); None: off.
        self.query_recorder: Callable[[torch.Tensor], None] | None = None

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """hidden: [N, D]; cos, sin: [N, head_dim] float32 -> [N, D]."""
        qkv, _ = self.qkv_proj(hidden)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        n = hidden.shape[0]
        q = rotate(self.q_norm(q.view(n, self.num_heads, self.head_dim)), cos, sin)
        if self.query_recorder is not None:
            self.query_recorder(q)
        k = rotate(self.k_norm(k.view(n, self.num_kv_heads, self.head_dim)), cos, sin)
        out = self.attn(q.reshape(n, self.q_size), k.reshape(n, self.kv_size), v)
        return self.o_proj(out)[0]


class LumosMLP(nn.Module):
    """down(silu(gate(x)) * up(x)): ``LumosConfig`` admits hidden_act 'silu' only."""

    def __init__(self, config: LumosConfig, quant_config, prefix: str) -> None:
        super().__init__()
        bias = config.mlp_bias
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size,
            [config.intermediate_size] * 2,
            bias=bias,
            quant_config=quant_config,
            prefix=f"{prefix}.gate_up_proj",
        )
        self.down_proj = RowParallelLinear(
            config.intermediate_size,
            config.hidden_size,
            bias=bias,
            quant_config=quant_config,
            prefix=f"{prefix}.down_proj",
        )
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)[0]))[0]


class LumosDecoderLayer(nn.Module):
    """Pre-norm (Llama) layer, or Chameleon's swin-norm layer (norm after each block)."""

    def __init__(self, config: LumosConfig, cache_config, quant_config, prefix: str) -> None:
        super().__init__()
        self.swin_norm = config.swin_norm
        self.self_attn = LumosAttention(config, cache_config, quant_config, f"{prefix}.self_attn")
        self.mlp = LumosMLP(config, quant_config, f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.swin_norm:
            h = x + self.input_layernorm(self.self_attn(x, cos, sin))
            return h + self.post_attention_layernorm(self.mlp(h))
        h = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class LumosModel(nn.Module):
    def __init__(self, config: LumosConfig, cache_config, quant_config, prefix: str) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, prefix=f"{prefix}.embed_tokens"
        )
        self.layers = nn.ModuleList(
            LumosDecoderLayer(config, cache_config, quant_config, f"{prefix}.layers.{i}")
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden, cos, sin)
        return self.norm(hidden)


class LumosForVideoGeneration(nn.Module, SupportsMRoPE):
    """Lumos-1 for next-token video generation in vLLM (tensor parallel size 1)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        if get_tensor_model_parallel_world_size() != 1:
            raise ValueError("LumosForVideoGeneration supports tensor_parallel_size=1 only")
        self.config = vllm_config.model_config.hf_config
        config = lumos_schema(self.config)
        self.rows, self.cols = config.video_rows, config.video_cols
        self.rope = MMRoPE(config.head_dim, config.rope_theta)
        self.model = LumosModel(
            config, vllm_config.cache_config, vllm_config.quant_config, f"{prefix}model"
        )
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix="lm_head")
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def record_last_layer_queries(self, recorder: Callable[[torch.Tensor], None]) -> None:
        """Have ``recorder`` called with the last layer's rotated queries [N, H, head_dim] of
        every forward (eager execution: the model is never compiled or graph-captured here)."""
        self.model.layers[-1].self_attn.query_recorder = recorder

    # --- positions -------------------------------------------------------------------------
    def get_mrope_input_positions(
        self, input_tokens: list[int], mm_features
    ) -> tuple[torch.Tensor, int]:
        """Position codes [3, L] for the prompt, and the code base vLLM adds to later tokens."""
        frame_start = find_frame_start(list(input_tokens))
        base = position_code.code_base(frame_start)
        codes = torch.arange(len(input_tokens), dtype=torch.int64) + base
        return codes.expand(3, -1).clone(), base

    def positions_3d(self, positions: torch.Tensor) -> torch.Tensor:
        """positions: [3, N] codes or explicit (t, h, w) -> [3, N] explicit positions."""
        if positions.dim() != 2 or positions.shape[0] != 3:
            raise ValueError(
                "Lumos needs M-RoPE positions of shape [3, N] (is the packcache_vllm plugin "
                f"loaded?), got {tuple(positions.shape)}"
            )
        coded = position_code.is_code(positions[0])
        index, frame_start = position_code.decode(positions[0])
        decoded = video_positions(index, frame_start, self.rows, self.cols)
        return torch.where(coded, decoded, positions)

    # --- forward ---------------------------------------------------------------------------
    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors=None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        hidden = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        cos, sin = self.rope.cos_sin(self.positions_3d(positions))
        return self.model(hidden, cos, sin)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    # --- weights ---------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.startswith(IGNORED_PREFIXES):
                continue
            target = load_one_weight(params, name, tensor)
            loaded.add(target)
        missing = set(params) - loaded
        if missing:
            raise ValueError(f"checkpoint is missing weights: {sorted(missing)[:8]}")
        return loaded


def parameter_shapes(config: LumosConfig) -> dict[str, tuple[int, ...]]:
    """This model's parameter name -> shape: the schema's weights (``core.lumos_schema.
    weight_shapes``), q/k/v and gate/up stacked along dim 0 as ``STACKED_PARAMS`` loads them."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in weight_shapes(config).items():
        target, _ = stacked_target(name)
        if target in shapes:
            shape = (shapes[target][0] + shape[0], *shape[1:])
        shapes[target] = shape
    return shapes


def stacked_target(name: str) -> tuple[str, str | int | None]:
    """The parameter a checkpoint weight loads into, and its shard there (None: not stacked)."""
    for param_name, ckpt_name, shard in STACKED_PARAMS:
        if f".{ckpt_name}." in name:
            return name.replace(ckpt_name, param_name), shard
    return name, None


def load_one_weight(params: dict[str, nn.Parameter], name: str, tensor: torch.Tensor) -> str:
    """Load one checkpoint tensor into its (possibly stacked) parameter; returns its name."""
    target, shard = stacked_target(name)
    if target not in params:
        raise ValueError(f"unexpected weight {name!r} in checkpoint (not a Lumos-1 key)")
    param = params[target]
    if shard is not None:
        param.weight_loader(param, tensor, shard)
    else:
        getattr(param, "weight_loader", default_weight_loader)(param, tensor)
    return target
