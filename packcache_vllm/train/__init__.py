"""Training a tiny Lumos-1 on synthetic motion clips (pure torch, the reference model's math)."""

from pathlib import Path

# The committed checkpoint (made by ``python -m packcache_vllm.train.train``; see its README).
MOTION_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "lumos-motion-8x12"
