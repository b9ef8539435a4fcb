"""Thin vLLM 0.32 adapters (scheduler, KV manager, worker, attention); version specifics in compat.py."""
