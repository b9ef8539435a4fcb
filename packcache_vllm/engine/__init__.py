"""Thin vLLM 0.32 adapters; vLLM's internals are named only in ``seam/`` (``compat.py`` re-exports
its verbs under their old import path)."""
