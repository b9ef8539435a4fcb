"""A step's per-request causal flags, in the tensor vLLM's attention backends read.

``CommonAttentionMetadata.causal`` may be an int32 tensor ``[num_reqs]``: row i is the step's
batch row i (``query_start_loc`` order), 1 = causal, 0 = every query of that request sees its
whole sequence. CPU_ATTN takes it as ``dynamic_causal`` (on the CPU), Triton's unified attention
as ``per_seq_causal_ptr`` (on the GPU, indexed by the row); ``docs/attention-backends.md``.

The flags live in two tensors of ``max_rows`` entries made once: a host one (pinned when the
device is CUDA) written once per step, and one on the runner's device (the same tensor on the
CPU) that gets a non-blocking copy of it, so building a step's attention metadata moves nothing
and syncs nothing (PackCache schedules synchronously: a step's copy has run before the next step
writes the host tensor). Rows past the step's requests (CUDA-graph padding) stay causal.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

CAUSAL = 1
BIDIRECTIONAL = 0


class CausalFlags:
    """max_rows: the most batch rows a step has (vLLM's ``max_num_seqs``); device: the runner's."""

    def __init__(self, max_rows: int, device: torch.device) -> None:
        pinned = device.type == "cuda"
        self.host = torch.full((max_rows,), CAUSAL, dtype=torch.int32, pin_memory=pinned)
        self.on_device = (
            self.host if device.type == "cpu" else torch.empty_like(self.host, device=device)
        )
        self.active = False  # False: every row causal, the backend gets vLLM's own True

    def set_rows(self, causal: Sequence[bool]) -> None:
        """causal: one flag per batch row of the step, in row order."""
        if len(causal) > self.host.numel():
            raise ValueError(f"{len(causal)} rows, the flags hold {self.host.numel()}")
        self.active = not all(causal)
        if not self.active:
            return
        flags = self.host.numpy()
        flags[:] = CAUSAL
        flags[: len(causal)] = [CAUSAL if c else BIDIRECTIONAL for c in causal]
        if self.on_device is not self.host:
            self.on_device.copy_(self.host, non_blocking=True)

    def clear(self) -> None:
        self.active = False

    def rows(self, num_reqs: int) -> torch.Tensor | None:
        """The device tensor ``[num_reqs]`` int32 for a metadata build over ``num_reqs`` rows
        (padding included), or None when every row of the step is causal."""
        if not self.active:
            return None
        return self.on_device[:num_reqs]
