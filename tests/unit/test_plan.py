"""CompactionPlan: simulated requests check moves, nesting, bounds and block accounting."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.layout import tokens_per_frame
from packcache_vllm.core.plan import (
    CompactionPlan,
    KeptFrame,
    PhysicalState,
    make_plan,
    num_new_complete_frames,
    physical_contents,
)
from packcache_vllm.core.select import UniformSelector

# --- a simulated request -------------------------------------------------------------------------


@dataclass
class Request:
    """One request's cache as an engine would hold it: slot -> logical index, plus blocks."""

    anchor_len: int
    frame_len: int
    block_size: int
    orders: dict[int, list[int]]
    state: PhysicalState = field(init=False)
    logical_len: int = 0
    contents: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    next_block: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.state = PhysicalState.initial(self.anchor_len)
        self.append(self.anchor_len)

    def append(self, num_tokens: int) -> None:
        """The model computes ``num_tokens`` more tokens: their KV lands after the last slot."""
        self.contents.extend(range(self.logical_len, self.logical_len + num_tokens))
        self.logical_len += num_tokens
        while len(self.blocks) * self.block_size < len(self.contents):
            self.blocks.append(next(self.next_block))

    def compact(self, config: PackCacheConfig) -> CompactionPlan:
        plan = make_plan(
            self.state,
            self.logical_len,
            self.frame_len,
            config,
            self.orders,
            self.blocks,
            self.block_size,
        )
        self.contents = apply_moves(self.contents, plan)
        self.blocks = self.blocks[: plan.num_blocks_kept]
        self.state = plan.new_state
        return plan


def apply_moves(contents: list[int], plan: CompactionPlan) -> list[int]:
    """Gather every source first, then scatter; the cache is then cut to the new length."""
    moved = [contents[src] for src in plan.src]
    new_contents = list(contents)
    for dst, value in zip(plan.dst, moved, strict=True):
        new_contents[dst] = value
    return new_contents[: plan.new_state.physical_len]


def kept_sets(request: Request) -> dict[int, set[int]]:
    """Generated frame -> the frame offsets its slots hold, read from the simulated cache."""
    sets: dict[int, set[int]] = {}
    for logical in request.contents:
        generated = logical - request.anchor_len
        frame, offset = divmod(generated, request.frame_len)
        if generated >= 0 and frame < request.state.num_complete_frames:
            sets.setdefault(frame, set()).add(offset)
    return sets


# --- the property test ---------------------------------------------------------------------------

small_configs = st.builds(
    PackCacheConfig,
    window=st.one_of(st.none(), st.integers(1, 5)),
    decay=st.sampled_from([1.0, 0.75, 0.5, 0.3]),
    min_keep=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]),
)


@st.composite
def requests(draw):
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    frame_len = tokens_per_frame(rows, cols)
    increments = draw(
        st.lists(
            st.one_of(
                st.integers(0, frame_len),  # mid-frame steps
                st.integers(1, 3).map(lambda frames: frames * frame_len),  # whole frames at once
                st.integers(frame_len, 3 * frame_len + 2),  # several frames and a bit
            ),
            min_size=1,
            max_size=16,
        )
    )
    num_frames = sum(increments) // frame_len
    if draw(st.booleans()):
        generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
        orders = {g: torch.randperm(frame_len, generator=generator) for g in range(num_frames)}
    else:
        orders = dict.fromkeys(range(num_frames), UniformSelector().order(rows, cols))
    request = Request(
        anchor_len=draw(st.integers(0, 2 * frame_len)),
        frame_len=frame_len,
        block_size=draw(st.sampled_from([1, 2, 3, 4, 8, 16])),
        orders={frame: order.tolist() for frame, order in orders.items()},
    )
    return request, increments


@settings(max_examples=500, deadline=None)
@given(requests(), small_configs)
def test_simulated_requests(request_and_steps, config):
    request, increments = request_and_steps
    frame_len, block_size = request.frame_len, request.block_size
    window_len = (config.window or 10**9) * frame_len
    bound = math.ceil((request.anchor_len + window_len + frame_len) / block_size)
    previous = kept_sets(request)
    evicted = most_completed = 0
    for increment in increments:
        request.append(increment)
        old_len, old_blocks = len(request.contents), list(request.blocks)
        old_complete = request.state.num_complete_frames
        completes = num_new_complete_frames(request.state, request.logical_len, frame_len)
        most_completed = max(most_completed, completes)
        plan = request.compact(config)
        new_state = plan.new_state

        # a valid packing: distinct targets inside the new length, no no-op moves
        assert len(set(plan.dst)) == len(plan.dst) == len(plan.src)
        assert all(dst < new_state.physical_len for dst in plan.dst)
        assert all(src < old_len for src in plan.src)
        assert all(src != dst for src, dst in zip(plan.src, plan.dst, strict=True))
        # only what eviction displaced moves: holes it left below the new history's end are
        # filled from above, and the tail moves down by what was evicted
        evicted_now = plan.evicted_tokens - evicted
        assert plan.num_moves <= evicted_now + (new_state.tail_len if evicted_now else 0)
        # nothing kept is lost: every slot holds exactly the token the new state says
        assert request.contents == physical_contents(new_state, request.orders, frame_len)
        assert new_state.logical_len(frame_len) == request.logical_len
        assert new_state.tail_len < frame_len
        generated = request.logical_len - request.anchor_len
        assert new_state.num_complete_frames == generated // frame_len
        assert completes == new_state.num_complete_frames - old_complete
        # the policy's counts, frames nested as they age
        counts = config.keep_counts(new_state.num_complete_frames, frame_len)
        assert tuple(new_state.kept_of(g) for g in range(len(counts))) == counts
        current = kept_sets(request)
        for frame, kept in current.items():
            assert kept == set(request.orders[frame][: counts[frame]])
            if frame in previous:
                assert kept <= previous[frame]
        assert set(previous) - set(current) <= set(range(new_state.dropped_frames))
        previous = current
        # bounds and accounting
        assert new_state.history_len <= window_len
        assert plan.num_blocks_kept == math.ceil(new_state.physical_len / block_size)
        assert plan.num_blocks_kept <= bound
        assert plan.freed_blocks == tuple(old_blocks[plan.num_blocks_kept :])
        assert plan.evicted_tokens == request.logical_len - new_state.physical_len
        assert plan.evicted_tokens >= evicted
        evicted = plan.evicted_tokens
        assert (
            plan.dropped_frames
            == new_state.dropped_frames
            == config.dropped_frames(new_state.num_complete_frames)
        )
    event(f"frames dropped: {request.state.dropped_frames > 0}")
    event(f"most frames completed in one step: {min(most_completed, 3)}")


# --- worked examples -----------------------------------------------------------------------------

F = 6  # one row of one cell: <break> <grid> <grid> cell newline <eoss>
REVERSED = {frame: list(range(F))[::-1] for frame in range(10)}


def test_worked_example_sliding():
    state = PhysicalState.initial(anchor_len=2)
    sliding = PackCacheConfig.preset("sliding")
    plan = make_plan(state, 2 + F + 1, F, sliding, REVERSED, block_ids=[7, 8, 9], block_size=4)
    # frame 0 completes and becomes history where it is (slots 2..7; its priority order is
    # reversed, so priority 0 is offset 5, slot 7); one tail token follows it: nothing moves
    assert plan.new_state == PhysicalState(2, (KeptFrame(0, (7, 6, 5, 4, 3, 2)),), 1, 0)
    assert plan.src == plan.dst == ()
    assert (plan.num_blocks_kept, plan.freed_blocks, plan.evicted_tokens) == (3, (), 0)

    plan = make_plan(plan.new_state, 2 + 2 * F, F, sliding, REVERSED, [7, 8, 9, 10], 4)
    # frame 1 completes: frame 0 is dropped and frame 1 moves down into its slots
    assert plan.new_state == PhysicalState(2, (KeptFrame(1, (7, 6, 5, 4, 3, 2)),), 0, 1)
    assert dict(zip(plan.src, plan.dst, strict=True)) == {8 + p: 2 + p for p in range(F)}
    assert (plan.num_blocks_kept, plan.freed_blocks) == (2, (9, 10))
    assert (plan.evicted_tokens, plan.dropped_frames) == (F, 1)


def test_worked_example_thinning_moves_only_into_holes():
    """Frame 2 completes (W=2): frame 0 is dropped, frame 1 halves. Frame 1's kept half stays
    where it is; the new frame's tokens, past the new history's end, fill the holes frame 0
    left, and the tail token moves down; nothing else moves."""
    halving = PackCacheConfig(window=2, decay=0.5, min_keep=0.5)
    identity = {frame: list(range(F)) for frame in range(3)}
    history = (KeptFrame(0, tuple(range(F))), KeptFrame(1, tuple(range(F, 2 * F))))
    state = PhysicalState(0, history, 0, 0)
    plan = make_plan(state, 3 * F + 1, F, halving, identity, list(range(5)), block_size=4)
    # frame 1 keeps offsets 0..2 at slots 6..8; the history ends at 3 + 6 = 9, so frame 2
    # (slots 12..17) moves into frame 0's slots 0..5 and the tail token 18 moves to 9
    moves = {12: 0, 13: 1, 14: 2, 15: 3, 16: 4, 17: 5, 18: 9}
    assert dict(zip(plan.src, plan.dst, strict=True)) == moves
    assert plan.new_state == PhysicalState(
        0, (KeptFrame(1, (6, 7, 8)), KeptFrame(2, (0, 1, 2, 3, 4, 5))), 1, 1
    )
    assert (plan.num_blocks_kept, plan.freed_blocks, plan.evicted_tokens) == (3, (3, 4), 9)


def test_no_completed_frame_means_no_moves():
    state = PhysicalState.initial(anchor_len=3)
    plan = make_plan(state, 3 + F - 1, F, PackCacheConfig(), REVERSED, [0, 1, 2], 4)
    assert plan.src == plan.dst == ()
    assert plan.new_state == PhysicalState(3, (), F - 1, 0)
    assert (plan.num_blocks_kept, plan.freed_blocks) == (2, (2,))


def test_state_already_holding_the_tail_is_accepted():
    state = PhysicalState(anchor_len=0, frames=(), tail_len=F, dropped_frames=0)
    plan = make_plan(state, F, F, PackCacheConfig(), REVERSED, [0, 1], 4)
    assert plan.new_state == PhysicalState(0, (KeptFrame(0, (5, 4, 3, 2, 1, 0)),), 0, 0)


def test_lumos_sized_plan_is_quick():
    frame_len = tokens_per_frame(48, 84)
    order = UniformSelector().order(48, 84)
    orders = {frame: order for frame in range(12)}
    request = Request(anchor_len=4200, frame_len=frame_len, block_size=16, orders=orders)
    config = PackCacheConfig.preset("packcache")
    for _ in range(12):
        request.append(frame_len)
        plan = request.compact(config)
    assert request.state.dropped_frames == 8
    assert request.state.physical_len == 4200 + 3 * math.ceil(0.75 * frame_len) + frame_len
    # steady state: one frame's worth of moves, not the 3.25 frames of history re-packed
    assert plan.num_moves <= frame_len < request.state.history_len / 3


# --- bad input -----------------------------------------------------------------------------------


def plan_for(**changes):
    arguments = dict(
        state=PhysicalState.initial(2),
        logical_len=2 + F,
        tokens_per_frame=F,
        config=PackCacheConfig(),
        orders=REVERSED,
        block_ids=[0, 1],
        block_size=4,
    )
    arguments.update(changes)
    return make_plan(**arguments)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"logical_len": 1}, "logical_len 1 is behind the physical state"),
        ({"block_ids": [0]}, "block list too short"),
        ({"block_size": 0}, "block_size must be an integer >= 1"),
        ({"tokens_per_frame": 0}, "tokens_per_frame must be an integer >= 1"),
        ({"orders": {}}, "no priority order given for generated frame 0"),
        ({"orders": {0: [0, 1, 2, 3, 4, 4]}}, r"permutation of range\(6\)"),
        ({"orders": {0: [0, 1, 2]}}, r"permutation of range\(6\), got 3 entries"),
        (
            {
                "state": PhysicalState(2, (KeptFrame(0, (2, 3, 4)),), 0, 0),
                "logical_len": 2 + 2 * F,
                "block_ids": [0, 1, 2],
            },
            "dropped tokens cannot come back",
        ),
        (
            {"state": PhysicalState(2, (KeptFrame(0, tuple(range(2, F + 3))),), 0, 0)},
            "more than the 6",
        ),
    ],
)
def test_inconsistent_input_is_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        plan_for(**changes)


def test_inconsistent_state_is_rejected():
    with pytest.raises(ValueError, match="consecutive frames from dropped_frames=1"):
        PhysicalState(0, (KeptFrame(0, (0, 1, 2)),), 0, dropped_frames=1)
    with pytest.raises(ValueError, match="must keep at least one token"):
        KeptFrame(0, ())
    with pytest.raises(ValueError, match="slots must be >= 0, got -1"):
        KeptFrame(0, (1, -1))
    with pytest.raises(ValueError, match=r"must fill \[2, 4\) exactly once each"):
        PhysicalState(2, (KeptFrame(0, (2, 4)),), 0, 0)  # a gap at 3
    with pytest.raises(ValueError, match=r"must fill \[2, 6\) exactly once each"):
        PhysicalState(2, (KeptFrame(0, (2, 3)), KeptFrame(1, (3, 2))), 0, 0)  # shared slots
    with pytest.raises(ValueError, match="tail_len must be an integer >= 0"):
        PhysicalState(0, (), -1, 0)
