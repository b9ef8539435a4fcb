"""Codecs: the palette (exact round trips), a tiny random Emu3 VQ-VAE (geometry, determinism, the
quantizer's fixed point, save/load through the factory), code <-> id mapping, and an image that
becomes a conditioning frame the prompt validator accepts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from packcache_vllm.codec.base import COSMOS_DV4X8X8, CodecGeometry
from packcache_vllm.codec.emu3_vq import Emu3VQCodec, tiny_emu3_vq
from packcache_vllm.codec.frames import decode_frame_ids, frames_ids
from packcache_vllm.codec.palette import PaletteCodec
from packcache_vllm.codec.spec import codec_for
from packcache_vllm.core.layout import LUMOS_TOKENS, video_prompt_layout
from packcache_vllm.core.maskgit import grid_token_ids, visual_offsets
from packcache_vllm.model.factory import TinyLumosSpec, build_tiny_lumos, lumos_config
from packcache_vllm.video.palette import INVALID_RGB, PALETTE_SIZE
from packcache_vllm.video.scene import random_scene, render_clip

ROWS, COLS = 4, 6
VQ_CODES = 64


@pytest.fixture(scope="module")
def emu3_codec() -> Emu3VQCodec:
    return Emu3VQCodec(tiny_emu3_vq(codebook_size=VQ_CODES, seed=0))


@pytest.fixture(scope="module")
def emu3_dir(tmp_path_factory):
    return build_tiny_lumos(
        tmp_path_factory.mktemp("emu3"),
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_hidden_layers=1,
        intermediate_size=32,
        codebook_size=VQ_CODES,
        video_rows=ROWS,
        video_cols=COLS,
        codec="emu3-vq",
    )


def random_codes(shape: tuple[int, ...], size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, size, shape, generator=torch.Generator().manual_seed(seed))


# --- geometry ------------------------------------------------------------------------------------


def test_cosmos_geometry_gives_lumos_latent_frames():
    # Lumos-1: 2 s x 12 fps = 24 frames -> 7 latent frames, 48 -> 13 (ceil((N - 1) / 4) + 1)
    assert [COSMOS_DV4X8X8.latent_frames(n) for n in (1, 24, 48, 25, 26)] == [1, 7, 13, 7, 8]
    assert COSMOS_DV4X8X8.pixel_frames(7) == 25
    assert COSMOS_DV4X8X8.size(48, 84) == "672x384"


def test_non_causal_and_palette_geometry():
    emu3 = CodecGeometry(8, 4)
    assert [emu3.latent_frames(n) for n in (1, 4, 8, 9)] == [1, 1, 2, 3]
    assert emu3.pixel_frames(2) == 8
    assert [CodecGeometry(16).latent_frames(n) for n in (1, 8)] == [1, 8]
    with pytest.raises(ValueError, match="pixels_per_token"):
        CodecGeometry(0)


# --- palette -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", [8, 16, 32])
def test_palette_codes_round_trip_exactly(cell):
    codec = PaletteCodec(cell)
    codes = torch.arange(2 * 8 * 12).remainder(PALETTE_SIZE).view(2, 8, 12)
    rgb = codec.decode(codes)
    assert rgb.shape == (2, 8 * cell, 12 * cell, 3) and rgb.dtype == np.uint8
    assert torch.equal(codec.encode(rgb), codes)


def test_palette_frames_round_trip_and_noise_snaps_to_the_palette():
    codec = PaletteCodec()
    frames = render_clip(random_scene("codec", num_frames=3))
    rgb = codec.decode(frames)
    assert np.array_equal(codec.decode(codec.encode(rgb)), rgb)
    noise = np.random.default_rng(0).integers(-12, 13, rgb.shape)
    noisy = np.clip(rgb.astype(np.int64) + noise, 0, 255).astype(np.uint8)
    assert torch.equal(codec.encode(noisy), frames)
    assert torch.equal(codec.encode(rgb[0]), frames[:1])  # an image is one frame


def test_palette_paints_invalid_cells():
    codes = torch.zeros(1, 2, 3, dtype=torch.int64)
    ids = frames_ids(codes, PALETTE_SIZE)
    ids[3] = LUMOS_TOKENS.newline  # a marker where cell (0, 0) belongs
    frames = decode_frame_ids(ids, 2, 3, PALETTE_SIZE, strict=False)
    rgb = PaletteCodec(4).decode_frames(frames)
    assert tuple(rgb[0, 0, 0]) == INVALID_RGB and tuple(rgb[0, 4, 4]) != INVALID_RGB


def test_codec_inputs_are_checked():
    codec = PaletteCodec(8)
    with pytest.raises(ValueError, match="uint8"):
        codec.encode(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="10x8 pixels is not a whole grid of 8x8"):
        codec.encode(np.zeros((8, 10, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 16\), got 16"):
        codec.decode(torch.full((1, 2, 2), PALETTE_SIZE))
    with pytest.raises(ValueError, match=r"\[T, rows, cols\]"):
        codec.decode(torch.zeros(2, 2, dtype=torch.int64))


# --- codes <-> ids -------------------------------------------------------------------------------


def test_frames_ids_put_codes_at_the_visual_offsets_and_read_back():
    codes = random_codes((2, ROWS, COLS), VQ_CODES)
    ids = torch.tensor(frames_ids(codes, VQ_CODES)).view(2, -1)
    assert torch.equal(
        ids[:, visual_offsets(ROWS, COLS)], codes.view(2, -1) + LUMOS_TOKENS.visual_base
    )
    decoded = decode_frame_ids(ids.flatten().tolist(), ROWS, COLS, VQ_CODES)
    assert torch.equal(decoded.cells, codes) and decoded.valid.all()
    top = torch.full((1, ROWS, COLS), VQ_CODES - 1)
    with pytest.raises(ValueError, match=r"cell \(0, 0\) holds token 65599, not a visual code of"):
        decode_frame_ids(frames_ids(top, VQ_CODES), ROWS, COLS, VQ_CODES - 1)


# --- Emu3 VQ-VAE ---------------------------------------------------------------------------------


def test_emu3_geometry_and_shapes(emu3_codec):
    assert emu3_codec.geometry == CodecGeometry(8, 4)
    image = np.random.default_rng(0).integers(0, 256, (ROWS * 8, COLS * 8, 3), dtype=np.uint8)
    codes = emu3_codec.encode(image)
    assert codes.shape == (1, ROWS, COLS) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < VQ_CODES
    clip = np.stack([image] * 8)
    assert emu3_codec.encode(clip).shape == (2, ROWS, COLS)
    rgb = emu3_codec.decode(random_codes((2, ROWS, COLS), VQ_CODES))
    assert rgb.shape == (8, ROWS * 8, COLS * 8, 3) and rgb.dtype == np.uint8
    with pytest.raises(ValueError, match="multiple of 4 frames, got 5"):
        emu3_codec.encode(clip[:5])


def test_emu3_is_deterministic_and_its_quantizer_is_a_fixed_point(emu3_codec):
    """Random weights tie nothing between decoder and encoder, so encode(decode(c)) == c is not
    expected; what holds exactly: a codebook vector quantizes to its own code, and encode/decode
    are functions (same input, same output)."""
    codes = random_codes((2, ROWS, COLS), VQ_CODES, seed=1)
    vectors = emu3_codec.vq.quantize.embedding(codes)  # [T, rows, cols, C]
    assert torch.equal(emu3_codec.vq.quantize(vectors.permute(0, 3, 1, 2)[None])[0], codes)
    rgb = emu3_codec.decode(codes)
    assert np.array_equal(emu3_codec.decode(codes), rgb)
    again = emu3_codec.encode(rgb)
    assert again.shape == codes.shape and torch.equal(emu3_codec.encode(rgb), again)


def test_factory_saves_an_emu3_vq_that_codec_for_loads(emu3_dir, emu3_codec):
    config = json.loads((emu3_dir / "config.json").read_text())
    assert config["packcache_codec"] == {"kind": "emu3-vq", "path": "vq"}
    assert (emu3_dir / "vq" / "config.json").is_file()
    loaded = codec_for(emu3_dir)
    assert isinstance(loaded, Emu3VQCodec) and loaded.codebook_size == VQ_CODES
    codes = random_codes((1, ROWS, COLS), VQ_CODES, seed=2)
    assert np.array_equal(loaded.decode(codes), emu3_codec.decode(codes))  # same seed, same VQ
    with pytest.raises(ValueError, match="cell_pixels must be one of \\[8\\]"):
        codec_for(emu3_dir, 16)


def test_an_image_becomes_a_conditioning_frame_the_validator_accepts(emu3_dir):
    codec = codec_for(emu3_dir)
    image = np.random.default_rng(3).integers(0, 256, (ROWS * 8, COLS * 8, 3), dtype=np.uint8)
    codes = codec.encode(image)
    prompt = [5, 6, LUMOS_TOKENS.video_start, 8806, 8816, *frames_ids(codes, VQ_CODES)]
    layout = video_prompt_layout(prompt, ROWS, COLS, grid_token_ids(ROWS, COLS))
    assert layout.frame_start == 5 and layout.num_anchor_frames == 1
    frame = torch.tensor(prompt[5:])
    assert torch.equal(frame[visual_offsets(ROWS, COLS)], codes.flatten() + 65536)


# --- the factory and codec_for -------------------------------------------------------------------


def test_factory_without_codec_writes_the_plain_lumos_config(tmp_path):
    out = build_tiny_lumos(tmp_path, hidden_size=32, num_attention_heads=2, num_hidden_layers=1)
    expected = lumos_config(
        TinyLumosSpec(hidden_size=32, num_attention_heads=2, num_hidden_layers=1)
    )
    text = (out / "config.json").read_text()
    assert text == json.dumps(expected, indent=2, sort_keys=True) + "\n"
    assert not (out / "vq").exists()
    with pytest.raises(ValueError, match="Cosmos DV4x8x8 tokenizer is not built in"):
        codec_for(out)


def test_factory_palette_codec_and_bad_codecs(tmp_path):
    out = build_tiny_lumos(
        tmp_path / "palette", hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
        codebook_size=PALETTE_SIZE, video_rows=8, video_cols=12, codec="palette",
    )  # fmt: skip
    codec = codec_for(out, 8)
    assert isinstance(codec, PaletteCodec) and codec.geometry.pixels_per_token == 8
    assert codec_for(out).geometry.pixels_per_token == 16  # the default size
    with pytest.raises(ValueError, match="the palette has 16 codes, the model's visual codebook"):
        build_tiny_lumos(tmp_path / "wide", codec="palette")
    with pytest.raises(ValueError, match="codec must be one of"):
        build_tiny_lumos(tmp_path / "other", codec="cosmos")
