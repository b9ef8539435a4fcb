"""The AR-DF training objective computes what frame-parallel inference computes (same tokens,
indices and attention as ``reference_ardf``), its loss covers the masked cells only, next-token
training is unchanged, and the committed AR-DF checkpoint: far better at masked cells than the
next-token checkpoint it was fine-tuned from and than copying the previous frame (the
conditioning frame cached whole, as inference does), and still better than copying the last
frame at next-token prediction."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from packcache_vllm.core.layout import LUMOS_TOKENS
from packcache_vllm.core.maskgit import (
    ARDFSamplingParams,
    apply_history_mask,
    history_mask,
    visual_cells,
)
from packcache_vllm.model.factory import TinyLumosSpec
from packcache_vllm.reference import NoEviction, ReferenceVideoModel
from packcache_vllm.reference_ardf import (
    ARDFSession,
    FrameAttention,
    twin_layout,
    unconditional_prompt,
)
from packcache_vllm.train import MOTION_CHECKPOINT
from packcache_vllm.train.ardf import (
    ARDFConfig,
    Role,
    ardf_logits,
    ardf_loss,
    build_example,
    make_ardf_batch,
)
from packcache_vllm.train.data import ClipSpec, video_active_vocab
from packcache_vllm.train.evaluate import masked_cell_accuracy, mean_accuracy, next_frame_accuracy
from packcache_vllm.train.model import TrainableLumos
from packcache_vllm.train.train import TrainConfig, train
from packcache_vllm.video.tokens import frame_tokens

SMALL = TinyLumosSpec(hidden_size=32, num_attention_heads=1, num_key_value_heads=1,
                      num_hidden_layers=2, intermediate_size=64, codebook_size=16,
                      video_rows=4, video_cols=6, dtype=torch.float32)  # fmt: skip
CLIPS = ClipSpec(rows=4, cols=6, num_frames=4, max_objects=1)
ARDF_CHECKPOINT = MOTION_CHECKPOINT.with_name("lumos-motion-8x12-ardf")
HELDOUT = ClipSpec()  # the training clips' shape, seeds from the held-out split
MARGIN = 0.05  # in cell accuracy (fraction of cells)
BIDIRECTIONAL = FrameAttention.BIDIRECTIONAL


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A random tiny TrainableLumos (noise on every parameter) and the same weights loaded by
    the reference model (float32)."""
    model = TrainableLumos(SMALL, video_active_vocab(), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    path = model.save_pretrained(tmp_path_factory.mktemp("ardf_small"))
    return model, ReferenceVideoModel.from_pretrained(path), path


# the inference default (conditioning frame cached whole, Lumos-1) and the earlier training's
CONDITION_RATIOS = (ARDFSamplingParams().condition_mask_ratio, 0.7)


def examples(clip, seed: int = 3, condition_ratio: float = CONDITION_RATIOS[0]):
    """A conditioned example and the unconditional twin's, of the same clip."""
    gen = torch.Generator().manual_seed(seed)
    return [
        build_example(clip, ARDFConfig(condition_ratio=condition_ratio, drop_caption=p), gen)
        for p in (0.0, 1.0)
    ]


def reference_canvas_logits(
    reference, clip, example, unconditional: bool, condition_ratio: float, peek: bool = False
):
    """Per frame f >= 1: ARDFSession.canvas_logits of the example's canvas f after the prompt
    (its conditioning frame cached with ``condition_ratio``, as ``prefilled_twins`` does) and the
    true frames 1..f-1 were committed (``peek``: frame f too, which training must not do)."""
    prompt = unconditional_prompt(clip.prompt) if unconditional else clip.prompt
    session = ARDFSession(reference, twin_layout(reference, prompt), NoEviction())
    commit_mask = history_mask(CLIPS.rows, CLIPS.cols, 0.7)
    condition_mask = history_mask(CLIPS.rows, CLIPS.cols, condition_ratio)
    session.prefill_prompt(prompt, condition_mask, BIDIRECTIONAL)
    out = []
    for f in range(1, CLIPS.num_frames):
        truth = torch.tensor(frame_tokens(clip.frames[f]))
        canvas = example.ids[(example.role == Role.CANVAS) & (example.frame == f)]
        if peek:
            session.commit(truth, commit_mask, BIDIRECTIONAL)
        out.append(session.canvas_logits(canvas, BIDIRECTIONAL))
        if not peek:
            session.commit(truth, commit_mask, BIDIRECTIONAL)
    return out


def canvas_rows(logits: torch.Tensor, example, f: int) -> torch.Tensor:
    """logits: [N', V] one batch row -> [F, V] at the example's canvas of frame f."""
    canvas = (example.role == Role.CANVAS) & (example.frame == f)
    return logits[: example.ids.numel()][canvas]


@pytest.mark.parametrize("condition_ratio", CONDITION_RATIOS)
def test_canvas_logits_equal_the_inference_reference_for_both_twins(small, condition_ratio):
    model, reference, _ = small
    clip = CLIPS.clip("heldout", 0)
    pair = examples(clip, condition_ratio=condition_ratio)
    with torch.no_grad():
        logits = ardf_logits(model, make_ardf_batch(pair))  # [2, N, 16]
    for b, (example, unconditional) in enumerate(zip(pair, (False, True), strict=True)):
        expected = reference_canvas_logits(reference, clip, example, unconditional, condition_ratio)
        for f, frame_logits in enumerate(expected, start=1):
            got = canvas_rows(logits[b], example, f)
            torch.testing.assert_close(got, frame_logits, atol=2e-5, rtol=1e-5)
    # the comparison is sensitive: a canvas that saw its own frame's commit reads differently
    peeked = reference_canvas_logits(reference, clip, pair[0], False, condition_ratio, peek=True)
    assert (canvas_rows(logits[0], pair[0], 1) - peeked[0]).abs().max() > 1e-3


def test_conditioning_frame_treatment_changes_every_canvas(small):
    """Examples built with the other condition ratio than inference's read differently from the
    reference at every frame: a conditioning frame masked (or whole) by mistake fails the test
    above."""
    model, reference, _ = small
    clip = CLIPS.clip("heldout", 0)
    whole, masked = CONDITION_RATIOS
    for built, served in ((whole, masked), (masked, whole)):
        example = examples(clip, condition_ratio=built)[0]
        with torch.no_grad():
            logits = ardf_logits(model, make_ardf_batch([example]))[0]
        expected = reference_canvas_logits(reference, clip, example, False, served)
        for f, frame_logits in enumerate(expected, start=1):
            assert (canvas_rows(logits, example, f) - frame_logits).abs().max() > 1e-3, f


@pytest.mark.parametrize("condition_ratio", CONDITION_RATIOS)
def test_example_tokens_and_indices_are_the_inference_ones(condition_ratio):
    clip = CLIPS.clip("heldout", 1)
    cond, uncond = examples(clip, condition_ratio=condition_ratio)
    uncond_prompt = unconditional_prompt(clip.prompt)
    assert uncond.ids[: uncond.frame_start].tolist() == uncond_prompt[: uncond.frame_start]
    assert uncond.ids[0] == LUMOS_TOKENS.video_start and uncond.frame_start == 3
    assert cond.frame_start == clip.layout.frame_start
    per_frame = clip.layout.tokens_per_frame
    cells = visual_cells(CLIPS.rows, CLIPS.cols)
    commit_mask = history_mask(CLIPS.rows, CLIPS.cols, 0.7)
    condition_mask = history_mask(CLIPS.rows, CLIPS.cols, condition_ratio)
    for example in (cond, uncond):
        for f in range(CLIPS.num_frames):
            truth = torch.tensor(frame_tokens(clip.frames[f]))
            span = example.frame_start + f * per_frame + torch.arange(per_frame)
            commit = (example.role == Role.COMMIT) & (example.frame == f)
            canvas = (example.role == Role.CANVAS) & (example.frame == f)
            if f < CLIPS.num_frames - 1:  # commits of frames 0..T-2: 0 the prompt's, history-masked
                mask = condition_mask if f == 0 else commit_mask
                assert torch.equal(example.ids[commit], apply_history_mask(truth, mask))
                assert torch.equal(example.index[commit], span)
            if f >= 1:  # canvases of frames 1..T-1: layout intact, >= 1 cell masked
                masked = example.ids[canvas] == LUMOS_TOKENS.mask
                assert torch.equal(example.index[canvas], span)
                assert masked.any() and not (masked & ~cells).any()
                assert torch.equal(example.ids[canvas][~masked], truth[~masked])


@pytest.mark.parametrize("condition_ratio", CONDITION_RATIOS)
def test_evaluator_prefills_the_conditioning_frame_as_training_does(
    small, monkeypatch, condition_ratio
):
    """masked_cell_accuracy caches the prompt's frame with the condition ratio it is given
    (inference's default: whole), the ratio ``ARDFConfig`` builds the training examples with."""
    _, reference, _ = small
    seen = []
    prefill = ARDFSession.prefill_prompt

    def spy(self, prompt_ids, condition_mask, attention):
        seen.append(condition_mask)
        prefill(self, prompt_ids, condition_mask, attention)

    monkeypatch.setattr(ARDFSession, "prefill_prompt", spy)
    clip = CLIPS.clip("heldout", 3)
    ratio = {} if condition_ratio == ARDFConfig().condition_ratio else {"condition_ratio": 0.7}
    masked_cell_accuracy(reference, clip, **ratio)
    assert len(seen) == 1
    assert torch.equal(seen[0], history_mask(CLIPS.rows, CLIPS.cols, condition_ratio))


def test_loss_covers_exactly_the_masked_cells(small):
    model, _, _ = small
    clip = CLIPS.clip("heldout", 2)
    example = examples(clip)[0]
    masked = (example.role == Role.CANVAS) & (example.ids == LUMOS_TOKENS.mask)
    assert torch.equal(example.loss_mask, masked)
    batch = make_ardf_batch([example])
    with torch.no_grad():
        loss = ardf_loss(model, batch)
        logits = ardf_logits(model, batch)[0]
    # the targets are the true codes there: recompute them from the clip
    truth = torch.cat([torch.tensor(frame_tokens(f)) for f in clip.frames[1:]])
    targets = truth[(example.ids == LUMOS_TOKENS.mask)[example.role == Role.CANVAS]]
    expected = torch.nn.functional.cross_entropy(logits[masked], targets - LUMOS_TOKENS.visual_base)
    torch.testing.assert_close(loss, expected)
    # every other position is ignored: scrambling its targets changes nothing
    scrambled = batch.targets.clone()
    scrambled[~batch.loss_mask] = 7
    with torch.no_grad():
        assert ardf_loss(model, replace(batch, targets=scrambled)) == loss


def test_padding_does_not_change_a_sequence(small):
    model, _, _ = small
    short, long = examples(CLIPS.clip("heldout", 4))[1], examples(CLIPS.clip("heldout", 5))[0]
    assert short.ids.numel() < long.ids.numel()
    with torch.no_grad():
        alone = ardf_logits(model, make_ardf_batch([short]))[0]
        padded = ardf_logits(model, make_ardf_batch([short, long]))[0, : short.ids.numel()]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_checkpoint_loader_inverts_the_writer(small):
    model, _, path = small
    loaded = TrainableLumos.from_pretrained(path, video_active_vocab())
    for name, tensor in model.checkpoint_tensors(torch.float32).items():
        assert torch.equal(loaded.checkpoint_tensors(torch.float32)[name], tensor), name


# Losses of the code before the AR-DF objective existed (commit 9a205e9), this config, 2 threads.
NEXT_TOKEN_LOSSES = [11.07630443572998, 11.036324501037598, 10.798995971679688, 10.64148235321045]


def test_next_token_training_is_unchanged():
    config = TrainConfig(steps=4, batch=2, lr=1e-2, warmup_steps=2, hidden_size=32, heads=1,
                         kv_heads=1, layers=1, intermediate_size=64,
                         clip=ClipSpec(rows=4, cols=6, num_frames=3, max_objects=1))  # fmt: skip
    assert config.objective == "next-token"
    _, losses, _ = train(config, log_every=1000)
    torch.testing.assert_close(losses, NEXT_TOKEN_LOSSES, atol=1e-5, rtol=1e-6)


def test_ardf_training_learns_and_both_sums_the_parts():
    tiny = dict(batch=2, lr=1e-2, warmup_steps=2, hidden_size=32, heads=1, kv_heads=1, layers=1,
                intermediate_size=64, clip=CLIPS)  # fmt: skip
    model, _, _ = train(TrainConfig(steps=12, objective="ardf", **tiny), log_every=1000)
    untrained = TrainableLumos(model.spec, video_active_vocab(), seed=0)
    gen = torch.Generator().manual_seed(5)
    heldout = make_ardf_batch(
        [build_example(CLIPS.clip("heldout", i), ARDFConfig(), gen) for i in range(4)]
    )
    with torch.no_grad():
        assert ardf_loss(model, heldout) < ardf_loss(untrained, heldout) - 0.2  # 2.46 vs 2.80
    parts: dict[str, list[float]] = {}
    _, losses, _ = train(TrainConfig(steps=2, objective="both", **tiny), 1000, parts)
    assert losses == pytest.approx([a + n for a, n in zip(*parts.values(), strict=True)])
    assert sorted(parts) == ["ardf", "next-token"]


# --- the committed AR-DF checkpoint -------------------------------------------------------------


@pytest.fixture(scope="module")
def ardf_model():
    return ReferenceVideoModel.from_pretrained(ARDF_CHECKPOINT)


def test_ardf_checkpoint_was_trained_with_the_ardf_objective():
    record = json.loads((ARDF_CHECKPOINT / "training.json").read_text())
    assert record["config"]["objective"] == "both"


def heldout_masked_accuracy(model: ReferenceVideoModel):
    """Teacher-forced AR-DF accuracy at masked cells (MaskGIT fractions), 8 held-out clips."""
    clips = [HELDOUT.clip("heldout", i) for i in range(8)]
    return mean_accuracy(
        [masked_cell_accuracy(model, c, None, seed=i) for i, c in enumerate(clips)]
    )


def test_ardf_training_is_what_makes_frame_parallel_prediction_work(ardf_model):
    """The AR-DF checkpoint against the next-token one it was fine-tuned from (never trained for
    canvases): 90.6 % against 48.4 % of the masked cells right; copying frame t-1: 86.1 %."""
    result = heldout_masked_accuracy(ardf_model)
    next_token_only = heldout_masked_accuracy(
        ReferenceVideoModel.from_pretrained(MOTION_CHECKPOINT)
    )
    assert result.model.mean() > 0.75, result.model
    assert result.model.mean() > next_token_only.model.mean() + 0.2, next_token_only.model
    assert result.model.mean() > result.baseline.mean() + 0.02, result.baseline


def test_ardf_checkpoint_still_beats_copying_the_last_frame_next_token(ardf_model):
    result = mean_accuracy(
        [next_frame_accuracy(ardf_model, HELDOUT.clip("heldout", i)) for i in range(6)]
    )
    assert result.model.mean() > result.baseline.mean() + MARGIN, (result.model, result.baseline)
