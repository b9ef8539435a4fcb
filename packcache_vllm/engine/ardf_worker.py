"""The worker named by ``--packcache-mode frame-parallel`` on the CPU: vLLM's CPU worker with the
frame-parallel PackCache runner (``ardf_runner.ARDFCPUModelRunner``)."""

from __future__ import annotations

from vllm.v1.worker.cpu_worker import CPUWorker

from packcache_vllm.engine import compat
from packcache_vllm.engine.worker import check_v1_runner


class ARDFCPUWorker(CPUWorker):
    def init_device(self) -> None:
        check_v1_runner(self, "CPU")
        from packcache_vllm.engine.ardf_runner import ARDFCPUModelRunner

        with compat.cpu_model_runner_class(ARDFCPUModelRunner):
            super().init_device()
