"""vLLM's V1 GPU model runner with PackCache and frame-parallel generation (CUDA).

The same ``ardf_runner.ARDFRunnerMixin`` as on the CPU, on ``gpu_runner.PackCacheGPUModelRunner``
(PackCache's device-generic mixin on the V1 GPU runner): canvases and commits ride vLLM's draft
slots, a step's per-request causal flags go to the attention backend as an int32 device tensor
(``causal_flags``), KV moves and anchor re-rotation use the write order learned through the
backend at start-up (plain ``[K | V]`` rows on Triton: ``token_rows``).

The backend must honour that tensor: on CUDA only TRITON_ATTN does on Hopper
(``attention_backend``; ``docs/attention-backends.md``). ``--packcache-mode frame-parallel``
selects it; this runner refuses any other at start-up, before the KV cache is allocated.
"""

from __future__ import annotations

from packcache_vllm.engine.ardf_runner import ARDFRunnerMixin
from packcache_vllm.engine.attention_backend import check_frame_parallel_backends
from packcache_vllm.engine.gpu_runner import PackCacheGPUModelRunner


def attention_backend_names(vllm_config) -> list[str]:
    """``get_name()`` of the attention backend of every attention layer of the loaded model
    (vLLM's ``get_layers_from_vllm_config`` over the static forward context)."""
    from vllm.config import get_layers_from_vllm_config
    from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase

    layers = get_layers_from_vllm_config(vllm_config, AttentionLayerBase)
    return [layer.get_attn_backend().get_name() for layer in layers.values()]


class ARDFGPUModelRunner(ARDFRunnerMixin, PackCacheGPUModelRunner):
    """vLLM's V1 GPU runner with PackCache and frame-parallel generation."""

    def initialize_kv_cache(self, *args, **kwargs) -> None:
        check_frame_parallel_backends(attention_backend_names(self.vllm_config))
        super().initialize_kv_cache(*args, **kwargs)
