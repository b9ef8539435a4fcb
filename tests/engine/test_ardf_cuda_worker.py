"""The CUDA frame-parallel worker on a machine without a GPU: its classes stack on vLLM's V1 GPU
runner and worker, ``--packcache-mode frame-parallel`` names it for CUDA, it refuses the V2
runner and any attention backend but TRITON_ATTN at start-up, and the step's causal flags are
built where the runner's device is. (The attention kernels: test_ardf_cuda_triton_interpreted.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


def test_gpu_runner_shares_the_frame_parallel_mixin_with_the_cpu_runner():
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker

    from packcache_vllm import cli
    from packcache_vllm.engine.ardf_gpu_runner import ARDFGPUModelRunner
    from packcache_vllm.engine.ardf_gpu_worker import ARDFGPUWorker
    from packcache_vllm.engine.ardf_runner import ARDFCPUModelRunner, ARDFRunnerMixin
    from packcache_vllm.engine.runner import PackCacheRunnerMixin

    mro = ARDFGPUModelRunner.__mro__
    assert mro[1] is ARDFRunnerMixin and ARDFCPUModelRunner.__mro__[1] is ARDFRunnerMixin
    assert mro.index(ARDFRunnerMixin) < mro.index(PackCacheRunnerMixin) < mro.index(GPUModelRunner)
    assert issubclass(ARDFGPUWorker, Worker)
    module, _, name = cli.FRAME_PARALLEL_WORKER_CLS_BY_DEVICE["cuda"].rpartition(".")
    assert (module, name) == (ARDFGPUWorker.__module__, ARDFGPUWorker.__name__)


def test_gpu_worker_refuses_the_v2_runner_naming_the_setting():
    from packcache_vllm.engine.ardf_gpu_worker import ARDFGPUWorker

    with pytest.raises(ValueError, match="VLLM_USE_V2_MODEL_RUNNER=0"):
        ARDFGPUWorker._make_model_runner(SimpleNamespace(use_v2_model_runner=True))


def test_the_chosen_backend_is_vllms_triton_and_takes_float32_and_non_causal():
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from packcache_vllm.engine.attention_backend import FRAME_PARALLEL_CUDA_BACKEND

    backend = AttentionBackendEnum[FRAME_PARALLEL_CUDA_BACKEND].get_class()
    assert backend.get_name() == FRAME_PARALLEL_CUDA_BACKEND
    assert backend.supports_non_causal()
    assert torch.float32 in backend.supported_dtypes  # the oracle suites run float32


def model_config_with_layers(*backend_names: str):
    """A VllmConfig stand-in whose static forward context holds one attention layer per name."""
    from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    class Layer(AttentionLayerBase):
        def __init__(self, backend) -> None:
            self.backend = backend

        def get_attn_backend(self):
            return self.backend

        def get_kv_cache_spec(self, vllm_config):
            return None

    layers = {
        f"model.layers.{i}.attn": Layer(AttentionBackendEnum[name].get_class())
        for i, name in enumerate(backend_names)
    }
    layers["model.rope"] = object()  # not an attention layer: not asked
    return SimpleNamespace(compilation_config=SimpleNamespace(static_forward_context=layers))


def test_runner_reads_the_backends_vllm_built_and_refuses_others_before_allocating():
    from packcache_vllm.engine.ardf_gpu_runner import ARDFGPUModelRunner, attention_backend_names

    config = model_config_with_layers("TRITON_ATTN", "FLASH_ATTN")
    assert attention_backend_names(config) == ["TRITON_ATTN", "FLASH_ATTN"]
    not_a_runner = SimpleNamespace(vllm_config=config)  # vLLM's own set-up would fail on it
    with pytest.raises(RuntimeError, match="cannot run on attention backend FLASH_ATTN"):
        ARDFGPUModelRunner.initialize_kv_cache(not_a_runner, kv_cache_config=None)


# --- the step's causal flags ------------------------------------------------------------------
def flags_on(device: str, rows: int = 6):
    from packcache_vllm.engine.causal_flags import CausalFlags

    return CausalFlags(rows, torch.device(device))


def test_mixed_batch_flags_text_causal_canvases_bidirectional_padding_causal():
    from packcache_vllm.engine.ardf_runner import RowKind

    kinds = [RowKind.DENOISE, RowKind.TEXT, RowKind.COMMIT, RowKind.FRAME_PREFILL]
    flags = flags_on("cpu")
    flags.set_rows([kind.causal for kind in kinds])
    rows = flags.rows(5)  # vLLM builds over num_reqs_padded rows
    assert rows.dtype == torch.int32  # FlashAttention refuses any other; Triton loads int32
    assert rows.tolist() == [0, 1, 0, 0, 1]


def test_a_step_after_a_longer_one_leaves_no_stale_rows():
    flags = flags_on("cpu")
    flags.set_rows([False, False, False, False])
    flags.set_rows([True, False])
    assert flags.rows(4).tolist() == [1, 0, 1, 1]


def test_all_causal_step_leaves_vllms_bool_and_clear_forgets_the_last_step():
    flags = flags_on("cpu")
    flags.set_rows([True, True])
    assert flags.rows(2) is None
    flags.set_rows([False, True])
    assert flags.rows(2).tolist() == [0, 1]
    flags.clear()
    assert flags.rows(2) is None


def test_flags_are_built_on_the_runners_device():
    """The backend reads the tensor where the runner runs (a device pointer for Triton on CUDA);
    a ``meta`` device stands for a device other than the host."""
    flags = flags_on("meta")
    flags.set_rows([False])
    assert flags.rows(1).device == torch.device("meta")
    assert flags.host.device == torch.device("cpu")


def test_more_rows_than_the_flags_hold_is_refused():
    with pytest.raises(ValueError, match="7 rows, the flags hold 6"):
        flags_on("cpu").set_rows([False] * 7)
