"""PackCacheConfig: the policy knobs, validated, and how many tokens each frame keeps.

Knobs (the names a user sees on the CLI and in per-request overrides):

- ``window`` (W, frames): frames at temporal distance d >= W from the newest complete frame are
  dropped whole; None means unbounded (the full cache).
- ``decay`` (rho): a frame at distance d keeps a fraction rho^min(d, W-1) of its tokens...
- ``min_keep`` (b_min): ...but never less than b_min.
- ``selector``: which tokens of a frame survive (see ``select.py``).

Only generated frames are counted here; anchors (the prompt, conditioning frames included) are
kept whole, forever, by the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from numbers import Integral, Real
from typing import ClassVar

from packcache_vllm.core.layout import FrameLayout
from packcache_vllm.core.select import SELECTORS, Selector, make_selector

PRESETS = ("full", "sliding", "packcache")
PACKCACHE_WINDOW = 4
PACKCACHE_DECAY = 0.5
PACKCACHE_FRAMES_WORTH = 3  # b_min = 3 / W: "three frames' worth" over the window

# Relative slack when rounding F * fraction up, so that products that are whole numbers in exact
# arithmetic (0.5 * 4084, 0.1 * 10) never round up because of float error.
_ROUNDING_SLACK = 1e-9


@dataclass(frozen=True)
class PackCacheConfig:
    """The PackCache policy. Defaults are the ``packcache`` preset (W=4, rho=1/2, b_min=3/4).

    The other frame budgets (``core/policies/``) are subclasses: they change which frames count
    as anchors (``sink_frames``), whether the newest W frames stay whole until W exist
    (``fill_phase``), or how a thinned frame's tokens are ranked (``make_selector``).
    """

    window: int | None = PACKCACHE_WINDOW
    decay: float = PACKCACHE_DECAY
    min_keep: float = PACKCACHE_FRAMES_WORTH / PACKCACHE_WINDOW
    selector: str = "uniform"

    # Fill phase: while at most W generated frames are complete, every one is kept whole.
    fill_phase: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_window(self.window)
        object.__setattr__(self, "decay", _check_fraction("decay", self.decay, allow_zero=False))
        min_keep = _check_fraction("min_keep", self.min_keep, allow_zero=True)
        object.__setattr__(self, "min_keep", min_keep)
        if self.selector not in SELECTORS:
            raise ValueError(
                f"packcache selector must be one of {sorted(SELECTORS)}, got {self.selector!r}"
            )

    @property
    def sink_frames(self) -> int:
        """Generated frames, the first ones, kept whole forever beside the prompt's anchors."""
        return 0

    def eviction_layout(self, layout: FrameLayout) -> FrameLayout:
        """The request's layout as eviction sees it: the sink frames join the anchors (kept
        whole, never moved, rebased in time with the prompt); generated frame 0 of the budget is
        the first frame after them."""
        if not self.sink_frames:
            return layout
        sinks_len = self.sink_frames * layout.tokens_per_frame
        return replace(layout, anchor_len=layout.anchor_len + sinks_len)

    def make_selector(self) -> Selector:
        """The selector that ranks a thinned frame's tokens (``select.py``)."""
        return make_selector(self.selector)

    def max_history_tokens(self, tokens_per_frame: int) -> int | None:
        """The most tokens the complete generated frames past the sinks ever keep at once (the
        fill phase's W whole frames, or the steady state's sum); None when unbounded."""
        if self.window is None:
            return None
        if self.fill_phase:
            return self.window * tokens_per_frame
        total = 0
        for distance in range(self.window):  # shares shrink with distance, to 1 token at least
            kept = self._keep_at(distance, tokens_per_frame)
            if kept == 1:
                return total + self.window - distance
            total += kept
        return total

    @classmethod
    def preset(cls, name: str, **overrides: object) -> PackCacheConfig:
        """A named configuration, with any knob overridden.

        - ``full``: window None; every frame kept whole (the stock cache).
        - ``sliding``: window 1; only the newest complete frame is kept, whole.
        - ``packcache``: window 4, decay 1/2, min_keep 3/W. At W = 4 the history settles at
          1 + 3 * 3/4 = 3.25 frames' worth of tokens, "about three frames' worth", the best of the
          paper's b_min ablation (2/W ... 5/W); and the fill phase ends after 4 of Lumos-1's 12
          generated latent frames, so most of a 13-latent-frame video runs at bounded cost.
          Overriding ``window`` without ``min_keep`` keeps min_keep = 3/W (capped at 1).
          Note: while W <= 6, 3/W >= 1/2 >= rho^d for every d >= 1, so the floor, not the
          decay, sets every older frame's share; decay shapes the budget only for W > 6.
        """
        if name not in PRESETS:
            raise ValueError(f"packcache preset must be one of {list(PRESETS)}, got {name!r}")
        unknown = sorted(set(overrides) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"unknown packcache knob(s) {unknown}; "
                f"valid knobs: {sorted(cls.__dataclass_fields__)}"
            )
        base = _preset_base(name)
        window = overrides.get("window", base.window)
        if name == "packcache" and "min_keep" not in overrides and _is_window(window):
            overrides = {**overrides, "min_keep": min(1.0, PACKCACHE_FRAMES_WORTH / window)}
        return replace(base, **overrides)

    @property
    def is_bounded(self) -> bool:
        return self.window is not None

    @property
    def thins_frames(self) -> bool:
        """Whether some frame ever keeps only part of its tokens (then which ones, the
        selector's order, matters); the share never grows with distance."""
        return self.is_bounded and self.frame_fraction(self.window - 1) < 1

    def frame_fraction(self, distance: int) -> float:
        """Fraction of its tokens a frame keeps at ``distance`` < W past the fill phase."""
        if self.window is None:
            return 1.0
        return max(self.decay ** min(distance, self.window - 1), self.min_keep)

    def keep_counts(self, num_complete_frames: int, tokens_per_frame: int) -> tuple[int, ...]:
        """Tokens kept by each of the ``num_complete_frames`` generated frames, oldest first.

        Fill phase (window None, or at most W complete frames, where ``fill_phase``): every frame
        keeps all F tokens.
        After it, the frame at distance d (d = 0 is the newest) keeps
        min(F, ceil(F * max(rho^min(d, W-1), b_min))) tokens, at least 1, and 0 once d >= W.
        """
        _check_count("num_complete_frames", num_complete_frames, 0)
        _check_count("tokens_per_frame", tokens_per_frame, 1)
        n, frame_len = num_complete_frames, tokens_per_frame
        if self.window is None or (self.fill_phase and n <= self.window):
            return (frame_len,) * n
        return tuple(self._keep_at(n - 1 - i, frame_len) for i in range(n))

    def _keep_at(self, distance: int, frame_len: int) -> int:
        if distance >= self.window:
            return 0
        return max(1, min(frame_len, _ceil(frame_len * self.frame_fraction(distance))))

    def steady_state_frames(self) -> float | None:
        """Frames' worth of history kept after the fill phase: sum over d < W of
        max(rho^min(d, W-1), b_min) (before rounding up per frame). None when unbounded."""
        if self.window is None:
            return None
        return sum(self.frame_fraction(d) for d in range(self.window))

    def dropped_frames(self, num_complete_frames: int) -> int:
        """Generated frames dropped whole once ``num_complete_frames`` are complete."""
        _check_count("num_complete_frames", num_complete_frames, 0)
        if self.window is None:
            return 0
        return max(0, num_complete_frames - self.window)


def _preset_base(name: str) -> PackCacheConfig:
    if name == "full":
        return PackCacheConfig(window=None, decay=1.0, min_keep=1.0)
    if name == "sliding":
        return PackCacheConfig(window=1, decay=1.0, min_keep=1.0)
    return PackCacheConfig()


def _ceil(value: float) -> int:
    """ceil(value), forgiving float error of relative size _ROUNDING_SLACK (monotone in value)."""
    return math.ceil(value - _ROUNDING_SLACK * max(1.0, value))


def _is_window(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_window(window: object) -> None:
    if window is not None and not _is_window(window):
        raise ValueError(
            f"packcache window must be an integer >= 1 or None (unbounded), got {window!r}"
        )


def _check_fraction(knob: str, value: object, allow_zero: bool) -> float:
    """Validate a real number in [0, 1] (or (0, 1]) and return it as a float."""
    allowed = "[0, 1]" if allow_zero else "(0, 1]"
    is_number = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (is_number and (value >= 0 if allow_zero else value > 0) and value <= 1):
        raise ValueError(f"packcache {knob} must be a number in {allowed}, got {value!r}")
    return float(value)


def check_count_knob(name: str, value: object, minimum: int) -> int:
    """A policy's integer knob: ValueError "<name> must be an integer >= <minimum>, got ..."."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_fraction_knob(name: str, value: object) -> float:
    """A policy's share knob in (0, 1], as a float; ValueError naming it, the value, the range."""
    if not (_is_real(value) and 0 < value <= 1):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def check_open_fraction(name: str, value: object) -> float:
    """A policy's ratio knob in (0, 1), as a float; ValueError naming it, the value, the range."""
    if not (_is_real(value) and 0 < value < 1):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def bound_tokens(layout: FrameLayout, config: PackCacheConfig, max_tokens: int) -> int:
    """The most tokens a request's cache ever holds: anchors + sink frames + the most history
    the budget keeps (W whole frames with a fill phase) + the current frame (or the whole
    request, if shorter). ``layout``: the prompt's layout."""
    longest = layout.anchor_len + max_tokens
    if not config.is_bounded:
        return longest
    frame_len = layout.tokens_per_frame
    kept = config.sink_frames * frame_len + config.max_history_tokens(frame_len) + frame_len
    return min(longest, layout.anchor_len + kept)
