"""The tiny Lumos-1 checkpoint factory: real key names/shapes, determinism, tokenizer, prompts."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from packcache_vllm.core.layout import LUMOS_TOKENS, FrameLayout, TokenRole, find_frame_start
from packcache_vllm.model import factory
from packcache_vllm.model.factory import build_tiny_lumos, make_video_prompt

ROWS, COLS = 4, 6


def lumos_shapes(
    layers: int, d: int, heads: int, kv_heads: int, inter: int, vocab: int, mp: int = 1
) -> dict[str, tuple[int, ...]]:
    """Keys and shapes as written in lumos-checkpoint-format.md."""
    hd = d // heads
    shapes = {
        "model.embed_tokens.weight": (vocab, d),
        "model.norm.weight": (d,),
        "lm_head.weight": (vocab, d),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (heads * hd, d),
                p + "self_attn.k_proj.weight": (kv_heads * hd, d),
                p + "self_attn.v_proj.weight": (kv_heads * hd, d),
                p + "self_attn.o_proj.weight": (d, d),
                p + "self_attn.q_norm.weight": (mp, hd),
                p + "self_attn.q_norm.bias": (mp, hd),
                p + "self_attn.k_norm.weight": (mp, hd),
                p + "self_attn.k_norm.bias": (mp, hd),
                p + "mlp.gate_proj.weight": (inter, d),
                p + "mlp.up_proj.weight": (inter, d),
                p + "mlp.down_proj.weight": (d, inter),
                p + "input_layernorm.weight": (d,),
                p + "post_attention_layernorm.weight": (d,),
            }
        )
    return shapes


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_lumos(
        tmp_path_factory.mktemp("tiny"), seed=0, video_rows=ROWS, video_cols=COLS
    )


def test_weights_have_lumos_keys_shapes_and_dtype(tiny_dir):
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    expected = lumos_shapes(2, 128, 4, 2, 256, 65536 + 256)
    assert {k: tuple(t.shape) for k, t in tensors.items()} == expected
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}


def test_other_sizes_and_model_parallel_norm_shapes(tmp_path):
    out = build_tiny_lumos(
        tmp_path,
        seed=3,
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_hidden_layers=3,
        intermediate_size=96,
        codebook_size=17,
        dtype=torch.float32,
        model_parallel_size=2,
    )
    tensors = load_file(str(out / "model.safetensors"))
    assert {k: tuple(t.shape) for k, t in tensors.items()} == lumos_shapes(
        3, 64, 2, 2, 96, 65536 + 17, mp=2
    )
    assert {t.dtype for t in tensors.values()} == {torch.float32}


def test_config_is_a_lumos_config_with_sorted_keys(tiny_dir):
    text = (tiny_dir / "config.json").read_text()
    config = json.loads(text)
    assert list(config) == sorted(config)
    assert config["model_type"] == "chameleon"
    assert config["architectures"] == ["ChameleonXLLMXForConditionalGeneration"]
    assert config["vocab_size"] == 65536 + config["codebook_size"] == 65792
    assert (config["video_rows"], config["video_cols"]) == (ROWS, COLS)
    assert config["mm_rope"] is True and config["mask_image_logits"] is False
    assert config["rope_scaling"] is None and config["tie_word_embeddings"] is False
    assert config["model_parallel_size"] == 1 and config["torch_dtype"] == "bfloat16"
    assert "head_dim" not in config  # Lumos derives it: hidden_size / heads


def test_same_seed_gives_identical_tensors_other_seed_differs(tiny_dir, tmp_path):
    again = build_tiny_lumos(tmp_path / "again", seed=0, video_rows=ROWS, video_cols=COLS)
    other = build_tiny_lumos(tmp_path / "other", seed=1, video_rows=ROWS, video_cols=COLS)
    first = (tiny_dir / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == first
    assert (other / "model.safetensors").read_bytes() != first
    assert (again / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()


def test_activations_and_logits_have_the_intended_scale(tiny_dir):
    tensors = {k: t.float() for k, t in load_file(str(tiny_dir / "model.safetensors")).items()}
    assert tensors["model.embed_tokens.weight"].std().item() == pytest.approx(1.0, rel=0.05)
    assert tensors["model.norm.weight"].mean().item() == pytest.approx(1.0, abs=0.05)
    unit_rms = torch.randn(1000, 128, generator=torch.Generator().manual_seed(0))
    logits = unit_rms @ tensors["lm_head.weight"].T
    assert 3.0 < logits.std().item() < 5.0


def test_tokenizer_round_trip(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    assert len(tok) == 65792
    assert tok.encode("hello", add_special_tokens=False) == [4 + b for b in b"hello"]
    text = tok.decode([LUMOS_TOKENS.frame_break, 65536 + 3])
    assert "<racm3:break>" in text and "<img3>" in text
    names = tok.convert_ids_to_tokens([0, 1, 2, 3, 8196, 8197, 8803, 9003, 9004, 9005, 65791])
    assert names == [
        "<s>",
        "<pad>",
        "</s>",
        "<unk>",
        "<eoss>",
        "<racm3:break>",
        "<reserved08799>",
        "<reserved08999>",
        "<reserved09000>",
        "<reserved09001>",
        "<img255>",
    ]
    assert tok.decode([4 + b for b in "héllo".encode()]) == "héllo"


def test_every_id_has_a_distinct_token():
    vocab = factory.tokenizer_vocab(256)
    assert sorted(vocab.values()) == list(range(65792))


def test_image_to_video_prompt_is_a_lumos_frame():
    text = [4 + b for b in b"a red ball"]
    prompt = make_video_prompt(ROWS, COLS, text, with_condition_frame=True, rng=random.Random(0))
    frame_start = find_frame_start(prompt)
    assert prompt[:frame_start] == [*text, 9004, 8804 + 2, 8804 + 12]  # video start, 2 s, 12 fps
    layout = FrameLayout(frame_start, len(prompt), ROWS, COLS)  # validates the frame length
    assert layout.num_anchor_frames == 1
    expected = {
        TokenRole.BREAK: lambda t: t == 8197,
        TokenRole.GRID: lambda t: t == 8804 + 1,  # 4 rows / 6 cols x 8 px // 32 px -> 1 unit
        TokenRole.VISUAL: lambda t: 65536 <= t < 65536 + 256,
        TokenRole.NEWLINE: lambda t: t == 8803,
        TokenRole.EOSS: lambda t: t == 8196,
    }
    for index in range(frame_start, len(prompt)):
        assert expected[layout.locate(index).role](prompt[index]), index


def test_text_to_video_prompt_ends_before_the_video():
    prompt = make_video_prompt(ROWS, COLS, [5, 6], with_condition_frame=False, rng=random.Random(0))
    assert prompt == [5, 6, 9004, 8806, 8816]
    assert find_frame_start(prompt) == len(prompt)


def test_prompt_visual_codes_follow_the_rng():
    a = make_video_prompt(ROWS, COLS, [5], with_condition_frame=True, rng=random.Random(7))
    b = make_video_prompt(ROWS, COLS, [5], with_condition_frame=True, rng=random.Random(7))
    c = make_video_prompt(ROWS, COLS, [5], with_condition_frame=True, rng=random.Random(8))
    assert a == b != c


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden_size": 130}, "multiple of num_attention_heads"),
        ({"num_key_value_heads": 3}, "must divide"),
        ({"video_rows": 0}, "video_rows"),
        ({"dtype": torch.int8}, "dtype"),
    ],
)
def test_bad_sizes_are_rejected(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_tiny_lumos(tmp_path, **kwargs)


def test_bad_prompt_text_is_rejected():
    with pytest.raises(ValueError, match="text ids"):
        make_video_prompt(ROWS, COLS, [70000], with_condition_frame=False, rng=random.Random(0))
    with pytest.raises(ValueError, match="racm3:break"):
        make_video_prompt(ROWS, COLS, [8197], with_condition_frame=False, rng=random.Random(0))


def test_cli_writes_a_checkpoint(tmp_path, capsys):
    factory.main([str(tmp_path / "cli"), "--seed", "2", "--rows", "3", "--cols", "5"])
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert (config["video_rows"], config["video_cols"]) == (3, 5)
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "3x5" in out
