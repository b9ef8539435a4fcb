"""packcache_vllm: a bounded, frame-aware KV cache for autoregressive video models in vLLM."""

__version__ = "0.1.0"
