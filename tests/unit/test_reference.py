"""The dense reference: cache bookkeeping, QK-norm, eviction, time rebase, swin-norm."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from packcache_vllm.core.layout import FrameLayout
from packcache_vllm.model.factory import build_tiny_lumos, make_video_prompt
from packcache_vllm.reference import (
    KeptHistory,
    NoEviction,
    PackCachePolicy,
    RebaseMode,
    ReferenceConfig,
    ReferenceVideoModel,
    qk_norm,
)

ROWS, COLS = 3, 4
F = ROWS * (COLS + 1) + 4  # 19 tokens per frame
TEXT = [4 + b for b in b"a red ball"]
TOL = {"atol": 1e-4, "rtol": 0.0}  # float32; logits have std ~4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_lumos(
        tmp_path_factory.mktemp("tiny"), seed=0, video_rows=ROWS, video_cols=COLS
    )


@pytest.fixture(scope="module")
def model(model_dir):
    return ReferenceVideoModel.from_pretrained(model_dir)


def video_prompt(with_condition_frame: bool = True) -> list[int]:
    rng = random.Random(1)
    return make_video_prompt(ROWS, COLS, TEXT, with_condition_frame=with_condition_frame, rng=rng)


@dataclass
class DecayPolicy:
    """A small PackCache-like policy: the newest frame whole, the one before it keeps its even
    offsets, older frames dropped whole (nested as frames age)."""

    def kept_history(self, n, layout, newest_frame_keys=()):
        per_frame = layout.tokens_per_frame
        kept = []
        for frame in range(n):
            distance = n - 1 - frame
            if distance == 0:
                kept.append(frozenset(range(per_frame)))
            elif distance == 1:
                kept.append(frozenset(range(0, per_frame, 2)))
            else:
                kept.append(frozenset())
        return KeptHistory(max(0, n - 2), tuple(kept))


def expected_kept(index: int, anchor_len: int, n: int) -> set[int]:
    """DecayPolicy's cache when the token at ``index`` is the input of a forward, n frames done."""
    kept = set(range(anchor_len))
    for frame in range(n):
        start = anchor_len + frame * F
        distance = n - 1 - frame
        offsets = range(F) if distance == 0 else range(0, F, 2) if distance == 1 else ()
        kept |= {start + o for o in offsets}
    kept |= set(range(anchor_len + n * F, index + 1))
    return kept


def teacher_forced_logits(model, layout, prompt, tokens, policy, rebase=RebaseMode.POSITIONS):
    session = model.session(layout, policy, rebase)
    logits = [session.prefill(prompt)]
    logits += [session.feed(t) for t in tokens[:-1]]
    return torch.stack(logits)


# --- (1) the cached loop equals one full causal forward --------------------------------------


@pytest.mark.parametrize("with_condition_frame", [True, False], ids=["i2v", "t2v"])
def test_cached_generation_matches_full_causal_forward(model, with_condition_frame):
    prompt = video_prompt(with_condition_frame)
    layout = model.layout_for(prompt)
    result = model.generate(prompt, layout, 3 * F + 5, NoEviction(), return_logits=True)
    full = model.causal_logits([*prompt, *result.token_ids[:-1]], layout)
    torch.testing.assert_close(result.logits, full[len(prompt) - 1 :], **TOL)
    assert result.token_ids == tuple(int(t) for t in full[len(prompt) - 1 :].argmax(-1))
    last = result.steps[-1]
    assert last.kept_indices.tolist() == list(range(last.index))  # nothing was evicted
    assert {step.dropped_frames for step in result.steps} == {0}


def test_no_policy_equals_no_eviction(model):
    prompt = video_prompt()
    layout = model.layout_for(prompt)
    a = model.generate(prompt, layout, 2 * F, None, return_logits=True)
    b = model.generate(prompt, layout, 2 * F, NoEviction(), return_logits=True)
    assert a.token_ids == b.token_ids
    assert torch.equal(a.logits, b.logits)


def test_text_path_matches_transformers_chameleon(model_dir, model):
    """With every token text (1D RoPE), Lumos-1 is Chameleon with per-head QK-norm weights."""
    modeling = pytest.importorskip("transformers.models.chameleon.modeling_chameleon")
    from safetensors.torch import load_file
    from transformers import ChameleonConfig

    config = json.loads((model_dir / "config.json").read_text())
    config.pop("architectures")
    hf_config = ChameleonConfig(**config, vocabulary_map={})
    hf_config._attn_implementation = "eager"
    hf_model = modeling.ChameleonModel(hf_config).float().eval()
    tensors = load_file(str(model_dir / "model.safetensors"))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    state = {}
    for name, tensor in tensors.items():
        if "q_norm" in name:
            tensor = tensor.repeat_interleave(heads // tensor.shape[0], dim=0)
        elif "k_norm" in name:
            tensor = tensor.repeat_interleave(kv_heads // tensor.shape[0], dim=0)
        if name.startswith("model."):
            state[name.removeprefix("model.")] = tensor.float()
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    assert not unexpected and all(name.startswith("vqmodel.") for name in missing)

    ids = torch.randint(0, config["vocab_size"], (40,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = hf_model(input_ids=ids[None]).last_hidden_state[0]
    expected = hidden @ tensors["lm_head.weight"].float().T
    all_text = FrameLayout(frame_start=40, anchor_len=40, rows=ROWS, cols=COLS)
    torch.testing.assert_close(model.causal_logits(ids.tolist(), all_text), expected, **TOL)


# --- (2) QK-norm ----------------------------------------------------------------------------


def test_qk_norm_matches_the_explicit_formula():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, generator=gen) * 3 + 1  # [N=3, heads=2, hd=4]
    weight = torch.tensor([[1.0, 2.0, 0.5, -1.0]])  # [mp=1, hd]
    bias = torch.tensor([[0.0, 0.1, -0.2, 0.3]])
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm
    expected = (x - mean) / torch.sqrt(var + 1e-5) * weight[0] + bias[0]
    torch.testing.assert_close(qk_norm(x, weight, bias), expected)


def test_qk_norm_shards_cover_consecutive_heads():
    x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(1))
    weight = torch.stack([torch.full((8,), 2.0), torch.full((8,), 3.0)])  # [mp=2, hd]
    bias = torch.stack([torch.zeros(8), torch.ones(8)])
    out = qk_norm(x, weight, bias)
    normed = torch.nn.functional.layer_norm(x, (8,), eps=1e-5)
    torch.testing.assert_close(out[:, :2], normed[:, :2] * 2.0)  # heads 0, 1: shard 0
    torch.testing.assert_close(out[:, 2:], normed[:, 2:] * 3.0 + 1.0)  # heads 2, 3: shard 1


# --- (3) eviction and the time rebase --------------------------------------------------------


def test_decay_policy_keeps_exactly_the_planned_tokens(model):
    prompt = video_prompt()
    layout = model.layout_for(prompt)
    result = model.generate(prompt, layout, 5 * F + 3, DecayPolicy())
    anchor_len = layout.anchor_len
    for step in result.steps[1:]:
        input_index = step.index - 1  # the token whose forward gave these logits
        n = (input_index - anchor_len) // F  # generated frames complete before that forward
        kept = expected_kept(input_index, anchor_len, n)
        assert step.kept_indices.tolist() == sorted(kept), step.index
        assert step.dropped_frames == max(0, n - 2)
    assert max(step.dropped_frames for step in result.steps) == 3


def test_eviction_changes_the_output(model):
    prompt = video_prompt()
    layout = model.layout_for(prompt)
    full = model.generate(prompt, layout, 4 * F, NoEviction(), return_logits=True)
    evicted = teacher_forced_logits(model, layout, prompt, full.token_ids, DecayPolicy())
    first_eviction = 2 * F + 1  # frame 0 is halved once frame 1 completes: logits row 2F + 1
    torch.testing.assert_close(evicted[:first_eviction], full.logits[:first_eviction], **TOL)
    assert (evicted[first_eviction:] - full.logits[first_eviction:]).abs().max() > 0.1


def perturbed_run(model, layout, prompt, tokens, index, delta):
    """Teacher-forced DecayPolicy logits with the last layer's cached value of token ``index``
    shifted by ``delta`` right after it is computed (last layer: no later K/V depends on it)."""
    session = model.session(layout, DecayPolicy())
    logits = [session.prefill(prompt)]
    for position, token in enumerate(tokens[:-1], start=len(prompt)):
        logits.append(session.feed(token))
        if position == index:
            row = int((session.cache.indices == index).nonzero())
            session.cache.values[-1][row] += delta
    return torch.stack(logits)


def test_dropped_tokens_are_absent_from_attention(model):
    prompt = video_prompt()
    layout = model.layout_for(prompt)
    tokens = model.generate(prompt, layout, 3 * F + 8, DecayPolicy()).token_ids
    base = teacher_forced_logits(model, layout, prompt, tokens, DecayPolicy())
    odd = layout.anchor_len + 5  # frame 0, odd offset: evicted when frame 1 completes
    even = layout.anchor_len + 6  # frame 0, even offset: kept until frame 2 completes
    for index, evicted_at in ((odd, 2 * F + 1), (even, 3 * F + 1)):  # first rows without it
        changed = perturbed_run(model, layout, prompt, tokens, index, delta=5.0)
        step_of_index = index - layout.anchor_len + 1  # first logits that see it
        assert torch.equal(changed[:step_of_index], base[:step_of_index])
        assert (
            changed[step_of_index:evicted_at] - base[step_of_index:evicted_at]
        ).abs().max() > 1e-3
        assert torch.equal(changed[evicted_at:], base[evicted_at:]), index


def test_rebased_positions_equal_rotating_anchor_keys(model):
    prompt = video_prompt()
    layout = model.layout_for(prompt)
    by_positions = model.generate(prompt, layout, 5 * F + 8, DecayPolicy(), return_logits=True)
    by_rotation = model.generate(
        prompt,
        layout,
        5 * F + 8,
        DecayPolicy(),
        rebase=RebaseMode.ROTATE_ANCHORS,
        return_logits=True,
    )
    assert max(step.dropped_frames for step in by_positions.steps) == 3
    assert by_rotation.token_ids == by_positions.token_ids
    torch.testing.assert_close(by_rotation.logits, by_positions.logits, **TOL)


def test_the_rebase_matters(model, monkeypatch):
    """Without the rebase the same evictions give other logits (so the equivalence above is not
    vacuous)."""
    prompt = video_prompt()
    layout = model.layout_for(prompt)
    tokens = model.generate(prompt, layout, 3 * F + 16, DecayPolicy()).token_ids
    rebased = teacher_forced_logits(model, layout, prompt, tokens, DecayPolicy())
    from packcache_vllm.reference import ReferenceSession

    monkeypatch.setattr(ReferenceSession, "_rope_shift", lambda self: 0)
    unrebased = teacher_forced_logits(model, layout, prompt, tokens, DecayPolicy())
    first_drop = 3 * F + 1  # frame 0 is dropped whole when frame 2 completes
    torch.testing.assert_close(unrebased[:first_drop], rebased[:first_drop], **TOL)
    assert (unrebased[first_drop:] - rebased[first_drop:]).abs().max() > 1e-3


def test_policy_that_revives_evicted_tokens_is_rejected(model):
    prompt = video_prompt()
    session = model.session(model.layout_for(prompt), DecayPolicy())
    session.prefill(prompt)
    for _ in range(2 * F):  # frame 0 keeps only its even offsets
        session.feed(4)
    session.policy = NoEviction()
    with pytest.raises(ValueError, match="already evicted"):
        for _ in range(F):
            session.feed(4)


def test_policy_that_undrops_frames_is_rejected(model):
    prompt = video_prompt()
    session = model.session(model.layout_for(prompt), DecayPolicy())
    session.prefill(prompt)
    for _ in range(3 * F):  # frame 0 dropped whole
        session.feed(4)
    session.policy = NoEviction()
    with pytest.raises(ValueError, match="dropped_frames went back"):
        for _ in range(F):
            session.feed(4)


# --- the PackCache adapter ------------------------------------------------------------------


@dataclass(frozen=True)
class HalvingConfig:
    """Duck-typed stand-in for core.budget.PackCacheConfig: window 3, halving per frame."""

    window: int = 3
    selector: str = "uniform"

    def keep_counts(self, n, per_frame):
        return tuple(
            0 if n - 1 - f >= self.window else max(per_frame >> (n - 1 - f), 1) for f in range(n)
        )

    def dropped_frames(self, n):
        return max(0, n - self.window)


def test_packcache_adapter_keeps_order_prefixes(model):
    order = list(reversed(range(F)))
    policy = PackCachePolicy(HalvingConfig(), orders=order)
    layout = model.layout_for(video_prompt())
    history = policy.kept_history(5, layout)
    assert history.dropped_frames == 2
    assert history.kept_offsets == (
        frozenset(),
        frozenset(),
        frozenset(order[: F // 4]),
        frozenset(order[: F // 2]),
        frozenset(order),
    )


@pytest.mark.parametrize("selector", ["uniform", "key_norm"])
def test_packcache_adapter_with_core_selectors(model, selector):
    pytest.importorskip("packcache_vllm.core.select")
    prompt = video_prompt()
    layout = model.layout_for(prompt)
    policy = PackCachePolicy(HalvingConfig(selector=selector))
    result = model.generate(prompt, layout, 6 * F, policy)
    peak = max(len(step.kept_indices) for step in result.steps)
    assert peak <= layout.anchor_len + F + F // 2 + F // 4 + F  # window of 3 + current frame
    assert result.steps[-1].dropped_frames == 2


def test_packcache_adapter_with_the_real_budget(model):
    budget = pytest.importorskip("packcache_vllm.core.budget")
    pytest.importorskip("packcache_vllm.core.select")
    config = budget.PackCacheConfig(window=3, decay=0.5, min_keep=0.25, selector="uniform")
    prompt = video_prompt()
    layout = model.layout_for(prompt)
    result = model.generate(prompt, layout, 6 * F, PackCachePolicy(config))
    assert result.steps[-1].dropped_frames == config.dropped_frames(5)
    assert max(len(step.kept_indices) for step in result.steps) <= layout.anchor_len + 4 * F


# --- (4) swin-norm, loading, bad input -------------------------------------------------------


def test_swin_norm_model_runs_and_its_cache_is_consistent(tmp_path, model):
    swin_dir = build_tiny_lumos(tmp_path, seed=0, video_rows=ROWS, video_cols=COLS, swin_norm=True)
    swin = ReferenceVideoModel.from_pretrained(swin_dir)
    assert swin.config.swin_norm
    prompt = video_prompt()
    layout = swin.layout_for(prompt)
    result = swin.generate(prompt, layout, 2 * F, DecayPolicy(), return_logits=True)
    assert torch.isfinite(result.logits).all()
    cached = swin.generate(prompt, layout, F, NoEviction(), return_logits=True)
    full = swin.causal_logits([*prompt, *cached.token_ids[:-1]], layout)
    torch.testing.assert_close(cached.logits, full[len(prompt) - 1 :], **TOL)
    pre_norm = model.causal_logits(prompt, layout)  # same weights, pre-norm layers
    assert (pre_norm - full[: len(prompt)]).abs().max() > 0.1


def test_config_checks():
    base = {
        "hidden_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 8,
        "num_hidden_layers": 1,
        "vocab_size": 10,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_theta": 500.0},
    }
    assert ReferenceConfig.from_dict(base).rope_theta == 500.0
    assert (
        ReferenceConfig.from_dict(base).video_rows,
        ReferenceConfig.from_dict(base).video_cols,
    ) == (48, 84)
    with pytest.raises(ValueError, match="mm_rope"):
        ReferenceConfig.from_dict({**base, "mm_rope": False})
    with pytest.raises(ValueError, match="lacks"):
        ReferenceConfig.from_dict({k: v for k, v in base.items() if k != "vocab_size"})
    with pytest.raises(ValueError, match="must divide"):
        ReferenceConfig.from_dict({**base, "num_key_value_heads": 3})


def test_checkpoint_with_a_wrong_shape_is_rejected(tmp_path):
    from safetensors.torch import load_file, save_file

    out = build_tiny_lumos(tmp_path, seed=0)
    tensors = load_file(str(out / "model.safetensors"))
    tensors["model.layers.0.self_attn.q_norm.weight"] = torch.ones(4, 32)  # upstream [heads, hd]
    tensors["model.vqmodel.encoder.conv_in.weight"] = torch.ones(1)  # ignored, as Lumos's loader
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(ValueError, match="q_norm.weight has shape"):
        ReferenceVideoModel.from_pretrained(out)


def test_bad_generation_input_is_rejected(model):
    prompt = video_prompt()
    layout = model.layout_for(prompt)
    with pytest.raises(ValueError, match="token ids"):
        model.generate([*prompt[:-1], 70000], layout, 1)
    with pytest.raises(ValueError, match="anchor_len"):
        model.generate(prompt[:-1], layout, 1)
    with pytest.raises(ValueError, match="num_new_tokens"):
        model.generate(prompt, layout, -1)
    nothing = model.generate(prompt, layout, 0, return_logits=True)
    assert nothing.token_ids == () and nothing.logits.shape == (0, model.config.vocab_size)


def test_reference_and_factory_never_import_vllm():
    check = (
        "import sys, packcache_vllm.reference, packcache_vllm.model.factory as f; "
        "f.make_tokenizer(1); "
        "loaded = [m for m in sys.modules if m == 'vllm' or m.startswith('vllm.')]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_key_norm_reads_the_last_layer_because_the_first_ties_equal_codes(model):
    """Why ``core.select.key_layer`` is the last layer: in the first, a cell's key is a function
    of its code alone, so a frame of one repeated code has one key norm for all its cells; by
    the last layer attention has made every cell's key its own."""
    from packcache_vllm.core.select import key_layer

    one_code = make_video_prompt(
        ROWS, COLS, TEXT, with_condition_frame=True, rng=random.Random(1), codebook_size=1
    )
    layout = model.layout_for(one_code)
    session = model.session(layout)  # RebaseMode.POSITIONS: the cache holds unrotated keys
    session.prefill(one_code)
    start = layout.frame_span(0)[0] + 3
    cells = [start + r * (COLS + 1) + c for r in range(ROWS) for c in range(COLS)]
    norms = [keys[cells].norm(dim=-1).mean(dim=-1) for keys in session.cache.keys]
    spread = [float((n.max() - n.min()) / n.mean()) for n in norms]
    assert key_layer(len(norms)) == len(norms) - 1 >= 1
    assert spread[0] < 1e-6
    assert spread[-1] > 1e-3
