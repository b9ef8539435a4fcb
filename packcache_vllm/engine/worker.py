"""Worker classes named by ``--kv-policy``: vLLM's workers with the PackCache model runner.

Both need vLLM's V1 model runner (the one ``seam.running.RunnerSeam`` hooks): on CPU it is what
vLLM picks without triton-cpu; on CUDA vLLM 0.32 picks V2 unless ``VLLM_USE_V2_MODEL_RUNNER=0``,
and the worker says so instead of running without PackCache (``seam.running.check_v1_runner``).
"""

from __future__ import annotations

from packcache_vllm.engine.seam.running import (
    V1_RUNNER_HINT,
    CPUWorkerSeam,
    GPUWorkerSeam,
    check_v1_runner,
)

__all__ = ["V1_RUNNER_HINT", "PackCacheCPUWorker", "PackCacheGPUWorker", "check_v1_runner"]


class PackCacheCPUWorker(CPUWorkerSeam):
    def runner_class(self) -> type:
        from packcache_vllm.engine.runner import PackCacheCPUModelRunner

        return PackCacheCPUModelRunner


class PackCacheGPUWorker(GPUWorkerSeam):
    def runner_class(self) -> type:
        from packcache_vllm.engine.gpu_runner import PackCacheGPUModelRunner

        return PackCacheGPUModelRunner
