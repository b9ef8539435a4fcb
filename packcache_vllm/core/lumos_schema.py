"""Lumos-1's checkpoint schema: the config.json fields the model uses, and every weight's name and
shape (lumos-checkpoint-format.md). The one source of these for the vLLM model, the tiny-checkpoint
factory, the trainer and the dense reference. Plain Python: imports neither torch nor vLLM.

Weights: ``model.embed_tokens.weight [V, D]``, per layer ``model.layers.{i}.`` + ``LAYER_KEYS``
(plus the bias keys when ``attention_bias`` / ``mlp_bias``), ``model.norm.weight [D]`` and
``lm_head.weight [V, D]``. QK-norm weights and biases are ``[model_parallel_size, head_dim]``,
shared by the heads of one shard; head_dim = hidden_size / num_attention_heads (no config field).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields

LUMOS_ARCHITECTURE = "ChameleonXLLMXForConditionalGeneration"
DEFAULT_GRID = (48, 84)  # Lumos-1 at 672x384: 48 rows x 84 columns of 8x8-pixel tokens
QK_NORM_EPS = 1e-5  # QK-norm: a LayerNorm over head_dim, no affine of its own
IGNORED_PREFIXES = ("model.vqmodel.",)  # Lumos deletes the VQ model before saving

Shape = tuple[int, ...]


@dataclass(frozen=True)
class LumosConfig:
    """The config.json fields the forward pass uses (validated)."""

    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    num_hidden_layers: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    attention_bias: bool = False
    mlp_bias: bool = False
    model_parallel_size: int = 1
    swin_norm: bool = False
    video_rows: int = DEFAULT_GRID[0]
    video_cols: int = DEFAULT_GRID[1]

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "num_hidden_layers",
            "vocab_size",
            "model_parallel_size",
            "video_rows",
            "video_cols",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"config {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"config hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim = hidden_size / heads must be even, got {self.head_dim}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"config num_key_value_heads ({self.num_key_value_heads}) must divide "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_key_value_heads % self.model_parallel_size:
            raise ValueError(
                f"config model_parallel_size ({self.model_parallel_size}) must divide "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @property
    def head_dim(self) -> int:
        return head_dim_of(self.hidden_size, self.num_attention_heads)

    @property
    def q_size(self) -> int:
        """Output features of q_proj: heads x head_dim."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Output features of k_proj and v_proj: KV heads x head_dim."""
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_dict(cls, config: Mapping) -> LumosConfig:
        """From a Lumos-1 config.json; rejects settings the forward pass does not implement."""
        if not config.get("mm_rope", True):
            raise ValueError("config mm_rope=false: only MM-RoPE Lumos-1 checkpoints are supported")
        if config.get("mask_image_logits", False):
            raise ValueError("config mask_image_logits=true is not supported (Lumos-1 uses false)")
        if config.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config hidden_act must be 'silu', got {config['hidden_act']!r}")
        if config.get("rope_scaling") is not None:
            raise ValueError(f"config rope_scaling must be null, got {config['rope_scaling']!r}")
        if config.get("tie_word_embeddings", False):
            raise ValueError("config tie_word_embeddings=true is not a Lumos-1 checkpoint")
        theta = rope_theta_of(config)
        known = {f.name for f in fields(cls)} - {"rope_theta"}
        values = {k: v for k, v in config.items() if k in known and v is not None}
        required = {f.name for f in fields(cls) if f.default is MISSING} - {"rope_theta"}
        absent = sorted(required - set(values))
        if absent:
            raise ValueError(f"config.json lacks {absent}")
        return cls(rope_theta=theta, **values)


def head_dim_of(hidden_size: int, num_attention_heads: int) -> int:
    """A head's channels: Lumos-1's config has no head_dim field, heads split hidden_size."""
    return hidden_size // num_attention_heads


def rope_theta_of(config: Mapping) -> float:
    """RoPE base: top-level ``rope_theta``, else in ``rope_parameters`` (transformers 5)."""
    theta = config.get("rope_theta")
    if theta is None:
        theta = (config.get("rope_parameters") or {}).get("rope_theta")
    if theta is None:
        raise ValueError("config has no rope_theta (neither top-level nor in rope_parameters)")
    return float(theta)


# --- weights ------------------------------------------------------------------------------------

LAYER_KEYS = {  # the reference's LayerWeights field -> checkpoint key under model.layers.{i}.
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight",
    "q_norm_weight": "self_attn.q_norm.weight",
    "q_norm_bias": "self_attn.q_norm.bias",
    "k_norm_weight": "self_attn.k_norm.weight",
    "k_norm_bias": "self_attn.k_norm.bias",
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
    "input_layernorm": "input_layernorm.weight",
    "post_attention_layernorm": "post_attention_layernorm.weight",
}
ATTENTION_BIAS_KEYS = {f"{p}_bias": f"self_attn.{p}_proj.bias" for p in ("q", "k", "v", "o")}
MLP_BIAS_KEYS = {f"{p}_bias": f"mlp.{p}_proj.bias" for p in ("gate", "up", "down")}


def layer_keys(config: LumosConfig) -> dict[str, str]:
    """LayerWeights field -> checkpoint key (under ``model.layers.{i}.``) of one layer, the bias
    keys included when the config has them."""
    keys = dict(LAYER_KEYS)
    if config.attention_bias:
        keys.update(ATTENTION_BIAS_KEYS)
    if config.mlp_bias:
        keys.update(MLP_BIAS_KEYS)
    return keys


def layer_key_shapes(config: LumosConfig) -> dict[str, Shape]:
    """Checkpoint key under ``model.layers.{i}.`` -> shape, for one layer (``layer_keys`` order)."""
    d, hd, inter = config.hidden_size, config.head_dim, config.intermediate_size
    q_out, kv_out, mp = config.q_size, config.kv_size, config.model_parallel_size
    shapes = {
        "self_attn.q_proj.weight": (q_out, d),
        "self_attn.k_proj.weight": (kv_out, d),
        "self_attn.v_proj.weight": (kv_out, d),
        "self_attn.o_proj.weight": (d, q_out),
        "self_attn.q_norm.weight": (mp, hd),
        "self_attn.q_norm.bias": (mp, hd),
        "self_attn.k_norm.weight": (mp, hd),
        "self_attn.k_norm.bias": (mp, hd),
        "mlp.gate_proj.weight": (inter, d),
        "mlp.up_proj.weight": (inter, d),
        "mlp.down_proj.weight": (d, inter),
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
        "self_attn.q_proj.bias": (q_out,),
        "self_attn.k_proj.bias": (kv_out,),
        "self_attn.v_proj.bias": (kv_out,),
        "self_attn.o_proj.bias": (d,),
        "mlp.gate_proj.bias": (inter,),
        "mlp.up_proj.bias": (inter,),
        "mlp.down_proj.bias": (d,),
    }
    return {key: shapes[key] for key in layer_keys(config).values()}


def layer_field_shapes(config: LumosConfig) -> dict[str, Shape]:
    """LayerWeights field -> shape, for one layer."""
    shapes = layer_key_shapes(config)
    return {field: shapes[key] for field, key in layer_keys(config).items()}


def weight_shapes(config: LumosConfig) -> dict[str, Shape]:
    """Every checkpoint key of a Lumos-1 model of this config and its shape: the embedding, the
    layers in order, the final norm, the lm_head."""
    v, d = config.vocab_size, config.hidden_size
    shapes: dict[str, Shape] = {"model.embed_tokens.weight": (v, d)}
    per_layer = layer_key_shapes(config)
    for i in range(config.num_hidden_layers):
        shapes.update({f"model.layers.{i}.{key}": shape for key, shape in per_layer.items()})
    shapes["model.norm.weight"] = (d,)
    shapes["lm_head.weight"] = (v, d)
    return shapes


def check_weight_shapes(shapes: Mapping[str, Shape], config: LumosConfig) -> None:
    """ValueError unless ``shapes`` (checkpoint key -> shape) are exactly ``weight_shapes``."""
    expected = weight_shapes(config)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint keys do not match a Lumos-1 model of this config: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}"
        )
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ValueError(f"{name} has shape {tuple(shapes[name])}, expected {shape}")
