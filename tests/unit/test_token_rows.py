"""The plain-row KV ops the CUDA path uses (moves, key re-rotation, attention over a packed block
table), standalone: no vLLM. They run on the CPU here; on a GPU machine run them there with
``PACKCACHE_TEST_DEVICE=cuda python -m pytest tests/unit/test_token_rows.py``.

Caches are built in both physical orders vLLM 0.32 uses (HND: the logical view is contiguous;
NHD: the logical ``[blocks, heads, tokens, 2*hd]`` view of a ``[blocks, tokens, heads, 2*hd]``
tensor), since the ops must be exact for any strides."""

from __future__ import annotations

import os

import pytest
import torch

from packcache_vllm.core.rope import MMRoPE
from packcache_vllm.engine.kv_access import LearnedPageAccess, PlainRowAccess, kv_access_for
from packcache_vllm.engine.kv_layout import PageLayout, learn_page_layout
from packcache_vllm.engine.token_rows import (
    move_token_rows,
    read_key_rows,
    read_value_rows,
    write_key_rows,
)

DEVICE = torch.device(os.environ.get("PACKCACHE_TEST_DEVICE", "cpu"))
NUM_BLOCKS, HEADS, BLOCK, HEAD_DIM = 6, 2, 8, 12
PHYSICAL_ORDERS = ("HND", "NHD")


def make_cache(order: str, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """A random ``[NUM_BLOCKS, HEADS, BLOCK, 2*HEAD_DIM]`` cache view in a physical order."""
    g = torch.Generator().manual_seed(seed)
    if order == "HND":
        data = torch.randn(NUM_BLOCKS, HEADS, BLOCK, 2 * HEAD_DIM, generator=g)
        return data.to(DEVICE, dtype)
    data = torch.randn(NUM_BLOCKS, BLOCK, HEADS, 2 * HEAD_DIM, generator=g)
    return data.to(DEVICE, dtype).transpose(1, 2)  # logical view, not contiguous


def tokens_of(cache: torch.Tensor) -> torch.Tensor:
    """``[NUM_BLOCKS * BLOCK, HEADS, 2*HEAD_DIM]``: every slot's row, in slot order."""
    return cache.transpose(1, 2).reshape(NUM_BLOCKS * BLOCK, HEADS, 2 * HEAD_DIM)


def slots(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64, device=DEVICE)


def plain_write(key, value, cache, slot_mapping) -> None:
    """A backend write path that stores each token as one row [K | V]."""
    block, offset = slot_mapping // cache.shape[2], slot_mapping % cache.shape[2]
    cache[block, :, offset, : key.shape[-1]] = key
    cache[block, :, offset, key.shape[-1] :] = value


@pytest.mark.parametrize("order", PHYSICAL_ORDERS)
def test_move_equals_rewriting_rows_at_their_destination(order):
    cache = make_cache(order)
    before = tokens_of(cache).clone()
    # packing left by a few slots: sources and destinations overlap
    src, dst = slots(range(10, 30)), slots(range(7, 27))
    move_token_rows([cache], src, dst)
    expected = before.clone()
    expected[dst.cpu()] = before[src.cpu()]
    torch.testing.assert_close(tokens_of(cache).cpu(), expected.cpu(), rtol=0, atol=0)


@pytest.mark.parametrize("order", PHYSICAL_ORDERS)
def test_keys_round_trip_and_values_stay(order):
    cache = make_cache(order, dtype=torch.bfloat16)
    where = slots([3, 17, 40])
    values = read_value_rows(cache, where).clone()
    keys = torch.randn(3, HEADS, HEAD_DIM, device=DEVICE)
    write_key_rows(cache, where, keys)
    torch.testing.assert_close(read_key_rows(cache, where), keys.to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(read_value_rows(cache, where), values, rtol=0, atol=0)


def test_a_plain_row_writer_is_learned_as_plain_rows_and_a_permuted_one_is_not():
    plain = learn_page_layout(plain_write, HEADS, BLOCK, HEAD_DIM, torch.float32, DEVICE)
    assert plain.is_plain_rows()
    assert isinstance(kv_access_for(plain, DEVICE, "plain"), PlainRowAccess)

    def dim_major_keys(key, value, cache, slot_mapping):  # K stored [head_dim, block]
        pages = cache.view(cache.shape[0], HEADS, -1)
        dims = torch.arange(HEAD_DIM)
        for i, slot in enumerate(slot_mapping.tolist()):
            block, offset = divmod(slot, BLOCK)
            pages[block, :, dims * BLOCK + offset] = key[i]
            pages[block, :, BLOCK * HEAD_DIM + offset * HEAD_DIM + dims] = value[i]

    permuted = learn_page_layout(dim_major_keys, HEADS, BLOCK, HEAD_DIM, torch.float32)
    assert not permuted.is_plain_rows()
    assert isinstance(kv_access_for(permuted, torch.device("cpu"), "x"), LearnedPageAccess)
    with pytest.raises(ValueError, match="backend Weird on cuda"):
        kv_access_for(permuted, torch.device("cuda"), "Weird")


def test_plain_rows_agree_with_the_learned_page_path():
    """The same plan through both accesses gives the same tokens (plain layout, CPU)."""
    layout = learn_page_layout(plain_write, HEADS, BLOCK, HEAD_DIM, torch.float32)
    rows, paged = make_cache("HND"), make_cache("HND")
    src, dst = slots(range(5, 45, 2)), slots(range(3, 23))
    PlainRowAccess(DEVICE).move([rows], src, dst)
    paged_cpu = paged.cpu()
    LearnedPageAccess(layout).move([paged_cpu], src.cpu(), dst.cpu())
    torch.testing.assert_close(tokens_of(rows).cpu(), tokens_of(paged_cpu), rtol=0, atol=0)


def test_bad_slots_are_rejected_naming_them():
    cache = make_cache("HND")
    with pytest.raises(ValueError, match="dst_slots must be distinct"):
        move_token_rows([cache], slots([1, 2]), slots([5, 5]))
    with pytest.raises(ValueError, match=r"src_slots out of range \[0, 48\)"):
        move_token_rows([cache], slots([48]), slots([0]))
    with pytest.raises(ValueError, match="keys must have shape"):
        write_key_rows(cache, slots([1]), torch.zeros(1, HEADS, HEAD_DIM + 1, device=DEVICE))


# --- attention over a packed block table -----------------------------------------------------


def paged_attention(query, cache, block_table, seq_len) -> torch.Tensor:
    """Decode attention of one query token over ``seq_len`` cached tokens addressed through
    ``block_table`` (what a paged kernel computes). query ``[2 * HEADS, HEAD_DIM]``."""
    positions = torch.arange(seq_len, device=cache.device)
    block = torch.as_tensor(block_table, device=cache.device)[positions // BLOCK]
    return attend_rows(query, cache[block, :, positions % BLOCK])


def attend_rows(query, rows) -> torch.Tensor:
    """query ``[2 * HEADS, HEAD_DIM]`` over rows ``[N, HEADS, 2 * HEAD_DIM]`` (GQA, 2 per kv)."""
    keys = rows[..., :HEAD_DIM].repeat_interleave(2, 1)
    values = rows[..., HEAD_DIM:].repeat_interleave(2, 1)
    scores = torch.einsum("hd,nhd->hn", query, keys) / HEAD_DIM**0.5
    return torch.einsum("hn,nhd->hd", scores.softmax(-1), values)


@pytest.mark.parametrize("order", PHYSICAL_ORDERS)
def test_attention_over_the_packed_table_equals_attention_over_the_kept_tokens(order):
    cache = make_cache(order, seed=3)
    logical_table = [4, 1, 5, 0]  # 32 logical tokens spread over four blocks
    kept = [*range(0, 6), *range(9, 20, 2), *range(24, 32)]  # anchors, thinned frame, tail
    logical_slots = [logical_table[i // BLOCK] * BLOCK + i % BLOCK for i in kept]
    query = torch.randn(2 * HEADS, HEAD_DIM, device=DEVICE)
    full = paged_attention(query, cache, logical_table, 32)
    # the dense answer restricted to the kept tokens, from the untouched cache
    rows = tokens_of(cache)[torch.tensor(logical_slots)].to(DEVICE)
    dense = attend_rows(query, rows)
    packed_table = logical_table[:3]  # the packed length fits three blocks; block 0 is freed
    dst = [packed_table[i // BLOCK] * BLOCK + i % BLOCK for i in range(len(kept))]
    move_token_rows([cache], slots(logical_slots), slots(dst))
    packed = paged_attention(query, cache, packed_table, len(kept))
    torch.testing.assert_close(packed, dense, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(packed, full, atol=1e-3)  # eviction does change the answer


def test_key_re_rotation_on_the_device_equals_rotating_at_the_later_time():
    """Cached keys re-rotated on the device by +8 in t equal raw keys rotated (on the CPU, in
    float64) at t + 8: what rebasing the anchors relies on."""
    rope = MMRoPE(64)  # a head_dim whose time shift is a rotation (rope.supports_time_rebase)
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(10, HEADS, 64, generator=g, dtype=torch.float64)
    positions = torch.randint(0, 50, (3, 10), generator=g)
    cached = rope.apply(raw.to(DEVICE, torch.float32), positions.to(DEVICE))
    shifted = rope.rotate_time(cached, 8).cpu().double()
    later = positions.clone()
    later[0] += 8
    torch.testing.assert_close(shifted, rope.apply(raw, later), rtol=1e-5, atol=1e-5)


def test_page_layout_plain_rows_check_sees_a_swapped_value_half():
    offsets = torch.arange(BLOCK).view(-1, 1) * 2 * HEAD_DIM + torch.arange(HEAD_DIM)
    assert PageLayout(BLOCK, HEAD_DIM, offsets, offsets + HEAD_DIM).is_plain_rows()
    assert not PageLayout(BLOCK, HEAD_DIM, offsets + HEAD_DIM, offsets).is_plain_rows()
