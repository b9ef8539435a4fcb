"""geometric: the frame at temporal distance d keeps decay^d of its tokens (FramePack's
geometric context compression, Zhang & Agrawala, arXiv 2504.12626), and a frame whose share
falls below ``floor`` is dropped whole.

Unlike PackCache there is no fill phase: the frame at distance 1 is thinned as soon as it has a
successor. The window is derived: W = the number of distances d with decay^d >= floor (decay 1/2,
floor 1/16: W = 5, shares 1, 1/2, 1/4, 1/8, 1/16, 1.94 frames' worth of history).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from packcache_vllm.core.budget import PackCacheConfig, check_fraction_knob, check_open_fraction

GEOMETRIC_DECAY = 0.5
GEOMETRIC_FLOOR = 1 / 16
# Relative slack on the floor, so that decay^d equal to it in exact arithmetic (0.5^4 = 1/16)
# is kept despite float error.
_FLOOR_SLACK = 1e-9


@dataclass(frozen=True)
class GeometricPolicy(PackCacheConfig):
    """decay^d of a frame's tokens at distance d, dropped below ``floor``.

    Parameters
    ----------
    decay : the share kept per frame of distance, a number in (0, 1).
    floor : the smallest share kept; a frame below it is dropped, a number in (0, 1].
    selector : which tokens of a thinned frame survive (``core.select``).

    ``window`` is derived from decay and floor (any value given is replaced), ``min_keep`` is 0.
    """

    window: int | None = None
    decay: float = GEOMETRIC_DECAY
    min_keep: float = 0.0
    floor: float = GEOMETRIC_FLOOR

    fill_phase: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "decay", check_open_fraction("geometric decay", self.decay))
        object.__setattr__(self, "floor", check_fraction_knob("geometric floor", self.floor))
        object.__setattr__(self, "min_keep", 0.0)
        object.__setattr__(self, "window", geometric_window(self.decay, self.floor))
        super().__post_init__()


def geometric_window(decay: float, floor: float) -> int:
    """The number of distances d >= 0 with decay^d >= floor (at least 1: decay^0 = 1)."""
    window = 1 + math.floor(math.log(floor) / math.log(decay) + _FLOOR_SLACK)
    while decay**window >= floor * (1 - _FLOOR_SLACK):
        window += 1
    while window > 1 and decay ** (window - 1) < floor * (1 - _FLOOR_SLACK):
        window -= 1
    return window
