"""Worker classes named by ``--kv-policy``: vLLM's workers with the PackCache model runner.

Both need vLLM's V1 model runner (the one ``runner.PackCacheRunnerMixin`` hooks): on CPU it is
what vLLM picks without triton-cpu; on CUDA vLLM 0.32 picks V2 unless
``VLLM_USE_V2_MODEL_RUNNER=0``, and the worker says so instead of running without PackCache.
"""

from __future__ import annotations

from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker

from packcache_vllm.engine import compat

V1_RUNNER_HINT = "set VLLM_USE_V2_MODEL_RUNNER=0 (PackCache hooks vLLM's V1 model runner)"


def check_v1_runner(worker, device: str) -> None:
    if worker.use_v2_model_runner:
        raise ValueError(f"PackCache on {device} cannot run on vLLM's V2 model runner: "
                         f"{V1_RUNNER_HINT}")  # fmt: skip


class PackCacheCPUWorker(CPUWorker):
    def init_device(self) -> None:
        check_v1_runner(self, "CPU")
        from packcache_vllm.engine.runner import PackCacheCPUModelRunner

        with compat.cpu_model_runner_class(PackCacheCPUModelRunner):
            super().init_device()


class PackCacheGPUWorker(Worker):
    def _make_model_runner(self):
        check_v1_runner(self, "CUDA")
        from packcache_vllm.engine.gpu_runner import PackCacheGPUModelRunner

        return PackCacheGPUModelRunner(self.vllm_config, self.device)
