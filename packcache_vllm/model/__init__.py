"""Lumos-1 for vLLM and its test fixtures.

lumos.py        the out-of-tree vLLM model (Chameleon decoder + QK-norm + GQA + MM-RoPE)
config_hook.py  config-time adjustments vLLM runs for Lumos-1 checkpoints
factory.py      a tiny random-weight checkpoint in the real Lumos-1 format, and video prompts
"""
