"""Selectors: the priority order of one frame's tokens.

A frame of ``rows x cols`` holds F = rows * (cols + 1) + 4 tokens at offsets 0..F-1 (as in
``FrameLayout``): 0 = <break>, 1 and 2 = grid tokens, then the rows of (cols visual tokens + one
newline), F-1 = <eoss>. A selector fixes, once per frame, a permutation of range(F); keeping k
tokens of the frame keeps the first k of that order, so the kept sets are nested as it ages.

Every selector here puts the four markers first (<break>, <grid_h>, <grid_w>, <eoss>): they are 4
of thousands of tokens and the model sees them at every frame boundary. The newline column is
treated as an ordinary column of cells.
"""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass
from typing import ClassVar

import torch

from packcache_vllm.core.layout import NUM_LEADING_MARKERS, tokens_per_frame


def marker_offsets(rows: int, cols: int) -> tuple[int, ...]:
    """Offsets of <break>, <grid_h>, <grid_w>, <eoss> in a frame, in priority order."""
    return (*range(NUM_LEADING_MARKERS), tokens_per_frame(rows, cols) - 1)


def cell_offsets(rows: int, cols: int) -> range:
    """Offsets of the rows x (cols + 1) cells (visual tokens and row newlines), in raster order."""
    return range(NUM_LEADING_MARKERS, tokens_per_frame(rows, cols) - 1)


def check_grid(rows: int, cols: int) -> None:
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"selector {name} must be an integer >= 1, got {value!r}")


def key_layer(num_layers: int) -> int:
    """The attention layer whose cached keys a key-reading selector reads: the last one.

    One order per frame serves every layer (a kept token keeps its K and V in all layers). Not
    the first layer: its keys are a function of the token id alone (no attention has mixed in
    any context yet), so every cell of the same code ties and the order degenerates to a
    ranking of codes.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"a key-reading selector needs >= 1 attention layer, got {num_layers!r}")
    return num_layers - 1


class Selector(abc.ABC):
    """One token-priority policy. ``needs_keys``: ``order`` reads the frame's keys (of the
    layer ``key_layer`` names). ``needs_newer_frame``: it also reads the keys of the frame that
    follows, so a frame is ordered when its successor completes, not when it does (it is still
    whole then: a frame at distance 0 is never thinned). ``needs_attention``: it reads the
    attention the next frame's queries paid to the frame's tokens (then ``needs_keys`` and
    ``needs_newer_frame`` hold too: the worker computes it from the cached keys)."""

    name: ClassVar[str]
    needs_keys: ClassVar[bool]
    needs_newer_frame: ClassVar[bool] = False
    needs_attention: ClassVar[bool] = False

    @abc.abstractmethod
    def order(
        self,
        rows: int,
        cols: int,
        keys: torch.Tensor | None = None,
        newer_keys: torch.Tensor | None = None,
        attention: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Priority order of a frame's tokens.

        keys: [F, num_kv_heads, head_dim] float keys of the frame (one layer), F = rows * (cols + 1)
        + 4, in logical (raster) order; only read when ``needs_keys``. newer_keys: the same of
        the next frame, at the same rotary time as ``keys`` (pre-RoPE, or both rotated to one
        time); only read when ``needs_newer_frame``. attention: [F] float, per token of the
        frame the attention probability the next frame's queries paid to it (in the last
        layer, summed over those queries, averaged over heads); only read when
        ``needs_attention``.
        Returns [F] int64, a permutation of range(F), most important token first.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class UniformSelector(Selector):
    """Markers, then cells in a spatially uniform order: every prefix is spread over the frame.

    The order refines boxes coarse to fine. At each level the grid is cut into equal boxes,
    2^a x 2^b of them, each about square in cells (the longer axis is halved first), and every
    box that holds no chosen cell yet elects the cell nearest its centre. So once a level is
    done, every non-empty box of that level holds exactly one chosen cell. Within a level, boxes
    go in bit-reversed Morton order, which cycles through the halves, then quarters, ... of the
    frame, so partial levels are spread too.
    """

    name = "uniform"
    needs_keys = False

    def order(
        self, rows: int, cols: int, keys=None, newer_keys=None, attention=None
    ) -> torch.Tensor:
        """Returns [F] int64 (CPU); ``keys`` and ``newer_keys`` are ignored."""
        check_grid(rows, cols)
        return torch.tensor(uniform_order(rows, cols), dtype=torch.int64)


@functools.lru_cache(maxsize=64)
def uniform_order(rows: int, cols: int) -> tuple[int, ...]:
    """The UniformSelector order as a tuple of offsets (cached per grid)."""
    cells = uniform_cell_order(rows, cols + 1)
    return marker_offsets(rows, cols) + tuple(NUM_LEADING_MARKERS + cell for cell in cells)


def uniform_cell_order(height: int, width: int) -> list[int]:
    """Raster indices (r * width + c) of a height x width grid, in coarse-to-fine spread order."""
    levels = _AxisLevels(height, width)
    rows = torch.arange(height, dtype=torch.int64).repeat_interleave(width)
    cols = torch.arange(width, dtype=torch.int64).repeat(height)
    gap = torch.full((height * width,), height * height + width * width, dtype=torch.int64)
    chosen = [False] * (height * width)
    order: list[int] = []
    for level in range(1, levels.finest + 1):
        for _, cell in sorted(_level_picks(levels, level, chosen, gap.tolist())):
            chosen[cell] = True
            order.append(cell)
            r, c = divmod(cell, width)
            gap = torch.minimum(gap, (rows - r) ** 2 + (cols - c) ** 2)
    return order


@dataclass(frozen=True)
class _AxisLevels:
    """How many times each axis has been halved at a refinement level.

    The longer axis is halved at every level; the shorter one starts later, so boxes stay about
    square in cell units (a 48 x 85 frame: 1 x 2 boxes, then 2 x 4, 4 x 8, ...). At the finest
    level every cell is alone in its box.
    """

    height: int
    width: int

    @property
    def row_bits(self) -> int:
        return (self.height - 1).bit_length()

    @property
    def col_bits(self) -> int:
        return (self.width - 1).bit_length()

    @property
    def finest(self) -> int:
        return max(self.row_bits, self.col_bits, 1)

    def splits(self, level: int) -> tuple[int, int]:
        """(row halvings, col halvings) at ``level``."""
        return (
            max(0, level - (self.finest - self.row_bits)),
            max(0, level - (self.finest - self.col_bits)),
        )


def _level_picks(
    levels: _AxisLevels, level: int, chosen: list[bool], gap: list[int]
) -> list[tuple[int, int]]:
    """(box rank, cell) for every box of ``level`` that holds no chosen cell yet. Each such box
    elects the cell nearest its centre; ties go to the cell farthest from the cells chosen before
    this level (``gap``: squared distance in cells to the nearest one), then the lowest index."""
    row_splits, col_splits = levels.splits(level)
    width = levels.width
    best: dict[tuple[int, int], tuple[float, int, int]] = {}
    taken: set[tuple[int, int]] = set()
    for r in range(levels.height):
        box_r, dist_r = _box_and_distance(r, levels.height, row_splits)
        for c in range(width):
            box_c, dist_c = _box_and_distance(c, width, col_splits)
            box, cell = (box_r, box_c), r * width + c
            if chosen[cell]:
                taken.add(box)
                continue
            candidate = (dist_r * dist_r + dist_c * dist_c, -gap[cell], cell)
            if box not in best or candidate < best[box]:
                best[box] = candidate
    return [
        (_box_rank(box, (row_splits, col_splits), level), cell)
        for box, (_, _, cell) in best.items()
        if box not in taken
    ]


def _box_and_distance(index: int, size: int, splits: int) -> tuple[int, float]:
    """Box of cell ``index`` among 2^splits equal boxes of [0, size), and the distance (in
    cells) from the cell's centre to the box's centre."""
    boxes = 1 << splits
    box = ((2 * index + 1) * boxes) // (2 * size)
    distance = abs((2 * index + 1) * boxes - (2 * box + 1) * size) / (2 * boxes)
    return box, distance


def _box_rank(box: tuple[int, int], splits: tuple[int, int], level: int) -> int:
    """Bit-reversed Morton rank of a box: its coarsest bits are the key's lowest digits, so
    consecutive boxes in rank order fall in different halves, then different quarters...

    At each depth (coarse to fine) the digit holds the row and/or column bit of that depth
    (axes halved fewer times start later); with both, the diagonal pairs come first:
    (0,0), (1,1), (0,1), (1,0).
    """
    key, radix = 0, 1
    for depth in range(level):
        bits = [
            (box[axis] >> (splits[axis] - 1 - axis_depth)) & 1
            for axis in (0, 1)
            if 0 <= (axis_depth := depth - (level - splits[axis])) < splits[axis]
        ]
        if len(bits) == 2:
            r, c = bits
            digit, base = ((r ^ c) << 1) | r, 4
        elif bits:
            digit, base = bits[0], 2
        else:
            continue
        key += digit * radix
        radix *= base
    return key


class KeyNormSelector(Selector):
    """Markers, then cells by descending key L2 norm (mean over heads); ties by lower offset."""

    name = "key_norm"
    needs_keys = True

    def order(
        self, rows: int, cols: int, keys=None, newer_keys=None, attention=None
    ) -> torch.Tensor:
        """keys: [F, num_kv_heads, head_dim]. Returns [F] int64 on keys' device."""
        frame_len = check_frame_keys(self.name, "the frame's keys", rows, cols, keys)
        cells = torch.arange(NUM_LEADING_MARKERS, frame_len - 1, device=keys.device)
        norms = keys[cells].float().norm(dim=-1).mean(dim=-1)  # [cells]
        by_norm = torch.sort(norms, descending=True, stable=True).indices
        markers = torch.tensor(marker_offsets(rows, cols), dtype=torch.int64, device=keys.device)
        return torch.cat([markers, cells[by_norm]])


def check_frame_keys(name: str, what: str, rows: int, cols: int, keys) -> int:
    """F, after checking ``keys`` is [F, num_kv_heads, head_dim] for a rows x cols frame."""
    check_grid(rows, cols)
    frame_len = tokens_per_frame(rows, cols)
    if keys is None or keys.dim() != 3 or keys.shape[0] != frame_len:
        got = "None" if keys is None else list(keys.shape)
        raise ValueError(
            f"selector {name!r} needs {what} of shape [F, num_kv_heads, head_dim] "
            f"with F = {frame_len} ({rows} rows x {cols} cols), got {got}"
        )
    return frame_len


SELECTORS: dict[str, type[Selector]] = {
    UniformSelector.name: UniformSelector,
    KeyNormSelector.name: KeyNormSelector,
}


def make_selector(name: str) -> Selector:
    if name not in SELECTORS:
        raise ValueError(f"packcache selector must be one of {sorted(SELECTORS)}, got {name!r}")
    return SELECTORS[name]()
