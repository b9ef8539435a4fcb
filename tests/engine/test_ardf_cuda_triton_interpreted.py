"""The CUDA frame-parallel path's contract with vLLM's Triton attention backend, on the CPU.

vLLM 0.32's Triton kernels (``triton_reshape_and_cache_flash``, ``unified_attention``) run here in
Triton's interpreter (``TRITON_INTERPRET=1``: the kernels' own source executed on CPU tensors; not
compiled, so not a GPU run). In a child process, because vLLM's CPU build disables Triton at
import and the interpreter must be switched on before vLLM's Triton modules load. Checked:

* the write order the plugin learns through ``TritonAttentionImpl.do_kv_cache_update`` is plain
  ``[K | V]`` rows, so ``kv_access`` picks ``PlainRowAccess``, on a cache of the logical shape
  ``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` with NHD physical strides (vLLM's
  default when a backend declares no layout);
* the causal flags of a mixed batch (``CausalFlags`` over ``RowKind``s: text prefill, canvas,
  commit, conditioning frame, and padding rows), given to ``TritonAttentionImpl.forward`` as
  ``causal``, make the text row causal and the others bidirectional, against a dense reference;
* after PackCache-style token moves and a key rewrite through ``PlainRowAccess``, Triton's
  attention over the packed block list equals the dense reference over the kept tokens.

Run as a script it prints the measurements as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADS, KV_HEADS, HEAD_SIZE, BLOCK_SIZE, NUM_BLOCKS = 4, 2, 32, 16, 12
TOLERANCE = 1e-5  # float32, IEEE dots in the interpreter


# --- the child process ------------------------------------------------------------------------
def use_triton_interpreter() -> None:
    """Make vLLM's Triton modules load real Triton, in interpreter mode (call before importing
    any of them). The write kernel's launcher picks its tile size from the GPU's compute
    capability; it is told Hopper's (9, 0)."""
    import importlib

    import torch

    os.environ["TRITON_INTERPRET"] = "1"
    import vllm.triton_utils
    import vllm.triton_utils.importing

    vllm.triton_utils.importing.HAS_TRITON = True
    importlib.reload(vllm.triton_utils)
    torch.cuda.get_device_capability = lambda device=None: (9, 0)


def triton_impl():
    from vllm.v1.attention.backends.triton_attn import TritonAttentionImpl

    return TritonAttentionImpl(
        num_heads=HEADS,
        head_size=HEAD_SIZE,
        scale=HEAD_SIZE**-0.5,
        num_kv_heads=KV_HEADS,
        alibi_slopes=None,
        sliding_window=None,
        kv_cache_dtype="auto",
    )


def scales_layer():
    from types import SimpleNamespace

    import torch

    one = torch.ones((), dtype=torch.float32)
    return SimpleNamespace(_q_scale=one, _k_scale=one, _v_scale=one)


def nhd_cache():
    """[NUM_BLOCKS, KV_HEADS, BLOCK_SIZE, 2 * HEAD_SIZE] logical view of NHD storage."""
    import torch

    physical = torch.full((NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, 2 * HEAD_SIZE), float("nan"))
    return physical.permute(0, 2, 1, 3)


def dense_attention(query, keys, values, causal: bool):
    """query [q, HEADS, hd], keys/values [s, KV_HEADS, hd] (the request's whole sequence, the
    queries its last q tokens) -> [q, HEADS, hd]."""
    import torch

    group = HEADS // KV_HEADS
    keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
    scores = torch.einsum("qhd,khd->hqk", query, keys) * HEAD_SIZE**-0.5
    if causal:
        q, s = query.shape[0], keys.shape[0]
        allowed = torch.arange(s).view(1, -1) <= torch.arange(s - q, s).view(-1, 1)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), values)


def triton_attention(impl, cache, query, query_lens, seq_lens, block_table, causal):
    """Triton's forward over ``cache`` for a batch: query [sum(query_lens), HEADS, hd]."""
    import torch
    from vllm.v1.attention.backends.triton_attn import TritonAttentionMetadata

    starts = torch.tensor([0, *query_lens]).cumsum(0).to(torch.int32)
    num_tokens = int(starts[-1])
    metadata = TritonAttentionMetadata(
        num_actual_tokens=num_tokens,
        max_query_len=max(query_lens),
        query_start_loc=starts,
        max_seq_len=max(seq_lens),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_table=block_table,
        slot_mapping=torch.empty(0, dtype=torch.int64),
        seq_threshold_3D=0,
        num_par_softmax_segments=16,
        softmax_segm_output=torch.empty(0),
        softmax_segm_max=torch.empty(0),
        softmax_segm_expsum=torch.empty(0),
        causal=causal,
    )
    output = torch.empty(num_tokens, HEADS, HEAD_SIZE)
    empty = torch.empty(0)
    impl.forward(scales_layer(), query, empty, empty, cache, metadata, output)
    return output


def write_tokens(impl, cache, keys, values, slots):
    import torch

    impl.do_kv_cache_update(scales_layer(), keys, values, cache, torch.tensor(slots))


def learned_access(impl):
    import torch

    from packcache_vllm.engine.kv_access import PlainRowAccess, kv_access_for
    from packcache_vllm.engine.kv_layout import learn_page_layout

    layout = learn_page_layout(
        lambda k, v, c, slots: impl.do_kv_cache_update(scales_layer(), k, v, c, slots),
        num_kv_heads=KV_HEADS,
        block_size=BLOCK_SIZE,
        head_size=HEAD_SIZE,
        dtype=torch.float32,
    )
    access = kv_access_for(layout, torch.device("cpu"), type(impl).__name__)
    return layout.is_plain_rows(), isinstance(access, PlainRowAccess), access


def mixed_batch_errors(impl) -> dict[str, float]:
    """Rows: text prefill (causal), canvas, commit, conditioning frame; plus 2 padding rows.
    Per row, the largest difference to the dense reference with its own mask and with the
    other one."""
    import torch

    from packcache_vllm.engine.ardf_runner import RowKind
    from packcache_vllm.engine.causal_flags import CausalFlags

    kinds = [RowKind.TEXT, RowKind.DENOISE, RowKind.COMMIT, RowKind.FRAME_PREFILL]
    query_lens, seq_lens = [7, 6, 6, 5], [7, 22, 30, 17]
    flags = CausalFlags(8, torch.device("cpu"))
    flags.set_rows([kind.causal for kind in kinds])
    causal = flags.rows(len(kinds))
    generator = torch.Generator().manual_seed(0)
    cache = nhd_cache()
    table, errors, queries, expected = [], {}, [], []
    for row, (q, s) in enumerate(zip(query_lens, seq_lens, strict=True)):
        blocks = [2 * row + 1, 2 * row + 2]
        slots = [blocks[t // BLOCK_SIZE] * BLOCK_SIZE + t % BLOCK_SIZE for t in range(s)]
        keys = torch.randn(s, KV_HEADS, HEAD_SIZE, generator=generator)
        values = torch.randn(s, KV_HEADS, HEAD_SIZE, generator=generator)
        write_tokens(impl, cache, keys, values, slots)
        table.append(blocks)
        queries.append(torch.randn(q, HEADS, HEAD_SIZE, generator=generator))
        expected.append((keys, values))
    out = triton_attention(
        impl, cache, torch.cat(queries), query_lens, seq_lens,
        torch.tensor(table, dtype=torch.int32), causal,
    )  # fmt: skip
    start = 0
    for kind, query, (keys, values) in zip(kinds, queries, expected, strict=True):
        got = out[start : start + query.shape[0]]
        start += query.shape[0]
        for mask, is_causal in (("own", kind.causal), ("other", not kind.causal)):
            reference = dense_attention(query, keys, values, is_causal)
            errors[f"{kind.value}/{mask}"] = float((got - reference).abs().max())
    return {"flags": flags.rows(8).tolist(), "errors": errors}


def packed_attention_error(impl, access) -> dict[str, float]:
    """A 40-token request in blocks [3, 7, 5]: tokens 10..29 evicted, 30..39 moved down to
    10..19 (PackCache's packing), the anchors' keys (0..9) rewritten; then one bidirectional
    canvas of 6 queries over the packed 20 tokens (blocks [3, 7])."""
    import torch

    generator = torch.Generator().manual_seed(1)
    cache = nhd_cache()
    blocks = [3, 7, 5]
    slot = [blocks[t // BLOCK_SIZE] * BLOCK_SIZE + t % BLOCK_SIZE for t in range(40)]
    keys = torch.randn(40, KV_HEADS, HEAD_SIZE, generator=generator)
    values = torch.randn(40, KV_HEADS, HEAD_SIZE, generator=generator)
    write_tokens(impl, cache, keys, values, slot)
    access.move([cache], torch.tensor(slot[30:40]), torch.tensor(slot[10:20]))
    rotated = torch.randn(10, KV_HEADS, HEAD_SIZE, generator=generator)
    access.write_keys(cache, torch.tensor(slot[:10]), rotated)
    kept_keys = torch.cat([rotated, keys[30:40]])
    kept_values = torch.cat([values[:10], values[30:40]])
    query = torch.randn(6, HEADS, HEAD_SIZE, generator=generator)
    out = triton_attention(
        impl, cache, query, [6], [20], torch.tensor([blocks[:2]], dtype=torch.int32),
        torch.tensor([0], dtype=torch.int32),
    )  # fmt: skip
    read_back = access.read_keys(cache, torch.tensor(slot[:20]))
    return {
        "attention": float((out - dense_attention(query, kept_keys, kept_values, False)).abs().max()),
        "read_keys": float((read_back - kept_keys).abs().max()),
    }


def measure() -> dict:
    use_triton_interpreter()
    impl = triton_impl()
    plain, plain_access, access = learned_access(impl)
    return {
        "plain_rows": plain,
        "plain_row_access": plain_access,
        "mixed_batch": mixed_batch_errors(impl),
        "packed": packed_attention_error(impl, access),
    }


# --- the tests ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def measured() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tritons_write_order_is_plain_rows_and_picks_row_access(measured):
    assert measured["plain_rows"] is True
    assert measured["plain_row_access"] is True


def test_mixed_batch_flags_are_one_per_row_padding_causal(measured):
    assert measured["mixed_batch"]["flags"] == [1, 0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("kind", ["text", "denoise", "commit", "frame-prefill"])
def test_each_row_gets_its_own_mask_in_tritons_kernel(measured, kind):
    errors = measured["mixed_batch"]["errors"]
    assert errors[f"{kind}/own"] < TOLERANCE
    assert errors[f"{kind}/other"] > 100 * TOLERANCE  # the masks differ: the check has teeth


def test_moves_and_key_rewrites_in_tritons_layout_are_what_its_kernel_reads(measured):
    assert measured["packed"]["read_keys"] == 0.0
    assert measured["packed"]["attention"] < TOLERANCE


if __name__ == "__main__":
    print(json.dumps(measure()))
