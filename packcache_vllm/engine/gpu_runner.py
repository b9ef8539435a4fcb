"""vLLM's V1 GPU model runner with PackCache (FlashAttention / Triton / FlashInfer backends).

The V1 runner is what ``seam.running.runner_seam`` hooks (``_prepare_inputs``, ``positions``,
``seq_lens``, the V1 ``BlockTable``); the GPU backends store each token as a
plain ``[K | V]`` row, which ``kv_access`` detects at start-up and ``token_rows`` moves with
index tensors on the GPU. vLLM 0.32 picks its V2 runner on GPU by default; the worker refuses it
(``worker.PackCacheGPUWorker``), so start vLLM with ``VLLM_USE_V2_MODEL_RUNNER=0``.
"""

from __future__ import annotations

from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from packcache_vllm.engine.runner import PackCacheRunnerMixin


class PackCacheGPUModelRunner(PackCacheRunnerMixin, GPUModelRunner):
    """vLLM's V1 GPU runner with PackCache."""
