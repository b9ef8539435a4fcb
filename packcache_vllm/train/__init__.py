"""Training a tiny Lumos-1 on synthetic motion clips (pure torch, the reference model's math)."""
