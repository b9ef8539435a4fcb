"""Worker classes named by ``--kv-policy``: vLLM's workers with the PackCache model runner."""

from __future__ import annotations

from vllm.v1.worker.cpu_worker import CPUWorker

from packcache_vllm.engine import compat


class PackCacheCPUWorker(CPUWorker):
    def init_device(self) -> None:
        if self.use_v2_model_runner:
            raise ValueError(
                "PackCache on CPU needs vLLM's V1 model runner (VLLM_USE_V2_MODEL_RUNNER unset/0)"
            )
        from packcache_vllm.engine.runner import PackCacheCPUModelRunner

        with compat.cpu_model_runner_class(PackCacheCPUModelRunner):
            super().init_device()
