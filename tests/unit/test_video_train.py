"""The training model is the reference model's math, its checkpoint loads, and training learns."""

from __future__ import annotations

import json

import pytest
import torch

from packcache_vllm.model.factory import TinyLumosSpec
from packcache_vllm.reference import ReferenceVideoModel
from packcache_vllm.train.data import ClipSpec, make_batch, video_active_vocab
from packcache_vllm.train.model import ActiveVocab, TrainableLumos
from packcache_vllm.train.train import TrainConfig, continuation_loss, train

SMALL = TinyLumosSpec(hidden_size=32, num_attention_heads=1, num_key_value_heads=1,
                      num_hidden_layers=2, intermediate_size=64, codebook_size=16,
                      video_rows=4, video_cols=6, dtype=torch.float32)  # fmt: skip
CLIPS = ClipSpec(rows=4, cols=6, num_frames=3, max_objects=1)


def perturbed_model(seed: int = 0) -> TrainableLumos:
    """Random init plus noise everywhere (norm weights and biases too, so nothing is trivial)."""
    model = TrainableLumos(SMALL, video_active_vocab(), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def test_batched_forward_equals_the_reference_model(tmp_path):
    model = perturbed_model()
    clips = [CLIPS.clip("heldout", i) for i in range(3)]  # captions differ: different frame starts
    batch = make_batch(clips)
    with torch.no_grad():
        hidden = model(batch.ids, batch.frame_start)
    reference = ReferenceVideoModel.from_pretrained(model.save_pretrained(tmp_path))
    ids = torch.tensor(model.vocab.ids)
    for b, clip in enumerate(clips):
        expected = reference.causal_logits(clip.token_ids, clip.layout)  # [N, V]
        logits = model.active_logits(hidden[b, : len(clip.token_ids)])
        torch.testing.assert_close(logits[:, :-1], expected[:, ids], atol=1e-4, rtol=1e-4)
        rest = expected[:, ~torch.isin(torch.arange(SMALL.vocab_size), ids)]
        assert torch.equal(rest.min(dim=1).values, rest.max(dim=1).values)  # one shared row


def test_saved_checkpoint_is_lumos_format(tmp_path):
    out = perturbed_model().save_pretrained(tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 65536 + 16 and config["video_rows"] == 4
    assert (out / "tokenizer.json").is_file()


def test_active_vocab_rejects_ids_outside_it():
    vocab = ActiveVocab((1, 5, 9), 16)
    assert vocab.compact(torch.tensor([9, 1, 5])).tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match=r"\[7\]"):
        vocab.compact(torch.tensor([5, 7]))


def test_training_is_deterministic_and_lowers_the_loss():
    config = TrainConfig(steps=12, batch=2, lr=1e-2, warmup_steps=2, hidden_size=32, heads=1,
                         kv_heads=1, layers=1, intermediate_size=64, clip=CLIPS)  # fmt: skip
    model, losses, _ = train(config, log_every=1000)
    _, again, _ = train(config, log_every=1000)
    assert losses == again
    heldout = make_batch([CLIPS.clip("heldout", i) for i in range(4)])
    untrained = TrainableLumos(config.model_spec(), video_active_vocab(), seed=config.seed)
    with torch.no_grad():
        assert continuation_loss(model, heldout) < continuation_loss(untrained, heldout) - 1.5
