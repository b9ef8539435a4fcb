"""One Lumos-1 schema (core.lumos_schema): its weight names and shapes are those of every committed
checkpoint, of the factory's tiny checkpoints and of the trainer's model; its config checks."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from packcache_vllm.core.lumos_schema import (
    LumosConfig,
    check_weight_shapes,
    layer_field_shapes,
    layer_keys,
    weight_shapes,
)
from packcache_vllm.model.factory import TinyLumosSpec, lumos_config, make_weights
from packcache_vllm.train.model import ActiveVocab, TrainableLumos

CHECKPOINTS = sorted(
    path.parent for path in (Path(__file__).parents[2] / "checkpoints").glob("*/config.json")
)
SPECS = [
    TinyLumosSpec(),
    TinyLumosSpec(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=3,
                  intermediate_size=96, codebook_size=16, model_parallel_size=2, swin_norm=True),
]  # fmt: skip


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's JSON header (no tensor data is read)."""
    with path.open("rb") as file:
        (header_len,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(header_len))
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def test_there_are_committed_checkpoints():
    assert len(CHECKPOINTS) >= 3, CHECKPOINTS


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=lambda path: path.name)
def test_committed_checkpoints_have_the_schemas_weights(checkpoint):
    config = LumosConfig.from_dict(json.loads((checkpoint / "config.json").read_text()))
    shapes = safetensors_shapes(checkpoint / "model.safetensors")
    assert shapes == weight_shapes(config)
    check_weight_shapes(shapes, config)


@pytest.mark.parametrize("spec", SPECS, ids=["default", "mp2-swin"])
def test_factory_weights_have_the_schemas_shapes(spec):
    tensors = make_weights(spec, seed=0)
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    assert list(shapes.items()) == list(weight_shapes(spec.schema).items())
    assert spec.schema == LumosConfig.from_dict(lumos_config(spec))


def test_trainer_parameters_and_checkpoint_have_the_schemas_shapes():
    spec = TinyLumosSpec(hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                         num_hidden_layers=2, intermediate_size=48, codebook_size=16)  # fmt: skip
    vocab = ActiveVocab((1, 4, 65536, 65537), spec.vocab_size)
    model = TrainableLumos(spec, vocab)
    fields = layer_field_shapes(spec.schema)
    for layer in model.layers:
        assert {name: tuple(p.shape) for name, p in layer.items()} == fields
    written = {name: tuple(t.shape) for name, t in model.checkpoint_tensors().items()}
    assert written == weight_shapes(spec.schema)


def test_bias_keys_follow_the_config():
    config = SPECS[0].schema
    biased = LumosConfig(**{**config.__dict__, "attention_bias": True, "mlp_bias": True})
    extra = set(weight_shapes(biased)) - set(weight_shapes(config))
    assert len(extra) == 7 * config.num_hidden_layers
    assert weight_shapes(biased)["model.layers.0.self_attn.k_proj.bias"] == (config.kv_size,)
    assert weight_shapes(biased)["model.layers.1.mlp.down_proj.bias"] == (config.hidden_size,)
    assert set(layer_keys(biased)) - set(layer_keys(config)) == {
        "q_bias", "k_bias", "v_bias", "o_bias", "gate_bias", "up_bias", "down_bias"
    }  # fmt: skip


def test_check_weight_shapes_names_the_wrong_weight():
    config = SPECS[0].schema
    shapes = weight_shapes(config)
    with pytest.raises(ValueError, match=r"q_norm\.weight has shape \(4, 32\), expected \(1, 32\)"):
        check_weight_shapes({**shapes, "model.layers.1.self_attn.q_norm.weight": (4, 32)}, config)
    with pytest.raises(ValueError, match="missing.*lm_head"):
        check_weight_shapes({k: v for k, v in shapes.items() if k != "lm_head.weight"}, config)
    with pytest.raises(ValueError, match="unexpected.*extra"):
        check_weight_shapes({**shapes, "extra.weight": (1,)}, config)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"hidden_size": 130}, "multiple of num_attention_heads"),
        ({"hidden_size": 12, "num_attention_heads": 4, "num_key_value_heads": 4}, "even"),
        ({"num_key_value_heads": 3}, "must divide"),
        ({"video_rows": 0}, "video_rows"),
        ({"rope_theta": None}, "rope_theta"),
        ({"hidden_act": "gelu"}, "silu"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings"),
        ({"rope_scaling": {"type": "linear"}}, "rope_scaling"),
    ],
)
def test_bad_configs_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        LumosConfig.from_dict({**lumos_config(SPECS[0]), **change})


def test_rope_theta_from_rope_parameters_as_transformers_5_writes_it():
    config = {**lumos_config(SPECS[0]), "rope_theta": None, "rope_parameters": {"rope_theta": 7.0}}
    assert LumosConfig.from_dict(config).rope_theta == 7.0
