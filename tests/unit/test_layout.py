"""FrameLayout: token roles, frame sizes, MM-RoPE positions and the temporal rebase."""

from __future__ import annotations

import pytest
import torch

from packcache_vllm.core.layout import (
    LUMOS_TOKENS,
    FrameLayout,
    TokenRole,
    TokenSlot,
    find_frame_start,
    tokens_per_frame,
    video_positions,
)

# 5 text tokens, then frames of 2 rows x 3 cols: F = 2 * 4 + 4 = 12; one conditioning frame
LAYOUT = FrameLayout(frame_start=5, anchor_len=5 + 12, rows=2, cols=3)
P0 = 5 + 3  # Lumos-1's global offset: the index of the first visual token


def test_tokens_per_frame():
    assert tokens_per_frame(48, 84) == 4084
    assert tokens_per_frame(1, 1) == 6
    assert LAYOUT.tokens_per_frame == 12
    assert LAYOUT.num_anchor_frames == 1
    assert LAYOUT.first_visual_index == P0


def test_locate_roles_of_a_frame():
    frame_1 = 5 + 12
    expected = [
        TokenSlot(TokenRole.BREAK, 1),
        TokenSlot(TokenRole.GRID, 1),
        TokenSlot(TokenRole.GRID, 1),
        TokenSlot(TokenRole.VISUAL, 1, 0, 0),
        TokenSlot(TokenRole.VISUAL, 1, 0, 1),
        TokenSlot(TokenRole.VISUAL, 1, 0, 2),
        TokenSlot(TokenRole.NEWLINE, 1, 0, 3),
        TokenSlot(TokenRole.VISUAL, 1, 1, 0),
        TokenSlot(TokenRole.VISUAL, 1, 1, 1),
        TokenSlot(TokenRole.VISUAL, 1, 1, 2),
        TokenSlot(TokenRole.NEWLINE, 1, 1, 3),
        TokenSlot(TokenRole.EOSS, 1),
    ]
    assert [LAYOUT.locate(frame_1 + offset) for offset in range(12)] == expected
    assert LAYOUT.locate(frame_1 + 12) == TokenSlot(TokenRole.BREAK, 2)


def test_locate_text_and_bad_index():
    assert all(LAYOUT.locate(i) == TokenSlot(TokenRole.TEXT) for i in range(5))
    with pytest.raises(ValueError, match="logical index must be >= 0"):
        LAYOUT.locate(-1)


def test_frame_span_and_complete_frames():
    assert LAYOUT.frame_span(0) == (5, 17)
    assert LAYOUT.frame_span(2) == (29, 41)
    assert LAYOUT.num_complete_frames(5 + 11) == 0
    assert LAYOUT.num_complete_frames(5 + 24) == 2
    assert LAYOUT.num_complete_frames(3) == 0


def positions_of(*indices: int, dropped_frames: int = 0) -> list[tuple[int, int, int]]:
    pos = LAYOUT.positions(torch.tensor(indices), dropped_frames)
    return [tuple(column) for column in pos.t().tolist()]


def test_text_and_markers_use_1d_positions():
    assert positions_of(0, 4) == [(0, 0, 0), (4, 4, 4)]
    markers = [17, 18, 19, 28]  # frame 1: <break>, 2 grid tokens, <eoss>
    assert positions_of(*markers) == [(p, p, p) for p in markers]


def test_visual_positions():
    # frame 1, row 1, col 2: (P0 + 4 * 1, P0 + 8 * 1, P0 + 8 * 2)
    assert positions_of(17 + 3 + 4 + 2) == [(P0 + 4, P0 + 8, P0 + 16)]
    # frame 0, row 0, col 0 is the global origin
    assert positions_of(8) == [(P0, P0, P0)]
    # the newline ending row 0 of frame 2 sits at col = cols
    assert positions_of(29 + 3 + 3) == [(P0 + 8, P0, P0 + 24)]


def test_rebase_shifts_time_of_generated_frames_only():
    text, anchor_cell, anchor_marker = 2, 8, 5
    generated_cell, generated_marker = 17 + 3, 17
    indices = (text, anchor_cell, anchor_marker, generated_cell, generated_marker)
    plain = positions_of(*indices)
    rebased = positions_of(*indices, dropped_frames=3)
    assert rebased[:3] == plain[:3]
    for before, after in zip(plain[3:], rebased[3:], strict=True):
        assert after == (before[0] - 4 * 3, before[1], before[2])


def test_video_positions_per_request_frame_start():
    index = torch.tensor([8, 8])
    pos = video_positions(index, torch.tensor([5, 0]), rows=2, cols=3)
    # request 0 (frame_start 5): its first visual token; request 1 (frame_start 0): offset 8 of
    # frame 0 is row 1, col 1, around origin 0 + 3
    assert pos.t().tolist() == [[8, 8, 8], [3, 3 + 8, 3 + 8]]


def test_layout_validation():
    with pytest.raises(ValueError, match="not whole frames of the 2 x 3 grid"):
        FrameLayout(frame_start=5, anchor_len=5 + 7, rows=2, cols=3)
    with pytest.raises(ValueError, match="anchor_len .* must be >= frame_start"):
        FrameLayout(frame_start=5, anchor_len=4, rows=2, cols=3)
    with pytest.raises(ValueError, match="rows must be >= 1"):
        FrameLayout(frame_start=0, anchor_len=0, rows=0, cols=3)
    with pytest.raises(ValueError, match="frame_start must be >= 0"):
        FrameLayout(frame_start=-1, anchor_len=0, rows=1, cols=3)


def test_find_frame_start():
    prompt = [1, 2, 3, LUMOS_TOKENS.frame_break, 4]
    assert find_frame_start(prompt) == 3
    assert find_frame_start([1, 2, 3]) == 3
