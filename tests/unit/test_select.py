"""Selectors: permutations, markers first, spatial spread of the uniform order, key norms."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from packcache_vllm.core.layout import FrameLayout, TokenRole, tokens_per_frame
from packcache_vllm.core.select import (
    SELECTORS,
    KeyNormSelector,
    Selector,
    UniformSelector,
    make_selector,
    uniform_order,
)

grids = st.tuples(st.integers(1, 12), st.integers(1, 12))
MARKERS = 4


def cell_of(offset: int, cols: int) -> tuple[int, int]:
    """(row, col) of a cell offset; col == cols is the row's newline."""
    return divmod(offset - 3, cols + 1)


def is_permutation(order: torch.Tensor, length: int) -> bool:
    return order.dtype == torch.int64 and sorted(order.tolist()) == list(range(length))


# --- registry -----------------------------------------------------------------------------------


def test_registry():
    assert set(SELECTORS) == {"uniform", "key_norm"}
    for name, cls in SELECTORS.items():
        selector = make_selector(name)
        assert isinstance(selector, cls) and isinstance(selector, Selector)
        assert selector.name == name
    assert make_selector("uniform").needs_keys is False
    assert make_selector("key_norm").needs_keys is True


def test_unknown_selector_lists_names():
    with pytest.raises(ValueError, match=r"\['key_norm', 'uniform'\], got 'random'"):
        make_selector("random")


# --- uniform ------------------------------------------------------------------------------------


@given(grids)
def test_uniform_is_a_permutation_with_markers_first(grid):
    rows, cols = grid
    frame_len = tokens_per_frame(rows, cols)
    order = UniformSelector().order(rows, cols)
    assert is_permutation(order, frame_len)
    assert order[:MARKERS].tolist() == [0, 1, 2, frame_len - 1]
    layout = FrameLayout(frame_start=0, anchor_len=0, rows=rows, cols=cols)
    roles = {layout.locate(offset).role for offset in order[:MARKERS].tolist()}
    assert roles == {TokenRole.BREAK, TokenRole.GRID, TokenRole.EOSS}


def test_uniform_order_is_cached_and_not_shared():
    first = UniformSelector().order(4, 5)
    first[0] = 99
    assert UniformSelector().order(4, 5)[0] == 0
    assert uniform_order(4, 5) is uniform_order(4, 5)


def test_uniform_rejects_bad_grid():
    with pytest.raises(ValueError, match="rows must be an integer >= 1"):
        UniformSelector().order(0, 4)


def test_uniform_lumos_frame():
    order = UniformSelector().order(48, 84)
    assert is_permutation(order, 4084)
    first_cells = [cell_of(offset, 84) for offset in order[MARKERS : MARKERS + 8].tolist()]
    assert len({row // 12 for row, _ in first_cells}) >= 3  # 8 cells reach 3 of 4 row bands
    assert len({col // 21 for _, col in first_cells}) == 4  # and every column band


def quadrant_counts(cells: list[tuple[int, int]], height: int, width: int) -> list[int]:
    """Cells per quadrant; a middle row/col (odd sizes) counts in the lower/right half."""
    counts = [0, 0, 0, 0]
    for row, col in cells:
        counts[2 * (2 * row + 1 >= height) + (2 * col + 1 >= width)] += 1
    return counts


def quadrant_shares(height: int, width: int) -> list[float]:
    top, left = height // 2, width // 2
    return [
        (rows * cols) / (height * width)
        for rows in (top, height - top)
        for cols in (left, width - left)
    ]


@pytest.mark.parametrize("grid", [(r, c) for r in range(1, 13) for c in range(1, 13)] + [(48, 84)])
def test_uniform_prefixes_fill_quadrants_evenly(grid):
    """Every prefix of k cells puts k * share +- (2 + 0.1 k) cells in each quadrant."""
    rows, cols = grid
    height, width = rows, cols + 1
    cells = [cell_of(offset, cols) for offset in uniform_order(rows, cols)[MARKERS:]]
    shares = quadrant_shares(height, width)
    for k in range(1, len(cells) + 1, max(1, len(cells) // 200)):
        counts = quadrant_counts(cells[:k], height, width)
        for count, share in zip(counts, shares, strict=True):
            assert abs(count - k * share) <= 2 + 0.1 * k, (k, counts)


def largest_gap(kept: set[int], size: int) -> int:
    """Longest run of lines (rows or cols) with no kept cell, edges included."""
    edges = [-1, *sorted(kept), size]
    return max(after - before - 1 for before, after in zip(edges, edges[1:], strict=False))


@pytest.mark.parametrize("grid", [(r, c) for r in range(1, 13) for c in range(1, 13)] + [(24, 42)])
def test_uniform_prefixes_leave_no_wide_gaps(grid):
    """After k cells, an even spread covers about m = min(size, k, sqrt(k * size / other)) lines
    of each axis; the largest run of uncovered lines stays below 2.5 * size / m."""
    rows, cols = grid
    height, width = rows, cols + 1
    cells = [cell_of(offset, cols) for offset in uniform_order(rows, cols)[MARKERS:]]
    for k in range(1, len(cells) + 1):
        prefix = cells[:k]
        for axis, size, other in ((0, height, width), (1, width, height)):
            spread = max(1.0, min(size, k, (k * size / other) ** 0.5))
            gap = largest_gap({cell[axis] for cell in prefix}, size)
            assert gap + 1 <= 2.5 * size / spread, (k, axis, gap)


def test_uniform_levels_hold_one_cell_per_box():
    """A 16 x 16 grid (15 cols + newline): the first 4^j cells hit every (16/2^j)-square once."""
    cells = [cell_of(offset, 15) for offset in uniform_order(16, 15)[MARKERS:]]
    for level in range(1, 5):
        side = 16 >> level
        boxes = {(row // side, col // side) for row, col in cells[: 4**level]}
        assert len(boxes) == 4**level


# --- key norm -----------------------------------------------------------------------------------


def test_key_norm_orders_cells_by_norm_with_markers_first():
    rows, cols = 2, 3
    frame_len = tokens_per_frame(rows, cols)  # 12
    norms = torch.tensor([5.0, 5, 5, 1, 4, 2, 4, 0.5, 3, 9, 9, 5])
    keys = torch.zeros(frame_len, 2, 4)
    keys[:, :, 0] = norms[:, None]
    order = KeyNormSelector().order(rows, cols, keys)
    assert is_permutation(order, frame_len)
    # cells 3..10 by norm descending, ties (9, 9) and (4, 4) by offset
    assert order.tolist() == [0, 1, 2, 11, 9, 10, 4, 6, 8, 5, 3, 7]


def test_key_norm_averages_over_heads():
    keys = torch.zeros(tokens_per_frame(1, 1), 2, 2)  # 6 tokens, cells 3 and 4
    keys[3] = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # norms 5, 0 -> mean 2.5
    keys[4] = torch.tensor([[2.0, 0.0], [2.0, 0.0]])  # norms 2, 2 -> mean 2
    assert KeyNormSelector().order(1, 1, keys).tolist() == [0, 1, 2, 5, 3, 4]


def test_key_norm_accepts_bfloat16():
    keys = torch.randn(tokens_per_frame(3, 4), 2, 8).to(torch.bfloat16)
    assert is_permutation(KeyNormSelector().order(3, 4, keys), tokens_per_frame(3, 4))


@pytest.mark.parametrize("keys", [None, torch.zeros(5, 2, 4), torch.zeros(12, 8)])
def test_key_norm_needs_keys_of_the_frame(keys):
    with pytest.raises(ValueError, match=r"\[F, num_kv_heads, head_dim\] with F = 12"):
        KeyNormSelector().order(2, 3, keys)


@pytest.mark.parametrize("num_layers", [0, -1, 2.0, True])
def test_key_layer_needs_a_layer_count(num_layers):
    from packcache_vllm.core.select import key_layer

    with pytest.raises(ValueError, match="attention layer"):
        key_layer(num_layers)
