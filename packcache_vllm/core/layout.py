"""Where every token of a video request sits: text, frame markers, or a visual (row, col) cell.

A Lumos-1 request is a run of text tokens followed by frames. Each frame is

    <break> <grid_h> <grid_w> (row_0 visuals..., <newline>) ... (row_{R-1} ..., <newline>) <eoss>

so a frame of R rows and C columns holds F = R * (C + 1) + 4 tokens (672x384 -> 48 x 84 -> 4,084).
The first frame starts at ``frame_start``; the prompt (``anchor_len`` tokens: text plus any
conditioning frames) is kept forever. Frames after the prompt are the generated video.

Positions follow Lumos-1's MM-RoPE scheme: text and frame markers use plain 1D RoPE at their
sequence index (t = h = w = index); visual tokens (including the newline ending each row) sit at
(4 * frame, 8 * row, 8 * col) plus one global offset, the index of the first visual token.
PackCache rebases time: every token of a generated (non-anchor) frame has its t reduced by
``t_stride * dropped_frames``, so the kept window sits right after the anchors.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch


class TokenRole(enum.Enum):
    TEXT = "text"
    BREAK = "break"
    GRID = "grid"
    VISUAL = "visual"
    NEWLINE = "newline"
    EOSS = "eoss"


MARKER_ROLES = (TokenRole.BREAK, TokenRole.GRID, TokenRole.EOSS)
NUM_LEADING_MARKERS = 3  # <break>, <grid_h>, <grid_w>


@dataclass(frozen=True)
class LumosTokenIds:
    """Token ids Lumos-1 hard-codes (its vocabulary keeps them; see lumos-checkpoint-format)."""

    eoss: int = 8196
    frame_break: int = 8197
    newline: int = 8803
    grid_base: int = 8804  # grid/duration/fps token n is grid_base + n
    mask: int = 9003
    video_start: int = 9004
    video_end: int = 9005
    visual_base: int = 65536  # visual code k is visual_base + k


LUMOS_TOKENS = LumosTokenIds()


@dataclass(frozen=True)
class TokenSlot:
    """What a logical index is. ``frame``/``row``/``col`` are None where they do not apply."""

    role: TokenRole
    frame: int | None = None
    row: int | None = None
    col: int | None = None  # col == cols for the newline ending a row


def find_frame_start(prompt: list[int], tokens: LumosTokenIds = LUMOS_TOKENS) -> int:
    """Index of the prompt's first <racm3:break> (its first frame), or len(prompt) when the
    prompt has no frame (text-to-video: the video starts right after the prompt)."""
    try:
        return prompt.index(tokens.frame_break)
    except ValueError:
        return len(prompt)


def unconditional_prompt(
    prompt_ids: Sequence[int], tokens: LumosTokenIds = LUMOS_TOKENS
) -> list[int]:
    """The unconditional (classifier-free guidance) twin's prompt: ``prompt_ids`` from its
    ``<video_start>`` on (the same video tokens without the text)."""
    prompt = list(prompt_ids)
    if tokens.video_start not in prompt:
        raise ValueError(
            f"a frame-parallel prompt needs a <video_start> token ({tokens.video_start}) "
            "before its frames: the unconditional twin starts there"
        )
    return prompt[prompt.index(tokens.video_start) :]


def tokens_per_frame(rows: int, cols: int) -> int:
    return rows * (cols + 1) + NUM_LEADING_MARKERS + 1


@dataclass(frozen=True)
class FrameLayout:
    """The frame structure of one request.

    frame_start: logical index of the first frame's <break> token (= number of text tokens).
    anchor_len: prompt length; the prompt is text plus ``num_anchor_frames`` whole frames.
    rows, cols: visual grid of every frame.
    """

    frame_start: int
    anchor_len: int
    rows: int
    cols: int
    t_stride: int = 4
    hw_stride: int = 8

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "t_stride", "hw_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"FrameLayout.{name} must be >= 1, got {getattr(self, name)}")
        if self.frame_start < 0:
            raise ValueError(f"FrameLayout.frame_start must be >= 0, got {self.frame_start}")
        if self.anchor_len < self.frame_start:
            raise ValueError(
                f"FrameLayout.anchor_len ({self.anchor_len}) must be >= frame_start "
                f"({self.frame_start}): the prompt contains all text tokens"
            )
        frames_len = self.anchor_len - self.frame_start
        if frames_len % self.tokens_per_frame:
            raise ValueError(
                f"the prompt's frames are not whole frames of the {self.rows} x {self.cols} "
                f"grid: the {frames_len} tokens from the first <racm3:break> (index "
                f"{self.frame_start}) are not a multiple of its frame size "
                f"{self.tokens_per_frame} ({frames_len % self.tokens_per_frame} left over)"
            )

    @property
    def tokens_per_frame(self) -> int:
        return tokens_per_frame(self.rows, self.cols)

    @property
    def num_anchor_frames(self) -> int:
        return (self.anchor_len - self.frame_start) // self.tokens_per_frame

    @property
    def first_visual_index(self) -> int:
        """Lumos-1's global 3D offset: the 1D index of the first visual content token."""
        return self.frame_start + NUM_LEADING_MARKERS

    def frame_span(self, frame: int) -> tuple[int, int]:
        """[start, end) logical indices of ``frame`` (frame 0 is the first frame of the video)."""
        start = self.frame_start + frame * self.tokens_per_frame
        return start, start + self.tokens_per_frame

    def num_complete_frames(self, num_tokens: int) -> int:
        """Frames whose every token is among the first ``num_tokens`` logical tokens."""
        return max(0, num_tokens - self.frame_start) // self.tokens_per_frame

    def locate(self, index: int) -> TokenSlot:
        if index < 0:
            raise ValueError(f"logical index must be >= 0, got {index}")
        if index < self.frame_start:
            return TokenSlot(TokenRole.TEXT)
        frame, offset = divmod(index - self.frame_start, self.tokens_per_frame)
        if offset == 0:
            return TokenSlot(TokenRole.BREAK, frame)
        if offset < NUM_LEADING_MARKERS:
            return TokenSlot(TokenRole.GRID, frame)
        if offset == self.tokens_per_frame - 1:
            return TokenSlot(TokenRole.EOSS, frame)
        row, col = divmod(offset - NUM_LEADING_MARKERS, self.cols + 1)
        role = TokenRole.NEWLINE if col == self.cols else TokenRole.VISUAL
        return TokenSlot(role, frame, row, col)

    def positions(self, index: torch.Tensor, dropped_frames: int = 0) -> torch.Tensor:
        """MM-RoPE (t, h, w) positions of logical indices under a rebase.

        index: [N] int64 logical indices. Returns [3, N] int64. Tokens of generated frames
        (frame >= num_anchor_frames) get t reduced by ``t_stride * dropped_frames``.
        """
        pos = video_positions(
            index, self.frame_start, self.rows, self.cols, self.t_stride, self.hw_stride
        )
        if dropped_frames:
            first_generated = self.frame_start + self.num_anchor_frames * self.tokens_per_frame
            generated = index >= first_generated
            pos[0] = torch.where(generated, pos[0] - self.t_stride * dropped_frames, pos[0])
        return pos


def video_positions(
    index: torch.Tensor,
    frame_start: torch.Tensor | int,
    rows: int,
    cols: int,
    t_stride: int = 4,
    hw_stride: int = 8,
) -> torch.Tensor:
    """Un-rebased Lumos-1 MM-RoPE positions, vectorised over tokens of possibly many requests.

    index: [N] int64 logical indices; frame_start: int or [N] int64 (per token's request).
    Returns [3, N] int64 (t, h, w).
    """
    index = index.to(torch.int64)
    frame_start = torch.as_tensor(frame_start, dtype=torch.int64, device=index.device)
    per_frame = tokens_per_frame(rows, cols)
    rel = index - frame_start
    frame = torch.div(rel, per_frame, rounding_mode="floor")
    offset = rel - frame * per_frame
    cell = offset - NUM_LEADING_MARKERS
    row = torch.div(cell, cols + 1, rounding_mode="floor")
    col = cell - row * (cols + 1)
    is_cell = (rel >= 0) & (offset >= NUM_LEADING_MARKERS) & (offset < per_frame - 1)
    origin = frame_start + NUM_LEADING_MARKERS
    t = torch.where(is_cell, origin + t_stride * frame, index)
    h = torch.where(is_cell, origin + hw_stride * row, index)
    w = torch.where(is_cell, origin + hw_stride * col, index)
    return torch.stack([t, h, w])


# --- the frame format of a prompt -------------------------------------------------------------


def video_prompt_layout(
    prompt: Sequence[int],
    rows: int,
    cols: int,
    grid_ids: tuple[int, int],
    tokens: LumosTokenIds = LUMOS_TOKENS,
) -> FrameLayout:
    """The layout of a video prompt: text, then zero or more whole frames of the rows x cols grid,
    each in Lumos-1's format. ValueError naming the check that failed and where.

    grid_ids: the (height, width) grid tokens of a frame of this grid (``maskgit.grid_token_ids``).
    Checks, in order: the first frame's grid tokens (a frame of another grid), whole frames
    (``FrameLayout``), then every token of every frame (``check_frame_format``).
    """
    prompt = list(prompt)
    frame_start = find_frame_start(prompt, tokens)
    given = tuple(prompt[frame_start + 1 : frame_start + NUM_LEADING_MARKERS])
    if len(given) == 2 and given != tuple(grid_ids):
        raise ValueError(
            f"frame 0 (prompt index {frame_start}) is not of this model's {rows} x {cols} grid: "
            f"its grid tokens (offsets 1, 2) are {list(given)}, expected {list(grid_ids)}"
        )
    layout = FrameLayout(frame_start, len(prompt), rows, cols)
    check_frame_format(prompt, layout, grid_ids, tokens)
    return layout


def check_frame_format(
    prompt: Sequence[int],
    layout: FrameLayout,
    grid_ids: tuple[int, int],
    tokens: LumosTokenIds = LUMOS_TOKENS,
) -> None:
    """Every token of the prompt's frames where Lumos-1's format puts it: ``<racm3:break>``, the
    two grid tokens, a visual token (id >= ``visual_base``) per cell, ``<newline>`` ending each
    row, ``<eoss>`` last. ValueError naming the first token that is not: its frame, offset in the
    frame, prompt index, what was expected and what was there. One pass over the frames."""
    per_frame = layout.tokens_per_frame
    frames = torch.tensor(list(prompt[layout.frame_start : layout.anchor_len]), dtype=torch.int64)
    frames = frames.view(-1, per_frame)  # [frames, F]
    expected, is_cell = frame_pattern(layout.rows, layout.cols, tuple(grid_ids), tokens)
    wrong = torch.where(is_cell, frames < tokens.visual_base, frames != expected)
    if frames.numel() == 0 or not bool(wrong.any()):
        return
    frame, offset = divmod(int(wrong.flatten().to(torch.uint8).argmax()), per_frame)
    index = layout.frame_start + frame * per_frame + offset
    raise ValueError(
        f"frame {frame} (prompt index {index}), offset {offset}: expected "
        f"{expected_token(layout, offset, grid_ids, tokens)}, got {int(frames[frame, offset])}"
    )


@functools.lru_cache(maxsize=16)
def frame_pattern(
    rows: int, cols: int, grid_ids: tuple[int, int], tokens: LumosTokenIds
) -> tuple[torch.Tensor, torch.Tensor]:
    """(expected [F] int64: the layout token at each frame offset, ``visual_base`` at cells;
    is_cell [F] bool: offsets that hold a visual token). Read only (cached per grid)."""
    shape = FrameLayout(0, 0, rows, cols)
    roles = [shape.locate(offset).role for offset in range(shape.tokens_per_frame)]
    by_role = {
        TokenRole.BREAK: tokens.frame_break,
        TokenRole.NEWLINE: tokens.newline,
        TokenRole.EOSS: tokens.eoss,
        TokenRole.VISUAL: tokens.visual_base,
    }
    ids = [grid_ids[offset - 1] if role == TokenRole.GRID else by_role[role]
           for offset, role in enumerate(roles)]  # fmt: skip
    is_cell = [role == TokenRole.VISUAL for role in roles]
    return torch.tensor(ids, dtype=torch.int64), torch.tensor(is_cell)


def expected_token(
    layout: FrameLayout, offset: int, grid_ids: tuple[int, int], tokens: LumosTokenIds
) -> str:
    """What Lumos-1's frame format puts at ``offset`` of a frame, in words."""
    slot = layout.locate(layout.frame_start + offset)
    if slot.role == TokenRole.BREAK:
        return f"<racm3:break> ({tokens.frame_break})"
    if slot.role == TokenRole.GRID:
        if offset == 1:
            return f"the grid-height token {grid_ids[0]} ({layout.rows} rows)"
        return f"the grid-width token {grid_ids[1]} ({layout.cols} cols)"
    if slot.role == TokenRole.NEWLINE:
        return f"<newline> ({tokens.newline}) ending row {slot.row}"
    if slot.role == TokenRole.EOSS:
        return f"<eoss> ({tokens.eoss}), the frame's last token"
    return f"a visual token (id >= {tokens.visual_base}) at row {slot.row}, col {slot.col}"
