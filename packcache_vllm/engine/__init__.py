"""Thin vLLM 0.32 adapters; every vLLM-version specific lives in compat.py."""
