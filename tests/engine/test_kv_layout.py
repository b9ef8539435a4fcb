"""The learned page layout against vLLM's real CPU_ATTN write path.

Every check writes through the backend itself (``layer.impl.do_kv_cache_update`` of the shared
engine's attention layers) into *scratch* caches shaped like the engine's, and compares with what
``packcache_vllm.engine.kv_layout`` does through the learned map. The live caches of the shared
engine are only inspected, never written.
"""

from __future__ import annotations

import pytest
import torch

from packcache_vllm.engine.kv_layout import (
    PageLayout,
    learn_page_layout,
    move_tokens,
    read_keys,
    read_values,
    write_keys,
)

SCRATCH_BLOCKS = 6
DTYPES = [torch.float32, torch.bfloat16]


# --- the shared engine's attention layers --------------------------------------------------
@pytest.fixture(scope="module")
def runner(llm):
    return llm.llm_engine.model_executor.driver_worker.worker.model_runner


@pytest.fixture(scope="module")
def attention_layers(runner) -> list:
    """The engine's attention modules in the order of ``runner.kv_caches``."""
    (group,) = runner.kv_cache_config.kv_cache_groups
    context = runner.compilation_config.static_forward_context
    return [context[name] for name in group.layer_names]


@pytest.fixture(scope="module")
def layouts(attention_layers) -> dict[torch.dtype, PageLayout]:
    """The page layout learned from the first layer's write path, per scratch dtype."""
    return {dtype: learn_layout_of(attention_layers[0], dtype) for dtype in DTYPES}


def write_fn_of(layer):
    return lambda key, value, cache, slots: layer.impl.do_kv_cache_update(
        layer, key, value, cache, slots
    )


def learn_layout_of(layer, dtype: torch.dtype) -> PageLayout:
    _, num_kv_heads, block_size, two_head_size = layer.kv_cache.shape
    return learn_page_layout(
        write_fn_of(layer), num_kv_heads, block_size, two_head_size // 2, dtype
    )


def scratch_caches(layers, dtype: torch.dtype) -> list[torch.Tensor]:
    """Zeroed caches of SCRATCH_BLOCKS blocks, one per layer, shaped like the engine's."""
    return [
        torch.zeros((SCRATCH_BLOCKS, *layer.kv_cache.shape[1:]), dtype=dtype) for layer in layers
    ]


def random_kv(cache: torch.Tensor, num_tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random K and V ``[num_tokens, num_kv_heads, head_size]`` in the cache's dtype."""
    generator = torch.Generator().manual_seed(seed)
    shape = (num_tokens, cache.shape[1], cache.shape[3] // 2)
    key = torch.randn(shape, generator=generator).to(cache.dtype)
    value = torch.randn(shape, generator=generator).to(cache.dtype)
    return key, value


def fill_through_backend(layers, caches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Write random K/V for every slot of every scratch cache through the backend; returns each
    layer's (K, V), indexed by slot."""
    written = []
    for index, (layer, cache) in enumerate(zip(layers, caches, strict=True)):
        num_slots = cache.shape[0] * cache.shape[2]
        key, value = random_kv(cache, num_slots, seed=index)
        write_fn_of(layer)(key, value, cache, torch.arange(num_slots))
        written.append((key, value))
    return written


# --- where things live in the runner ---------------------------------------------------------
def test_runner_binds_each_layer_cache_to_its_module(runner, attention_layers):
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl

    assert len(attention_layers) == len(runner.kv_caches) >= 2
    for layer, cache in zip(attention_layers, runner.kv_caches, strict=True):
        assert isinstance(layer.impl, CPUAttentionBackendImpl)
        assert layer.kv_cache.data_ptr() == cache.data_ptr()
        assert layer.kv_cache.shape == cache.shape
        assert layer.isa in ("vec", "vec16", "amx", "neon", "vxe", "vsx", "rvv")


# --- the learned map -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_learned_offsets_are_a_permutation_of_the_page(layouts, dtype):
    layout = layouts[dtype]
    every = torch.cat([layout.key_offsets.flatten(), layout.value_offsets.flatten()])
    assert torch.equal(every.sort().values, torch.arange(layout.page_size))
    assert layout.key_offsets.max() < layout.page_size // 2 <= layout.value_offsets.min()


def test_every_layer_has_the_same_layout(attention_layers, layouts):
    for layer in attention_layers[1:]:
        layout = learn_layout_of(layer, torch.float32)
        assert torch.equal(layout.key_offsets, layouts[torch.float32].key_offsets)
        assert torch.equal(layout.value_offsets, layouts[torch.float32].value_offsets)


def test_vec_layout_is_key_dim_major_value_token_major(attention_layers, layouts):
    if attention_layers[0].isa != "vec":
        pytest.skip(f"this machine's CPU_ATTN ISA is {attention_layers[0].isa}, not vec")
    for layout in layouts.values():
        bs, dims = layout.block_size, layout.head_size
        token, dim = torch.arange(bs)[:, None], torch.arange(dims)[None, :]
        assert torch.equal(layout.key_offsets, dim * bs + token)
        assert torch.equal(layout.value_offsets, bs * dims + token * dims + dim)


# --- reading, moving and re-writing tokens ----------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_read_returns_exactly_what_the_backend_wrote(attention_layers, layouts, dtype):
    caches = scratch_caches(attention_layers, dtype)
    written = fill_through_backend(attention_layers, caches)
    slots = torch.randperm(caches[0].shape[0] * caches[0].shape[2])[:50]
    for cache, (key, value) in zip(caches, written, strict=True):
        assert torch.equal(read_keys(cache, layouts[dtype], slots), key[slots])
        assert torch.equal(read_values(cache, layouts[dtype], slots), value[slots])


def reversed_first_blocks() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(96), torch.arange(96).flip(0)


MOVES = {
    # packing left by 5 across the boundary of blocks 0 and 1: sources overlap destinations
    "left_shift": lambda: (torch.arange(5, 40), torch.arange(0, 35)),
    # scattered tokens of blocks 3..5 gathered into blocks 1..2
    "across_blocks": lambda: (
        torch.arange(96, 192, 2)[torch.randperm(48, generator=torch.Generator().manual_seed(3))],
        torch.arange(32, 80),
    ),
    # every token of blocks 0..2 swapped with its mirror image
    "reversal": reversed_first_blocks,
}


@pytest.mark.parametrize("move", sorted(MOVES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_move_tokens_equals_rewriting_them_at_the_destination(
    attention_layers, layouts, dtype, move
):
    src, dst = MOVES[move]()
    moved = scratch_caches(attention_layers, dtype)
    written = fill_through_backend(attention_layers, moved)
    expected = [cache.clone() for cache in moved]
    for layer, cache, (key, value) in zip(attention_layers, expected, written, strict=True):
        write_fn_of(layer)(key[src], value[src], cache, dst)

    move_tokens(moved, layouts[dtype], src, dst)

    for actual, wanted in zip(moved, expected, strict=True):
        assert torch.equal(actual, wanted)


def test_an_empty_move_changes_nothing(attention_layers, layouts):
    caches = scratch_caches(attention_layers, torch.float32)
    fill_through_backend(attention_layers, caches)
    before = [cache.clone() for cache in caches]
    nothing = torch.empty(0, dtype=torch.int64)
    move_tokens(caches, layouts[torch.float32], nothing, nothing)
    assert all(torch.equal(a, b) for a, b in zip(caches, before, strict=True))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_write_keys_round_trips_and_leaves_values_alone(attention_layers, layouts, dtype):
    layout = layouts[dtype]
    caches = scratch_caches(attention_layers, dtype)
    written = fill_through_backend(attention_layers, caches)
    slots = torch.tensor([0, 1, 31, 32, 70, 191])
    for index, (layer, cache, (_, value)) in enumerate(
        zip(attention_layers, caches, written, strict=True)
    ):
        new_keys, _ = random_kv(cache, len(slots), seed=100 + index)
        expected = cache.clone()
        write_fn_of(layer)(new_keys, value[slots], expected, slots)

        write_keys(cache, layout, slots, new_keys)

        assert torch.equal(read_keys(cache, layout, slots), new_keys)
        assert torch.equal(read_values(cache, layout, slots), value[slots])
        assert torch.equal(cache, expected)


# --- teeth: a wrong map must be noticed -------------------------------------------------------
def token_major_layout(block_size: int, head_size: int) -> PageLayout:
    """The naive guess: every token a contiguous row, K rows then V rows."""
    rows = torch.arange(block_size * head_size).view(block_size, head_size)
    return PageLayout(block_size, head_size, rows, rows + block_size * head_size)


def test_a_token_major_guess_does_not_reproduce_the_backend(attention_layers, layouts):
    learned = layouts[torch.float32]
    wrong = token_major_layout(learned.block_size, learned.head_size)
    if torch.equal(wrong.key_offsets, learned.key_offsets):
        pytest.skip("this machine's CPU_ATTN layout is token-major for K")
    caches = scratch_caches(attention_layers, torch.float32)
    written = fill_through_backend(attention_layers, caches)
    src, dst = MOVES["left_shift"]()
    expected = [cache.clone() for cache in caches]
    for layer, cache, (key, value) in zip(attention_layers, expected, written, strict=True):
        write_fn_of(layer)(key[src], value[src], cache, dst)

    assert not torch.equal(read_keys(caches[0], wrong, src), written[0][0][src])
    move_tokens(caches, wrong, src, dst)
    assert not any(torch.equal(a, b) for a, b in zip(caches, expected, strict=True))


# --- other ISAs through the raw op (no special hardware needed to write) ----------------------
def raw_op_write_fn(isa: str):
    from vllm import _custom_ops as ops

    def write(key, value, cache, slots):
        num_blocks, num_kv_heads, block_size, _ = cache.shape
        pages = cache.view(num_blocks, num_kv_heads, 2 * block_size, -1)
        key_cache, value_cache = pages.chunk(2, dim=2)
        ops.cpu_attn_reshape_and_cache(key, value, key_cache, value_cache, slots, isa)

    return write


@pytest.mark.parametrize(
    ("isa", "dtype", "block_size", "head_size"),
    [
        ("vec", torch.float16, 32, 64),
        ("vec16", torch.float32, 32, 80),
        ("amx", torch.bfloat16, 32, 64),
        ("amx", torch.bfloat16, 128, 128),
    ],
)
def test_move_tokens_on_other_isa_layouts(isa, dtype, block_size, head_size):
    write = raw_op_write_fn(isa)
    layout = learn_page_layout(write, 2, block_size, head_size, dtype)
    moved = torch.zeros(4, 2, block_size, 2 * head_size, dtype=dtype)
    key, value = random_kv(moved, 4 * block_size, seed=7)
    write(key, value, moved, torch.arange(4 * block_size))
    src, dst = torch.arange(5, 100), torch.arange(0, 95)
    expected = moved.clone()
    write(key[src], value[src], expected, dst)

    move_tokens([moved], layout, src, dst)

    assert torch.equal(moved, expected)
    assert not torch.equal(
        layout.key_offsets, token_major_layout(block_size, head_size).key_offsets
    )


# --- learning and argument checks with synthetic write paths ----------------------------------
def token_major_write(key, value, cache, slots):
    """A write path storing each token as a contiguous [K | V] row (a plain torch backend)."""
    block_size = cache.shape[2]
    blocks, in_block = slots // block_size, slots % block_size
    cache[blocks, :, in_block] = torch.cat([key, value], dim=-1)


def test_learns_a_plain_row_layout_in_several_digit_passes():
    # 2 heads x 2 * 32 * 512 elements: codes need two base-256 digits
    layout = learn_page_layout(token_major_write, 2, 32, 512, torch.bfloat16)
    row_start = torch.arange(32)[:, None] * 2 * 512
    assert torch.equal(layout.key_offsets, row_start + torch.arange(512))
    assert torch.equal(layout.value_offsets, row_start + 512 + torch.arange(512))


def drop_first_token(key, value, cache, slots):
    token_major_write(key[1:], value[1:], cache, slots[1:])


def write_then(corrupt):
    def write(key, value, cache, slots):
        token_major_write(key, value, cache, slots)
        corrupt(cache)

    return write


def swap_heads(cache):
    cache[:] = cache.flip(1).clone()


def reverse_second_head(cache):
    cache[:, 1] = cache[:, 1].flip(1).clone()


def copy_keys_over_values(cache):
    half = cache.shape[3] // 2
    cache[..., half:] = cache[..., :half]


@pytest.mark.parametrize(
    ("write", "problem"),
    [
        (drop_first_token, "unwritten"),
        (lambda k, v, cache, slots: token_major_write(k / 2, v, cache, slots), "altered"),
        (write_then(swap_heads), "another head's page"),
        (write_then(reverse_second_head), "differs between kv heads"),
        (write_then(copy_keys_over_values), "permutation"),
    ],
    ids=["drops_a_token", "scales_keys", "swaps_heads", "head_dependent", "not_a_permutation"],
)
def test_learning_rejects_a_write_path_that_is_not_a_page_permutation(write, problem):
    with pytest.raises(RuntimeError, match=problem):
        learn_page_layout(write, 2, 32, 32, torch.float32)


def test_learning_rejects_unsupported_dtypes():
    with pytest.raises(ValueError, match="dtype"):
        learn_page_layout(token_major_write, 2, 32, 32, torch.float64)


@pytest.mark.parametrize(
    ("src", "dst", "problem"),
    [
        ([0, 1], [2], "differ in shape"),
        ([0, 1], [2, 2], "distinct"),
        ([0, 64], [1, 2], "out of range"),
        ([[0]], [[1]], "1-D"),
    ],
)
def test_move_tokens_rejects_bad_slots(src, dst, problem):
    layout = token_major_layout(32, 32)
    cache = torch.zeros(2, 2, 32, 64)
    with pytest.raises(ValueError, match=problem):
        move_tokens([cache], layout, torch.tensor(src), torch.tensor(dst))


def test_write_keys_rejects_keys_of_the_wrong_shape():
    with pytest.raises(ValueError, match="keys must have shape"):
        write_keys(
            torch.zeros(2, 2, 32, 64),
            token_major_layout(32, 32),
            torch.arange(3),
            torch.zeros(3, 32),
        )


# --- the plain-row path (GPU backends) against CPU_ATTN ------------------------------------
@pytest.mark.parametrize("move", sorted(MOVES))
def test_plain_rows_pack_like_the_cpu_backend(attention_layers, layouts, move):
    """The same K/V and the same plan through CPU_ATTN's pages (learned access) and through a
    plain ``[K | V]`` row cache (the GPU backends' order, ``token_rows``) hold the same tokens
    afterwards, and re-rotated anchor keys land identically."""
    from packcache_vllm.engine.kv_access import LearnedPageAccess, PlainRowAccess
    from packcache_vllm.engine.token_rows import read_value_rows

    src, dst = MOVES[move]()
    paged = scratch_caches(attention_layers, torch.float32)
    written = fill_through_backend(attention_layers, paged)
    rows = []  # NHD in memory (FlashAttention's usual order), viewed [blocks, heads, tokens, 2hd]
    for (key, value), cache in zip(written, paged, strict=True):
        blocks, heads, block_size, two_head_size = cache.shape
        physical = torch.cat([key, value], dim=-1).view(blocks, block_size, heads, two_head_size)
        rows.append(physical.transpose(1, 2))
    cpu, gpu_like = LearnedPageAccess(layouts[torch.float32]), PlainRowAccess(torch.device("cpu"))
    assert not layouts[torch.float32].is_plain_rows()  # CPU_ATTN permutes its pages

    cpu.move(paged, src, dst)
    gpu_like.move(rows, src, dst)
    anchors = torch.arange(5)
    new_keys = torch.randn(5, paged[0].shape[1], paged[0].shape[3] // 2)
    for layer_paged, layer_rows in zip(paged, rows, strict=True):
        cpu.write_keys(layer_paged, anchors, new_keys)
        gpu_like.write_keys(layer_rows, anchors, new_keys)

    every_slot = torch.arange(SCRATCH_BLOCKS * paged[0].shape[2])
    for layer_paged, layer_rows in zip(paged, rows, strict=True):
        assert torch.equal(
            cpu.read_keys(layer_paged, every_slot), gpu_like.read_keys(layer_rows, every_slot)
        )
        assert torch.equal(
            read_values(layer_paged, layouts[torch.float32], every_slot),
            read_value_rows(layer_rows, every_slot),
        )
