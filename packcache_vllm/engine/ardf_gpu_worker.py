"""The worker named by ``--packcache-mode frame-parallel`` on CUDA: vLLM's GPU worker with the
frame-parallel PackCache runner (``ardf_gpu_runner.ARDFGPUModelRunner``), on vLLM's V1 model
runner (start vLLM with ``VLLM_USE_V2_MODEL_RUNNER=0``; the worker refuses V2 by name)."""

from __future__ import annotations

from vllm.v1.worker.gpu_worker import Worker

from packcache_vllm.engine.worker import check_v1_runner


class ARDFGPUWorker(Worker):
    def _make_model_runner(self):
        check_v1_runner(self, "CUDA")
        from packcache_vllm.engine.ardf_gpu_runner import ARDFGPUModelRunner

        return ARDFGPUModelRunner(self.vllm_config, self.device)
