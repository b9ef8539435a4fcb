"""One integer per token that lets the model compute its own 3D position.

vLLM's M-RoPE path hands the model the positions of prompt tokens as computed by the model at
admission, and text-style positions (logical index + a per-request delta) for generated tokens.
A video model needs frame-aware positions for generated tokens too, so the Lumos model returns
*position codes* instead: ``index - CODE_STRIDE * (frame_start + 1)``, a negative number. vLLM adds
the same delta to every generated token's logical index, so generated tokens arrive with correct
codes, and the model decodes (index, frame_start) and applies the request's frame grid.

vLLM adds the delta in int32 arithmetic, so codes must fit in int32: logical indices are below
``MAX_INDEX`` (2^19 = 524,288 tokens per request) and ``frame_start`` (the text length before the
first frame) is at most ``MAX_FRAME_START`` (4,095 tokens).

A value >= 0 is an explicit position (what the PackCache runner writes once it rebases).
"""

from __future__ import annotations

import torch

CODE_STRIDE = 1 << 19
MAX_INDEX = CODE_STRIDE - 1
MAX_FRAME_START = (1 << 31) // CODE_STRIDE - 1


def code_base(frame_start: int) -> int:
    """The (negative) value added to a logical index to form its code (vLLM's mrope delta)."""
    if not 0 <= frame_start <= MAX_FRAME_START:
        raise ValueError(
            f"the text before the first frame must be at most {MAX_FRAME_START} tokens "
            f"(frame_start in [0, {MAX_FRAME_START}]), got {frame_start}"
        )
    return -CODE_STRIDE * (frame_start + 1)


def is_code(values: torch.Tensor) -> torch.Tensor:
    return values < 0


def decode(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """codes: [N] int64 (negative) -> (logical index [N], frame_start [N])."""
    magnitude = -codes
    frame_start = torch.div(magnitude - 1, CODE_STRIDE, rounding_mode="floor")
    index = CODE_STRIDE * (frame_start + 1) - magnitude
    return index, frame_start
