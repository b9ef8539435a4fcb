"""sink-window: the first S generated frames kept whole forever (attention sinks, beside the
prompt's anchors), plus the newest W frames whole; every frame between them is dropped whole.

The frame-level sink + rolling window of the Wan-family autoregressive video models (LongLive:
3 sink frames + a 12-frame window; Self-Forcing presets: sink 5 + window 7), after StreamingLLM's
token sinks (Xiao et al., arXiv 2309.17453). Here the sinks join the anchors
(``eviction_layout``): they are never moved and, when frames are dropped, rebased in time with
the prompt, so the kept window sits right after them.
"""

from __future__ import annotations

from dataclasses import dataclass

from packcache_vllm.core.budget import PackCacheConfig, check_count_knob

SINK_WINDOW_SINKS = 1
SINK_WINDOW_WINDOW = 3  # with one sink: 4 whole frames of history, PackCache's 3.25 frames' worth


@dataclass(frozen=True)
class SinkWindowPolicy(PackCacheConfig):
    """S sink frames + the newest W frames, all whole (decay and min_keep are 1: no frame is
    thinned, so no selector is consulted).

    Parameters
    ----------
    sinks : the first generated frames kept forever, an integer >= 0 (0: a plain window).
    window : the newest frames kept, an integer >= 1.
    """

    window: int = SINK_WINDOW_WINDOW
    decay: float = 1.0
    min_keep: float = 1.0
    sinks: int = SINK_WINDOW_SINKS

    def __post_init__(self) -> None:
        check_count_knob("sink-window window", self.window, 1)
        check_count_knob("sink-window sinks", self.sinks, 0)
        super().__post_init__()
        if (self.decay, self.min_keep) != (1.0, 1.0):
            raise ValueError(
                f"sink-window keeps its frames whole: decay and min_keep are 1, got "
                f"{self.decay!r} and {self.min_keep!r}"
            )

    @property
    def sink_frames(self) -> int:
        return self.sinks
