"""What the scheduler tells the workers about one request's compaction, once per completed frame.

Slots are global cache slots (``block_id * block_size + offset``). The worker first puts every
frame of ``frames_to_order`` into its selector's priority order in place (a key-reading selector:
the order comes from the frame's cached keys, which only the worker has), then gathers every
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
class FramesToOrder:
    """Frames that complete in this compaction, for a selector that reads keys.

    slots: per frame, its F global slots in frame-offset (raster) order. The worker reorders
    each frame's tokens within these slots so that slot i holds the token of priority i; the
    moves of the plan were made for that arrangement (they keep a prefix of each frame).
    newer_slots: for a selector that compares a frame with the next one (``needs_newer_frame``;
    then the frames are those that gain a successor in this compaction), per frame the next
    frame's F global slots in offset order; None otherwise.
    """

    selector: Selector
    slots: tuple[tuple[int, ...], ...]
    newer_slots: tuple[tuple[int, ...], ...] | None = None


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


def global_slots(
    block_ids: Sequence[int], block_size: int, physical: Iterable[int]
) -> tuple[int, ...]:
    """The global cache slots of a request's physical slots, through its block list."""
    return tuple(block_ids[s // block_size] * block_size + s % block_size for s in physical)
