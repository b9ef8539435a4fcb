"""Visual codes <-> Lumos-1 token ids: the one place where code k becomes id ``visual_base + k``.

A frame of codes ``[rows, cols]`` becomes Lumos-1's frame format (``core.maskgit.frame_template``:
``<racm3:break> <grid_h> <grid_w>``, rows of visual tokens each ending with ``<newline>``,
``<eoss>``); ``decode_frame_ids`` reads whole frames back by the place of each cell in that format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from packcache_vllm.core.layout import LUMOS_TOKENS, tokens_per_frame
from packcache_vllm.core.maskgit import frame_template, visual_cells, visual_offsets


def code_ids(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """codes: [...] int64 in [0, codebook_size) -> the model's visual token ids, same shape."""
    codes = torch.as_tensor(codes, dtype=torch.int64)
    if codes.numel() and (codes.min() < 0 or codes.max() >= codebook_size):
        bad = codes[(codes < 0) | (codes >= codebook_size)][0]
        raise ValueError(f"visual codes must lie in [0, {codebook_size}), got {int(bad)}")
    return codes + LUMOS_TOKENS.visual_base


def frames_ids(codes: torch.Tensor, codebook_size: int) -> list[int]:
    """codes: [T, rows, cols] -> T frames in Lumos-1's format, back to back."""
    codes = torch.as_tensor(codes, dtype=torch.int64)
    if codes.dim() != 3:
        raise ValueError(f"frames of codes are [T, rows, cols], got shape {tuple(codes.shape)}")
    num_frames, rows, cols = codes.shape
    frames = frame_template(rows, cols).repeat(num_frames, 1)  # [T, F]
    frames[:, visual_offsets(rows, cols)] = code_ids(codes, codebook_size).view(num_frames, -1)
    return frames.flatten().tolist()


@dataclass(frozen=True)
class DecodedFrames:
    """cells: [T, rows, cols] int64 codes (0 where invalid); valid: [T, rows, cols] bool, False
    where the token at a visual cell was not a code of the codebook."""

    cells: torch.Tensor
    valid: torch.Tensor


def decode_frame_ids(
    tokens: Sequence[int], rows: int, cols: int, codebook_size: int, *, strict: bool = True
) -> DecodedFrames:
    """Video tokens (whole frames, each starting at its <racm3:break>) -> codes.

    Reads the visual cells by their place in the frame layout. ``strict``: raise ValueError
    naming the first token that is not where the format puts it (a marker or a visual code);
    otherwise mark bad cells invalid and ignore bad markers. A trailing partial frame is dropped.
    """
    per_frame = tokens_per_frame(rows, cols)
    ids = torch.as_tensor(list(tokens), dtype=torch.int64)
    num_frames = ids.numel() // per_frame
    if strict and ids.numel() % per_frame:
        raise ValueError(f"{ids.numel()} tokens are not whole frames of {per_frame} tokens")
    frames = ids[: num_frames * per_frame].view(num_frames, per_frame)
    is_cell = visual_cells(rows, cols)
    codes = frames[:, is_cell].view(num_frames, rows, cols) - LUMOS_TOKENS.visual_base
    valid = (codes >= 0) & (codes < codebook_size)
    if strict:
        check_markers(frames, frame_template(rows, cols), is_cell)
        if not valid.all():
            t, r, c = (~valid).nonzero()[0].tolist()
            base = LUMOS_TOKENS.visual_base
            raise ValueError(
                f"frame {t} cell ({r}, {c}) holds token {int(codes[t, r, c]) + base}, not a "
                f"visual code of this codebook (ids {base}..{base + codebook_size - 1})"
            )
    return DecodedFrames(torch.where(valid, codes, 0), valid)


def check_markers(frames: torch.Tensor, expected: torch.Tensor, is_cell: torch.Tensor) -> None:
    """frames: [T, F] ids; expected: [F] one frame's ids (markers where ~is_cell)."""
    wrong = (frames != expected) & ~is_cell
    if wrong.any():
        t, offset = wrong.nonzero()[0].tolist()
        raise ValueError(
            f"frame {t} offset {offset} holds token {int(frames[t, offset])}, the frame format "
            f"puts {int(expected[offset])} there"
        )
