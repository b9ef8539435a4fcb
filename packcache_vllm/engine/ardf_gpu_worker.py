"""The worker named by ``--packcache-mode frame-parallel`` on CUDA: vLLM's GPU worker with the
frame-parallel PackCache runner (``ardf_gpu_runner.ARDFGPUModelRunner``), on vLLM's V1 model
runner (start vLLM with ``VLLM_USE_V2_MODEL_RUNNER=0``; the worker refuses V2 by name)."""

from __future__ import annotations

from packcache_vllm.engine.seam.running import GPUWorkerSeam


class ARDFGPUWorker(GPUWorkerSeam):
    def runner_class(self) -> type:
        from packcache_vllm.engine.ardf_gpu_runner import ARDFGPUModelRunner

        return ARDFGPUModelRunner
