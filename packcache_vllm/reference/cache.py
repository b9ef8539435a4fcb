"""One request's KV cache (kept tokens' keys and values per layer) and the two ways of
realising the time rebase (``RebaseMode``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from packcache_vllm.reference.weights import ReferenceConfig


class RebaseMode(enum.Enum):
    """How the time rebase after dropped frames is realised (equivalent: RoPE is relative)."""

    POSITIONS = "positions"  # keys kept pre-RoPE, rotated at current rebased positions each step
    ROTATE_ANCHORS = "rotate_anchors"  # keys kept rotated un-rebased; anchors' t rotated by +t·Δ


@dataclass
class KVCache:
    """One request's kept tokens. indices: [M] int64 logical indices (ascending, shared by all
    layers); keys[l], values[l]: [M, KV, hd] per layer. Keys are QK-normed and pre-RoPE under
    RebaseMode.POSITIONS, rotated at un-rebased positions (anchors shifted by +t·Δ) otherwise."""

    indices: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @classmethod
    def empty(cls, config: ReferenceConfig, dtype: torch.dtype) -> KVCache:
        shape = (0, config.num_key_value_heads, config.head_dim)
        layers = range(config.num_hidden_layers)
        return cls(
            indices=torch.zeros(0, dtype=torch.int64),
            keys=[torch.zeros(shape, dtype=dtype) for _ in layers],
            values=[torch.zeros(shape, dtype=dtype) for _ in layers],
        )

    def __len__(self) -> int:
        return self.indices.numel()

    def keep(self, mask: torch.Tensor) -> None:
        """Keep only the tokens where mask ([M] bool) is True."""
        self.indices = self.indices[mask]
        self.keys = [k[mask] for k in self.keys]
        self.values = [v[mask] for v in self.values]
