"""The colour palette: a visual token is one coloured cell, code k = palette entry k (no VQ).

Entries 0-5 are background tones, 6-15 object colours. ``INVALID_RGB`` paints cells whose token
is not a palette code (a model that emitted a marker where a colour belongs).
"""

from __future__ import annotations

import torch

PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("charcoal", (40, 44, 52)),
    ("slate", (84, 96, 112)),
    ("sand", (196, 178, 140)),
    ("olive", (110, 120, 70)),
    ("navy", (30, 45, 90)),
    ("teal", (40, 110, 110)),
    ("red", (220, 50, 47)),
    ("orange", (245, 140, 30)),
    ("yellow", (250, 220, 40)),
    ("green", (60, 190, 80)),
    ("cyan", (60, 210, 230)),
    ("blue", (50, 100, 240)),
    ("purple", (150, 80, 220)),
    ("pink", (245, 120, 190)),
    ("white", (245, 245, 245)),
    ("black", (10, 10, 10)),
)
PALETTE_SIZE = len(PALETTE)
BACKGROUND_COLOURS = tuple(range(0, 6))
OBJECT_COLOURS = tuple(range(6, 16))
INVALID_RGB = (255, 0, 255)


def colour_name(index: int) -> str:
    if not 0 <= index < PALETTE_SIZE:
        raise ValueError(f"palette index must be in [0, {PALETTE_SIZE}), got {index}")
    return PALETTE[index][0]


def palette_rgb() -> torch.Tensor:
    """[PALETTE_SIZE + 1, 3] uint8: the palette, then INVALID_RGB."""
    return torch.tensor([rgb for _, rgb in PALETTE] + [INVALID_RGB], dtype=torch.uint8)
