"""From one request's physical KV state to a CompactionPlan: slot moves, blocks to free, new state.

Physical (cache slot) layout of a request's KV:

    anchors [0, anchor_len)       logical order, kept whole forever, never moved
    history [anchor_len, +H)      the kept tokens of the complete frames, H in all, densely
                                  packed in no particular order: each frame records the slot of
                                  each token it keeps (``KeptFrame.slots``, in priority order)
    tail                          the tokens after the last complete frame, in logical order
                                  (new tokens land at physical = logical - evicted)

Attention over the cache is a set operation (every key carries its own rotary position), so the
history needs no order. That is what keeps compaction cheap: evicted tokens leave holes below the
new history length, and only the kept tokens above it move into those holes (plus the tail,
which moves down by what was evicted). A frame that keeps fewer tokens keeps a prefix of its
priority order, so its kept sets are nested as it ages.

Generated frame g (g = 0 is the first generated frame) covers logical indices
anchor_len + g * F ... anchor_len + (g + 1) * F - 1; offsets inside a frame are as in FrameLayout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral

import torch

from packcache_vllm.core.budget import PackCacheConfig


@dataclass(frozen=True)
class KeptFrame:
    """Generated frame ``frame`` keeps the first ``kept`` tokens of its priority order; the
    token of priority i sits in physical slot ``slots[i]``."""

    frame: int
    slots: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_int("KeptFrame.frame", self.frame, 0)
        if not self.slots:
            raise ValueError(f"KeptFrame {self.frame} must keep at least one token (slots empty)")
        if min(self.slots) < 0:
            raise ValueError(f"KeptFrame {self.frame}: slots must be >= 0, got {min(self.slots)}")

    @property
    def kept(self) -> int:
        return len(self.slots)


@dataclass(frozen=True)
class PhysicalState:
    """What one request's cache slots hold (see the module docstring).

    frames: the history, oldest first; always the frames dropped_frames, dropped_frames + 1, ...
    (frames leave the history oldest first); their slots fill [anchor_len, anchor_len + H)
    exactly. dropped_frames: generated frames dropped whole.
    """

    anchor_len: int
    frames: tuple[KeptFrame, ...]
    tail_len: int
    dropped_frames: int

    def __post_init__(self) -> None:
        for name in ("anchor_len", "tail_len", "dropped_frames"):
            _check_int(f"PhysicalState.{name}", getattr(self, name), 0)
        for position, kept_frame in enumerate(self.frames):
            expected = self.dropped_frames + position
            if kept_frame.frame != expected:
                raise ValueError(
                    f"PhysicalState.frames must be the consecutive frames from dropped_frames="
                    f"{self.dropped_frames}; position {position} holds frame {kept_frame.frame}"
                )
        slots = sorted(slot for kept_frame in self.frames for slot in kept_frame.slots)
        if slots != list(range(self.anchor_len, self.anchor_len + len(slots))):
            raise ValueError(
                f"PhysicalState: the history frames' slots must fill [{self.anchor_len}, "
                f"{self.anchor_len + len(slots)}) exactly once each, right after the anchors"
            )

    @classmethod
    def initial(cls, anchor_len: int) -> PhysicalState:
        return cls(anchor_len=anchor_len, frames=(), tail_len=0, dropped_frames=0)

    @property
    def history_len(self) -> int:
        return sum(kept_frame.kept for kept_frame in self.frames)

    @property
    def physical_len(self) -> int:
        return self.anchor_len + self.history_len + self.tail_len

    @property
    def num_complete_frames(self) -> int:
        """Generated frames completed so far, dropped ones included."""
        return self.dropped_frames + len(self.frames)

    def logical_len(self, tokens_per_frame: int) -> int:
        """Tokens of the request this state accounts for (anchors + generated)."""
        return self.anchor_len + self.num_complete_frames * tokens_per_frame + self.tail_len

    def kept_of(self, frame: int) -> int:
        """Tokens generated frame ``frame`` keeps (0 once dropped); complete frames only."""
        if not 0 <= frame < self.num_complete_frames:
            raise ValueError(
                f"frame {frame} is not a complete frame (0 .. {self.num_complete_frames - 1})"
            )
        if frame < self.dropped_frames:
            return 0
        return self.frames[frame - self.dropped_frames].kept


@dataclass(frozen=True)
class CompactionPlan:
    """Slot moves and block changes that turn the current physical state into ``new_state``.

    src, dst: physical slots; the executor gathers every src first, then scatters to dst (so the
    two may overlap); only moves with src != dst are listed, and dst slots are distinct.
    num_blocks_kept: ceil(new physical length / block_size); freed_blocks: the request's block
    ids past those. evicted_tokens: logical length - new physical length (never decreases).
    dropped_frames: generated frames dropped whole so far (the temporal rebase is
    t_stride * dropped_frames).
    """

    src: tuple[int, ...]
    dst: tuple[int, ...]
    new_state: PhysicalState
    num_blocks_kept: int
    freed_blocks: tuple[int, ...]
    evicted_tokens: int
    dropped_frames: int

    @property
    def num_moves(self) -> int:
        return len(self.src)


def num_new_complete_frames(state: PhysicalState, logical_len: int, tokens_per_frame: int) -> int:
    """Frames that complete when the cache holds ``logical_len`` tokens; with 0, a plan would
    move nothing (it could only free blocks past the current length)."""
    _check_int("tokens_per_frame", tokens_per_frame, 1)
    return _grown_tail_len(state, logical_len, tokens_per_frame) // tokens_per_frame


def make_plan(
    state: PhysicalState,
    logical_len: int,
    tokens_per_frame: int,
    config: PackCacheConfig,
    orders: Mapping[int, Sequence[int]],
    block_ids: Sequence[int],
    block_size: int,
) -> CompactionPlan:
    """Plan the compaction after the cache has grown to ``logical_len`` tokens.

    state: the physical state after the previous plan (or ``PhysicalState.initial``); tokens
    computed since then extend its tail, contiguous in logical order, so the current physical
    length is state.physical_len + (logical_len - state.logical_len(F)).
    orders: frame -> priority order (a permutation of range(F), list or [F] int64 tensor); needed
    for every frame that becomes history in this plan, the others are not read.
    block_ids: the request's block list, covering at least the current physical length.
    """
    frame_len = tokens_per_frame
    _check_int("tokens_per_frame", frame_len, 1)
    _check_int("block_size", block_size, 1)
    _check_history(state, frame_len)
    tail_len = _grown_tail_len(state, logical_len, frame_len)
    current_len = state.physical_len + tail_len - state.tail_len
    if len(block_ids) * block_size < current_len:
        raise ValueError(
            f"block list too short: {len(block_ids)} blocks of {block_size} slots cannot hold "
            f"the current {current_len} physical tokens"
        )

    num_complete = state.num_complete_frames + tail_len // frame_len
    counts = config.keep_counts(num_complete, frame_len)
    new_dropped = _check_counts(state, counts)
    kept = _kept_slots(state, counts, new_dropped, frame_len, orders)
    history_end = state.anchor_len + sum(len(slots) for slots in kept.values())
    relocation = _fill_holes(kept, state.anchor_len, history_end)
    new_frames = tuple(
        KeptFrame(frame, tuple(relocation.get(slot, slot) for slot in slots))
        for frame, slots in kept.items()
    )
    new_state = PhysicalState(state.anchor_len, new_frames, tail_len % frame_len, new_dropped)

    moves = [*relocation.items(), *_tail_moves(state, new_state, frame_len)]
    new_len = new_state.physical_len
    num_blocks_kept = -(-new_len // block_size)
    return CompactionPlan(
        src=tuple(src for src, _ in moves),
        dst=tuple(dst for _, dst in moves),
        new_state=new_state,
        num_blocks_kept=num_blocks_kept,
        freed_blocks=tuple(block_ids[num_blocks_kept:]),
        evicted_tokens=logical_len - new_len,
        dropped_frames=new_dropped,
    )


def physical_contents(
    state: PhysicalState, orders: Mapping[int, Sequence[int]], tokens_per_frame: int
) -> list[int]:
    """The logical index each physical slot holds (anchors are their own index)."""
    contents = list(range(state.anchor_len)) + [0] * state.history_len
    for kept_frame in state.frames:
        start = state.anchor_len + kept_frame.frame * tokens_per_frame
        order = _order_of(orders, kept_frame.frame, tokens_per_frame)
        for slot, offset in zip(kept_frame.slots, order, strict=False):
            contents[slot] = start + offset
    tail_start = state.anchor_len + state.num_complete_frames * tokens_per_frame
    contents.extend(range(tail_start, tail_start + state.tail_len))
    return contents


def _kept_slots(
    old: PhysicalState,
    counts: Sequence[int],
    new_dropped: int,
    frame_len: int,
    orders: Mapping[int, Sequence[int]],
) -> dict[int, tuple[int, ...]]:
    """For every frame of the new history, oldest first, the current slots of the tokens it
    keeps, in priority order (a frame completing now is still in the tail, in raster order)."""
    tail_start = old.anchor_len + old.history_len
    kept = {}
    for frame in range(new_dropped, len(counts)):
        count = counts[frame]
        if frame < old.num_complete_frames:  # already history: keep a prefix
            kept[frame] = old.frames[frame - old.dropped_frames].slots[:count]
        else:  # completes now
            frame_start = tail_start + (frame - old.num_complete_frames) * frame_len
            order = _order_of(orders, frame, frame_len)
            kept[frame] = tuple(frame_start + offset for offset in order[:count])
    return kept


def _fill_holes(
    kept: Mapping[int, Sequence[int]], history_start: int, history_end: int
) -> dict[int, int]:
    """Source slot -> hole: the kept tokens at or past ``history_end`` move into the slots of
    [history_start, history_end) that hold no kept token (as many of one as of the other)."""
    staying = {slot for slots in kept.values() for slot in slots if slot < history_end}
    holes = [slot for slot in range(history_start, history_end) if slot not in staying]
    movers = sorted(slot for slots in kept.values() for slot in slots if slot >= history_end)
    return dict(zip(movers, holes, strict=True))


def _tail_moves(old: PhysicalState, new: PhysicalState, frame_len: int) -> list[tuple[int, int]]:
    """(src, dst) of the new tail's tokens: they follow the frames completing now in the
    current tail and go right after the new history, in logical order."""
    completed = new.num_complete_frames - old.num_complete_frames
    src_start = old.anchor_len + old.history_len + completed * frame_len
    dst_start = new.anchor_len + new.history_len
    return [(src_start + i, dst_start + i) for i in range(new.tail_len) if src_start != dst_start]


def _order_of(orders: Mapping[int, Sequence[int]], frame: int, frame_len: int) -> list[int]:
    """The priority order of ``frame`` as a list, checked to be a permutation of range(F)."""
    if frame not in orders:
        raise ValueError(f"no priority order given for generated frame {frame}")
    order = orders[frame]
    order = order.tolist() if isinstance(order, torch.Tensor) else [int(x) for x in order]
    if len(order) != frame_len or sorted(order) != list(range(frame_len)):
        raise ValueError(
            f"priority order of frame {frame} must be a permutation of range({frame_len}), "
            f"got {len(order)} entries"
            + ("" if len(order) != frame_len else " with repeats or out-of-range offsets")
        )
    return order


def _grown_tail_len(state: PhysicalState, logical_len: int, frame_len: int) -> int:
    """Tail length once the cache holds ``logical_len`` tokens; checks it did not shrink."""
    _check_int("logical_len", logical_len, 0)
    known_len = state.logical_len(frame_len)
    if logical_len < known_len:
        raise ValueError(
            f"logical_len {logical_len} is behind the physical state, which already accounts "
            f"for {known_len} tokens (anchors {state.anchor_len}, "
            f"{state.num_complete_frames} complete frames of {frame_len}, tail {state.tail_len})"
        )
    return state.tail_len + logical_len - known_len


def _check_history(state: PhysicalState, frame_len: int) -> None:
    for kept_frame in state.frames:
        if kept_frame.kept > frame_len:
            raise ValueError(
                f"frame {kept_frame.frame} keeps {kept_frame.kept} tokens, more than the "
                f"{frame_len} a frame holds"
            )


def _check_counts(state: PhysicalState, counts: Sequence[int]) -> int:
    """Check the new keep counts only shrink kept sets and drop frames oldest first; returns
    the number of frames dropped whole."""
    dropped = next((i for i, count in enumerate(counts) if count > 0), len(counts))
    if dropped < state.dropped_frames or 0 in counts[dropped:]:
        raise ValueError(
            f"keep counts {tuple(counts)} must drop frames oldest first and never revive "
            f"the {state.dropped_frames} frames already dropped"
        )
    for kept_frame in state.frames:
        if counts[kept_frame.frame] > kept_frame.kept:
            raise ValueError(
                f"frame {kept_frame.frame} keeps {kept_frame.kept} tokens but the policy now "
                f"asks for {counts[kept_frame.frame]}: dropped tokens cannot come back "
                f"(was the config changed mid-request?)"
            )
    return dropped


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
