"""PackCache policy core: pure Python + torch, never imports vLLM."""
