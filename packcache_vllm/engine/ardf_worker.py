"""The worker named by ``--packcache-mode frame-parallel`` on the CPU: vLLM's CPU worker with the
frame-parallel PackCache runner (``ardf_runner.ARDFCPUModelRunner``)."""

from __future__ import annotations

from packcache_vllm.engine.seam.running import CPUWorkerSeam


class ARDFCPUWorker(CPUWorkerSeam):
    def runner_class(self) -> type:
        from packcache_vllm.engine.ardf_runner import ARDFCPUModelRunner

        return ARDFCPUModelRunner
