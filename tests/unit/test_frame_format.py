"""The frame format of a video prompt (``layout.video_prompt_layout``): every prompt frame is
``<racm3:break>``, this grid's two grid tokens, rows of visual tokens each ended by ``<newline>``,
``<eoss>``; a wrong token is named by the check, the frame, the offset, expected and got."""

from __future__ import annotations

import random

import pytest

from packcache_vllm.core.layout import video_prompt_layout
from packcache_vllm.core.maskgit import grid_token_ids
from packcache_vllm.model.factory import make_frame

ROWS, COLS = 4, 6  # 32 tokens per frame: break, 2 grid, 4 x (6 cells + newline), eoss
TEXT = [300, 301, 302]
GRID = grid_token_ids(ROWS, COLS)


def frames(count: int, rows: int = ROWS, cols: int = COLS) -> list[int]:
    rng = random.Random(0)
    return [token for _ in range(count) for token in make_frame(rows, cols, rng)]


def with_token(prompt: list[int], index: int, token: int) -> list[int]:
    return prompt[:index] + [token] + prompt[index + 1 :]


def check(prompt: list[int]):
    return video_prompt_layout(prompt, ROWS, COLS, GRID)


def test_well_formed_prompts_pass():
    layout = check(TEXT + frames(2))
    assert (layout.frame_start, layout.num_anchor_frames) == (3, 2)
    assert check(TEXT).num_anchor_frames == 0  # text to video: no frame at all


FRAME_1 = len(TEXT) + 32  # prompt index of the second frame's <racm3:break>


@pytest.mark.parametrize(
    ("index", "token", "message"),
    [
        (FRAME_1, 300, r"frame 1 \(prompt index 35\), offset 0: expected <racm3:break> \(8197\)"),
        (FRAME_1 + 1, 8806, r"offset 1: expected the grid-height token 8805 \(4 rows\), got 8806"),
        (FRAME_1 + 2, 8804, r"offset 2: expected the grid-width token 8805 \(6 cols\), got 8804"),
        (FRAME_1 + 9, 65537, r"offset 9: expected <newline> \(8803\) ending row 0, got 65537"),
        (FRAME_1 + 31, 8803, r"offset 31: expected <eoss> \(8196\), the frame's last token"),
        (FRAME_1 + 10, 8803, r"offset 10: expected a visual token \(id >= 65536\) at row 1, col 0"),
        (len(TEXT) + 5, 301, r"frame 0 \(prompt index 8\), offset 5: expected a visual token"),
    ],
)  # fmt: skip
def test_a_misplaced_token_is_named_with_its_frame_offset_and_expected_token(index, token, message):
    prompt = TEXT + frames(2)
    with pytest.raises(ValueError, match=message):
        check(with_token(prompt, index, token))


def test_a_frame_of_another_grid_is_reported_as_another_grid():
    other = frames(1, rows=8, cols=6)  # grid tokens (8806, 8805): 8 rows
    with pytest.raises(ValueError, match=r"frame 0 .* is not of this model's 4 x 6 grid: .*"
                                         r"\[8806, 8805\], expected \[8805, 8805\]"):  # fmt: skip
        check(TEXT + other)
    same_grid_tokens = frames(1, rows=4, cols=5)  # 4 x 5 has the 4 x 6 grid tokens, 28 tokens
    with pytest.raises(ValueError, match=r"not whole frames of the 4 x 6 grid: the 28 tokens"):
        check(TEXT + same_grid_tokens)


def test_the_first_bad_token_is_reported():
    prompt = with_token(TEXT + frames(3), FRAME_1 + 31, 1)
    prompt = with_token(prompt, FRAME_1 + 32 + 9, 1)  # frame 2 is bad too
    with pytest.raises(ValueError, match="frame 1 .*offset 31"):
        check(prompt)
