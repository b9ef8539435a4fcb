"""What the scheduler tells the workers about one request's compaction, once per completed frame.

Slots are global cache slots (``block_id * block_size + offset``). The worker first puts every
frame of ``frames_to_order`` into its selector's priority order in place (a key-reading selector:
the order comes from the frame's cached keys, which only the worker has; an attention-reading
one also needs the queries the worker recorded), then gathers every
source before scattering (so overlapping moves are safe), then rotates the anchors' keys so that
they sit ``t_stride * dropped_frames`` later in time (the rebase), then replaces the request's
block-table row with ``block_ids``. A plan carries only what the worker uses, as plain integers:
the worker makes one index tensor per slot list on its device and reads nothing back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from packcache_vllm.core.select import Selector


@dataclass(frozen=True)
class AttentionContext:
    """For a selector that reads attention (``needs_attention``): where each frame of a
    ``FramesToOrder`` and its newer frame sit, for the worker to recompute the newer frame's
    softmax over what its queries saw (the cache does not change while a frame is generated).

    context_slots: the global slots of the request's physical tokens [0, P) before this
    compaction, in physical order; P is the physical end of the last newer frame.
    frame_positions: per frame, its F physical positions (indices into context_slots) in offset
    order. newer_starts: per frame, (logical index, physical position) of its newer frame's
    first token; that frame's F tokens follow it contiguously in both, and its query at offset
    i saw physical positions [0, physical + i].
    """

    context_slots: tuple[int, ...]
    frame_positions: tuple[tuple[int, ...], ...]
    newer_starts: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class FramesToOrder:
    """Frames that complete in this compaction, for a selector that reads keys.

    slots: per frame, its F global slots in frame-offset (raster) order. The worker reorders
    each frame's tokens within these slots so that slot i holds the token of priority i; the
    moves of the plan were made for that arrangement (they keep a prefix of each frame).
    newer_slots: for a selector that compares a frame with the next one (``needs_newer_frame``;
    then the frames are those that gain a successor in this compaction), per frame the next
    frame's F global slots in offset order; None otherwise.
    attention: for a selector that reads attention, where to recompute it; None otherwise.
    """

    selector: Selector
    slots: tuple[tuple[int, ...], ...]
    newer_slots: tuple[tuple[int, ...], ...] | None = None
    attention: AttentionContext | None = None


@dataclass(frozen=True)
class WorkerPlan:
    src_slots: tuple[int, ...]
    dst_slots: tuple[int, ...]
    block_ids: tuple[int, ...]  # the request's whole (packed) block list after compaction
    evicted_tokens: int  # E: logical length - physical length, from now on
    dropped_frames: int  # generated frames dropped whole so far
    anchor_len: int  # physical slots [0, anchor_len) hold the anchors, never moved
    t_stride: int  # MM-RoPE time units per frame
    frames_to_order: FramesToOrder | None = None  # None: the scheduler's orders were final
    # A selector that reads attention: the worker's recorded queries at logical indices below
    # this one are no longer needed (they belong to complete frames). None: nothing recorded.
    keep_queries_from: int | None = None


def global_slots(
    block_ids: Sequence[int], block_size: int, physical: Iterable[int]
) -> tuple[int, ...]:
    """The global cache slots of a request's physical slots, through its block list."""
    return tuple(block_ids[s // block_size] * block_size + s % block_size for s in physical)
