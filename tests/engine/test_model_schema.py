"""The vLLM model's parameters, once vLLM's loader has filled them, are the schema's weights
(core.lumos_schema.weight_shapes; q/k/v and gate/up stacked as the model loads them)."""

from __future__ import annotations

import json


def parameter_shapes(model) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape. vLLM's CPU GEMM repacks a linear layer's weight after loading and
    leaves the parameter empty; its shape is then the layer's [output, input] features."""
    from vllm.model_executor.layers.linear import LinearBase

    shapes = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            shape = tuple(param.shape)
            if isinstance(module, LinearBase) and name == "weight" and param.numel() == 0:
                shape = (module.output_size_per_partition, module.input_size_per_partition)
            shapes[f"{module_name}.{name}"] = shape
    return shapes


def test_loaded_vllm_parameters_are_the_schemas_weights(llm, tiny_model_dir):
    from packcache_vllm.core.lumos_schema import LumosConfig, weight_shapes
    from packcache_vllm.model.lumos import parameter_shapes as expected_shapes

    config = LumosConfig.from_dict(json.loads((tiny_model_dir / "config.json").read_text()))
    (loaded,) = llm.apply_model(parameter_shapes)
    expected = expected_shapes(config)
    assert loaded == expected
    layer = "model.layers.0."
    assert loaded[layer + "self_attn.qkv_proj.weight"] == (config.q_size + 2 * config.kv_size,
                                                           config.hidden_size)  # fmt: skip
    assert loaded[layer + "mlp.gate_up_proj.weight"] == (2 * config.intermediate_size,
                                                         config.hidden_size)  # fmt: skip
    stacked = {name for name in loaded if ".qkv_proj." in name or ".gate_up_proj." in name}
    assert len(stacked) == 2 * config.num_hidden_layers
    assert set(loaded) - stacked == set(weight_shapes(config)) - {
        name for name in weight_shapes(config) if any(f".{p}_proj." in name for p in "qkv")
        or ".gate_proj." in name or ".up_proj." in name
    }  # fmt: skip
