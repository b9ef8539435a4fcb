"""The worker's record of the last layer's queries (``engine/query_log.py``) and the softmax it
recomputes from them, against the dense reference's attention."""

from __future__ import annotations

import pytest
import torch

from packcache_vllm.engine.query_log import QueryLog, attention_mass, attention_probs
from packcache_vllm.reference.forward import attend


def rows(start: int, count: int) -> torch.Tensor:
    """[count, 2, 3] whose every entry is its logical index."""
    return torch.arange(start, start + count, dtype=torch.float32)[:, None, None].expand(-1, 2, 3)


def test_records_accumulate_and_are_taken_by_logical_index():
    log = QueryLog()
    log.record("a", 10, rows(10, 3))
    for index in range(13, 40):  # one row per step, past several regrowths
        log.record("a", index, rows(index, 1))
    assert torch.equal(log.take("a", 12, 20), rows(12, 20))


def test_drop_before_keeps_the_rest_and_later_records_follow_it():
    log = QueryLog()
    log.record("a", 0, rows(0, 8))
    log.drop_before("a", 5)
    log.record("a", 8, rows(8, 2))
    assert torch.equal(log.take("a", 5, 5), rows(5, 5))
    with pytest.raises(ValueError, match=r"\[4, 6\) were not recorded \(held: \[5, 10\)\)"):
        log.take("a", 4, 2)
    log.drop_before("a", 100)
    with pytest.raises(ValueError, match=r"held: \[10, 10\)"):
        log.take("a", 9, 1)


def test_a_gap_starts_the_log_anew_and_requests_are_apart():
    log = QueryLog()
    log.record("a", 0, rows(0, 4))
    log.record("b", 0, rows(100, 4))
    log.record("a", 20, rows(20, 2))  # recomputed from scratch after a preemption
    with pytest.raises(ValueError, match=r"request a: .* \[0, 2\) were not recorded"):
        log.take("a", 0, 2)
    assert torch.equal(log.take("a", 20, 2), rows(20, 2))
    assert torch.equal(log.take("b", 1, 2), rows(101, 2))
    log.forget("b")
    with pytest.raises(ValueError, match=r"held: none"):
        log.take("b", 0, 1)


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (2, 2)])
def test_probabilities_equal_the_reference_attention(heads, kv_heads):
    """A frame of N queries at physical positions [first, first + N) over P = first + N keys:
    the same softmax as the reference's ``attend`` with the causal mask."""
    generator = torch.Generator().manual_seed(0)
    first, n, head_dim = 7, 5, 8
    queries = torch.randn(n, heads, head_dim, generator=generator)
    keys = torch.randn(first + n, kv_heads, head_dim, generator=generator)
    captured = []
    allowed = torch.arange(first + n)[None, :] <= (first + torch.arange(n))[:, None]
    attend(queries, keys, keys, allowed, captured.append)
    torch.testing.assert_close(attention_probs(queries, keys, first), captured[0])


@pytest.mark.parametrize("scores_per_chunk", [1, 40, 1 << 24])
def test_attention_mass_in_chunks_is_the_whole_softmax_mass(scores_per_chunk):
    """Summed over the queries and averaged over heads, per chosen key, however the queries
    are chunked (1: one query at a time)."""
    generator = torch.Generator().manual_seed(1)
    first, n, heads, kv_heads, head_dim = 9, 6, 4, 2, 8
    queries = torch.randn(n, heads, head_dim, generator=generator)
    keys = torch.randn(first + n, kv_heads, head_dim, generator=generator)
    columns = torch.tensor([2, 3, 4, 7, 10, 14])  # some of them the queries' own frame's
    whole = attention_probs(queries, keys, first)  # [H, N, P]
    expected = whole[:, :, columns].sum(dim=1).mean(dim=0)
    got = attention_mass(queries, keys, first, columns, scores_per_chunk)
    torch.testing.assert_close(got, expected)
