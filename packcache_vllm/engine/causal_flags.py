"""A step's per-request causal flags, in the tensor vLLM's attention backends read.

``CommonAttentionMetadata.causal`` may be an int32 tensor ``[num_reqs]``: row i is the step's
batch row i (``query_start_loc`` order), 1 = causal, 0 = every query of that request sees its
whole sequence. CPU_ATTN takes it as ``dynamic_causal`` (on the CPU), Triton's unified attention
as ``per_seq_causal_ptr`` (on the GPU, indexed by the row); ``docs/attention-backends.md``.

The flags live in one vLLM ``CpuGpuBuffer`` of ``max_num_reqs`` rows (pinned host + device;
two host tensors on the CPU runner): written on the host once per step and copied whole with a
non-blocking copy, so building a step's attention metadata moves nothing and syncs nothing. Rows
past the step's requests (CUDA-graph padding) stay causal.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

CAUSAL = 1
BIDIRECTIONAL = 0


class CausalFlags:
    """buffer: a vLLM ``CpuGpuBuffer`` ``[max_num_reqs]`` int32 with a numpy view (``.np``)."""

    def __init__(self, buffer) -> None:
        if buffer.cpu.dtype != torch.int32 or buffer.cpu.dim() != 1:
            raise ValueError(
                f"causal flags need a 1-D int32 buffer, got {buffer.cpu.dtype} "
                f"{tuple(buffer.cpu.shape)}"
            )
        self.buffer = buffer
        self.active = False  # False: every row causal, the backend gets vLLM's own True

    def set_rows(self, causal: Sequence[bool]) -> None:
        """causal: one flag per batch row of the step, in row order."""
        if len(causal) > self.buffer.np.shape[0]:
            raise ValueError(f"{len(causal)} rows, the buffer holds {self.buffer.np.shape[0]}")
        self.active = not all(causal)
        if not self.active:
            return
        flags = self.buffer.np
        flags[:] = CAUSAL
        flags[: len(causal)] = [CAUSAL if c else BIDIRECTIONAL for c in causal]
        self.buffer.copy_to_gpu()

    def clear(self) -> None:
        self.active = False

    def rows(self, num_reqs: int) -> torch.Tensor | None:
        """The device tensor ``[num_reqs]`` int32 for a metadata build over ``num_reqs`` rows
        (padding included), or None when every row of the step is causal."""
        if not self.active:
            return None
        return self.buffer.gpu[:num_reqs]
