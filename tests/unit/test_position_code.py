"""Position codes survive vLLM's int32 delta arithmetic and decode to (index, frame_start)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from packcache_vllm.core import position_code
from packcache_vllm.core.position_code import MAX_FRAME_START, MAX_INDEX


@given(st.integers(0, MAX_FRAME_START), st.integers(0, MAX_INDEX))
def test_round_trip_through_int32_delta(frame_start, index):
    base = position_code.code_base(frame_start)
    # vLLM: np.arange(delta + context_len, ...) with context_len an np.int32
    code = np.arange(base + np.int32(index), base + np.int32(index) + 1, dtype=np.int64)
    decoded_index, decoded_start = position_code.decode(torch.from_numpy(code))
    assert position_code.is_code(torch.from_numpy(code)).all()
    assert decoded_index.item() == index and decoded_start.item() == frame_start


def test_explicit_positions_are_not_codes():
    assert not position_code.is_code(torch.tensor([0, 1, 4096, 2**40])).any()


@pytest.mark.parametrize("frame_start", [-1, MAX_FRAME_START + 1])
def test_frame_start_out_of_range_names_the_limit(frame_start):
    with pytest.raises(ValueError, match="frame_start"):
        position_code.code_base(frame_start)
