"""Prompts from text: the trained checkpoints get a caption exactly as they were trained, Lumos-1's
template for checkpoints without ``video_prompt``, sizes and seconds, and every limit named."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from packcache_vllm.codec.prompts import build_video_prompt, checkpoint_tokenizer, video_prompt
from packcache_vllm.codec.spec import checkpoint_video, video_shape
from packcache_vllm.core.layout import LUMOS_TOKENS, find_frame_start, video_prompt_layout
from packcache_vllm.core.maskgit import grid_token_ids
from packcache_vllm.core.position_code import MAX_FRAME_START
from packcache_vllm.model.factory import TinyLumosSpec, lumos_config
from packcache_vllm.video.scene import random_scene, render_clip
from packcache_vllm.video.tokens import scene_prompt

TRAINED = Path(__file__).parents[2] / "checkpoints" / "lumos-motion-8x12"
LONG = TRAINED.with_name("lumos-motion-8x12-long")


@pytest.fixture(scope="module")
def tokenizer():
    return checkpoint_tokenizer(str(TRAINED))  # the byte-level tokenizer every tiny checkpoint has


@pytest.fixture()
def lumos_dir(tmp_path):
    """A config without our video keys (as a real Lumos-1's): 4 x 6 grid, 16 codes."""
    config = lumos_config(TinyLumosSpec(codebook_size=16, video_rows=4, video_cols=6))
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("seed", ["heldout-0", "heldout-5"])
def test_trained_checkpoint_gets_a_caption_as_it_was_trained(seed, tokenizer):
    scene = random_scene(seed, 8, 12, 8)  # 2 s at the checkpoint's 4 fps
    first = render_clip(scene)[0]
    shape = video_shape(TRAINED, None, "2")
    assert (shape.num_frames, shape.size, shape.fps) == (8, "192x128", 4)
    prompt = video_prompt(TRAINED, scene.caption(), shape, first)
    assert prompt == scene_prompt(scene, first)
    assert video_prompt(TRAINED, scene.caption(), shape) == prompt[: find_frame_start(prompt)]
    layout = video_prompt_layout(prompt, 8, 12, grid_token_ids(8, 12))
    assert layout.num_anchor_frames == 1


def test_long_checkpoint_seconds_match_its_training_clips(tokenizer):
    scene = random_scene("heldout-1", 8, 12, 16)  # trained on 16-frame clips: duration token 4
    shape = video_shape(LONG, "96x64", 4)
    assert (shape.num_frames, shape.cell_pixels) == (16, 8)
    first = render_clip(scene)[0]
    prompt = build_video_prompt(checkpoint_video(LONG), tokenizer, scene.caption(), shape, first)
    assert prompt == scene_prompt(replace(scene, num_frames=16), first)


def test_lumos_template_and_cosmos_frames(lumos_dir, tokenizer):
    shape = video_shape(lumos_dir, None, None)  # 2 s at 12 fps = 24 frames -> 7 latent frames
    assert (shape.num_frames, shape.size, shape.seconds, shape.fps) == (7, "48x32", 2, 12)
    prompt = build_video_prompt(checkpoint_video(lumos_dir), tokenizer, "a red ball", shape)
    question = (
        "Generate a video with a resolution of 48x32, consisting of 24 frames at 12 frames per "
        "second, according to the following prompt:\n a red ball"
    )
    text = [4 + b for b in question.encode()]
    grid = LUMOS_TOKENS.grid_base
    assert prompt == [0, *text, 8710, LUMOS_TOKENS.video_start, grid + 2, grid + 12]
    assert video_shape(lumos_dir, "48x32", 4).num_frames == 13  # 48 frames -> 13, as Lumos-1


@pytest.mark.parametrize(
    "size, seconds, match",
    [
        ("100x100", 2, r"size must be one of \['192x128', '96x64', '384x256'\]"),
        ("128x192", 2, "size must be one of"),
        (None, 0, r"seconds must be a whole number in \[1, 198\], got 0"),
        (None, "1.5", "seconds must be a whole number"),
        (None, 1.0, "seconds must be a whole number"),
        (None, 199, "seconds must be a whole number"),
        (None, True, "seconds must be a whole number"),
    ],
)
def test_bad_sizes_and_seconds_are_named(size, seconds, match):
    with pytest.raises(ValueError, match=match):
        video_shape(TRAINED, size, seconds)


@pytest.mark.parametrize(
    "caption, match",
    [
        ("", "caption must be a non-empty string"),
        ("  \n", "caption must be a non-empty string"),
        ("a ball<eoss>", "caption contains Lumos-1's video/frame marker token 8196"),
        ("a" * (MAX_FRAME_START - 2), "caption too long: .* is 4,096 tokens, at most 4,095"),
    ],
)
def test_bad_captions_are_named(caption, match, tokenizer):
    video = checkpoint_video(TRAINED)
    with pytest.raises(ValueError, match=match):
        build_video_prompt(video, tokenizer, caption, video_shape(TRAINED, None, 2))


def test_the_longest_caption_fits(tokenizer):
    caption = "a" * (MAX_FRAME_START - 3)  # + <video_start>, duration, fps = the limit
    shape = video_shape(TRAINED, None, 2)
    prompt = build_video_prompt(checkpoint_video(TRAINED), tokenizer, caption, shape)
    assert len(prompt) == MAX_FRAME_START


def test_bad_condition_codes_are_named(tokenizer):
    video, shape = checkpoint_video(TRAINED), video_shape(TRAINED, None, 2)
    with pytest.raises(ValueError, match="condition codes must be .* 8 x 12 grid, got shape"):
        build_video_prompt(video, tokenizer, "a", shape, torch.zeros(4, 6, dtype=torch.int64))
    with pytest.raises(ValueError, match="condition frames \\(8\\) leave nothing to generate"):
        build_video_prompt(video, tokenizer, "a", shape, torch.zeros(8, 8, 12, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"visual codes must lie in \[0, 16\), got 16"):
        build_video_prompt(video, tokenizer, "a", shape, torch.full((8, 12), 16))


def test_bad_video_keys_are_named(lumos_dir):
    config = json.loads((lumos_dir / "config.json").read_text())
    for key, value, match in [
        ("video_fps", 0, "video_fps must be an integer"),
        ("video_prompt", "chat", "video_prompt must be one of"),
        ("packcache_codec", {"kind": "cosmos"}, "packcache_codec must be an object with kind"),
        ("packcache_codec", {"kind": "emu3-vq"}, "needs a folder 'path'"),
    ]:
        (lumos_dir / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ValueError, match=match):
            checkpoint_video(lumos_dir)
