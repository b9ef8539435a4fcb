"""Synthetic clips: deterministic scenes, physical motion, and an exact token round trip."""

from __future__ import annotations

import pytest
import torch

from packcache_vllm.core.layout import LUMOS_TOKENS, FrameLayout
from packcache_vllm.video.palette import PALETTE_SIZE
from packcache_vllm.video.scene import Scene, SceneObject, random_scene, render_clip, trajectory
from packcache_vllm.video.tokens import decode_frames, frames_tokens, scene_clip

SEEDS = [f"test-{i}" for i in range(12)]


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_same_seed_same_clip(seed):
    first, second = (
        scene_clip(random_scene(seed, pan_probability=0.5)),
        scene_clip(random_scene(seed, pan_probability=0.5)),
    )
    assert first.scene == second.scene
    assert torch.equal(first.frames, second.frames)
    assert first.token_ids == second.token_ids


def test_different_seeds_differ():
    clips = {tuple(scene_clip(random_scene(s)).token_ids) for s in SEEDS}
    assert len(clips) == len(SEEDS)


def test_objects_move_and_bounce_inside_the_frame():
    obj = SceneObject("square", colour=6, row=0, col=9, d_row=1, d_col=1, size=2, depth=0)
    scene = Scene(8, 12, 6, "checks", (0, 1), 1, (obj,))
    assert trajectory(obj, scene) == [(0, 9), (1, 10), (2, 9), (3, 8), (4, 7), (5, 6)]
    frames = render_clip(scene)
    for t, (row, col) in enumerate(trajectory(obj, scene)):
        assert (frames[t, row : row + 2, col : col + 2] == 6).all()
        assert (frames[t] == 6).sum() == 4


def test_nearer_object_occludes_farther_one():
    near = SceneObject("square", colour=6, row=2, col=2, d_row=0, d_col=1, size=3, depth=0)
    far = SceneObject("square", colour=7, row=2, col=3, d_row=0, d_col=-1, size=3, depth=1)
    frame = render_clip(Scene(8, 12, 1, "checks", (0, 1), 1, (far, near)))[0]
    assert (frame[2:5, 2:5] == 6).all()
    assert (frame[2:5, 5] == 7).all()


def test_pan_shifts_the_background():
    scene = Scene(8, 12, 4, "vertical stripes", (0, 1), 1, (), pan=1, pan_period=1)
    frames = render_clip(scene)
    assert torch.equal(frames[1, :, :-1], frames[0, :, 1:])
    assert not torch.equal(frames[1], frames[0])


def test_clip_follows_the_lumos_frame_layout():
    clip = scene_clip(random_scene("layout", num_frames=5))
    layout = clip.layout
    assert layout.num_anchor_frames == 1
    assert len(clip.continuation) == 4 * layout.tokens_per_frame
    ids = clip.token_ids
    for frame in range(5):
        start, end = layout.frame_span(frame)
        assert ids[start] == LUMOS_TOKENS.frame_break and ids[end - 1] == LUMOS_TOKENS.eoss
    assert LUMOS_TOKENS.video_start in clip.prompt[: layout.frame_start]


@pytest.mark.parametrize("seed", SEEDS)
def test_decode_inverts_encode_exactly(seed):
    frames = render_clip(random_scene(seed, pan_probability=0.5))
    decoded = decode_frames(frames_tokens(frames), 8, 12)
    assert torch.equal(decoded.cells, frames) and decoded.valid.all()


def test_every_palette_code_round_trips():
    frames = torch.arange(96).remainder(PALETTE_SIZE).view(1, 8, 12)
    assert torch.equal(decode_frames(frames_tokens(frames), 8, 12).cells, frames)


def test_strict_decode_names_the_misplaced_token():
    tokens = frames_tokens(render_clip(random_scene("bad"))[:2])
    per_frame = FrameLayout(0, 0, 8, 12).tokens_per_frame
    bad_cell = list(tokens)
    bad_cell[per_frame + 3] = LUMOS_TOKENS.newline
    with pytest.raises(ValueError, match=r"frame 1 cell \(0, 0\)"):
        decode_frames(bad_cell, 8, 12)
    lenient = decode_frames(bad_cell, 8, 12, strict=False)
    assert not lenient.valid[1, 0, 0] and lenient.valid.sum() == 2 * 96 - 1
    bad_marker = list(tokens)
    bad_marker[per_frame - 1] = LUMOS_TOKENS.visual_base
    with pytest.raises(ValueError, match=f"frame 0 offset {per_frame - 1}"):
        decode_frames(bad_marker, 8, 12)


def test_bad_scene_values_are_named():
    with pytest.raises(ValueError, match="velocity"):
        SceneObject("square", 6, 0, 0, 0, 0, 2, 0)
    with pytest.raises(ValueError, match="pan"):
        Scene(8, 12, 4, "checks", (0, 1), 1, (), pan=2)
    with pytest.raises(ValueError, match="background"):
        Scene(8, 12, 4, "polka dots", (0, 1), 1, ())
