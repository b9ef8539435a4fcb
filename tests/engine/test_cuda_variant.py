"""The CUDA variant on a machine without a GPU: it imports against this vLLM, hooks methods
that exist on vLLM's V1 GPU runner with the signatures it assumes, and refuses the V2 runner.
(Its ops run standalone in tests/unit/test_token_rows.py, on a GPU when one is present.)"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest


def test_gpu_worker_and_runner_import_and_stack_on_vllms_v1_classes():
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker

    from packcache_vllm import cli
    from packcache_vllm.engine.gpu_runner import PackCacheGPUModelRunner
    from packcache_vllm.engine.runner import PackCacheRunnerMixin
    from packcache_vllm.engine.worker import PackCacheGPUWorker

    assert PackCacheGPUModelRunner.__mro__[1:3] == (PackCacheRunnerMixin, GPUModelRunner)
    assert issubclass(PackCacheGPUWorker, Worker)
    module, _, name = cli.WORKER_CLS_BY_DEVICE["cuda"].rpartition(".")
    assert (module, name) == (PackCacheGPUWorker.__module__, PackCacheGPUWorker.__name__)


@pytest.mark.parametrize(
    ("method", "leading_parameters"),
    [
        ("_prepare_inputs", ["self", "scheduler_output", "num_scheduled_tokens"]),
        ("execute_model", ["self", "scheduler_output"]),
        ("initialize_kv_cache", ["self", "kv_cache_config"]),
    ],
)
def test_hooked_methods_exist_on_the_v1_gpu_runner(method, leading_parameters):
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    parameters = list(inspect.signature(getattr(GPUModelRunner, method)).parameters)
    assert parameters[: len(leading_parameters)] == leading_parameters


def test_worker_refuses_the_v2_runner_naming_the_setting():
    from vllm.v1.worker.gpu_worker import Worker

    from packcache_vllm.engine.worker import PackCacheGPUWorker

    assert "_make_model_runner" in vars(Worker)  # the hook vLLM documents for subclasses
    worker = SimpleNamespace(use_v2_model_runner=True)
    with pytest.raises(ValueError, match="VLLM_USE_V2_MODEL_RUNNER=0"):
        PackCacheGPUWorker._make_model_runner(worker)
