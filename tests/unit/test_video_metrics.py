"""The video quality measures: exact on the truth, and each moves the way it should."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from packcache_vllm.video.quality import frame_quality
from packcache_vllm.video.scene import Scene, SceneObject, render_clip


def two_object_scene(**red_changes) -> Scene:
    red = SceneObject("square", colour=6, row=1, col=1, d_row=0, d_col=1, size=2, depth=0)
    blue = SceneObject("square", colour=11, row=5, col=8, d_row=-1, d_col=0, size=2, depth=1)
    return Scene(8, 12, 4, "checks", (0, 1), 2, (replace(red, **red_changes), blue))


def all_valid(frames: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(frames, dtype=torch.bool)


def test_the_truth_scores_perfectly():
    scene = two_object_scene()
    truth = render_clip(scene)
    quality = frame_quality(truth, all_valid(truth), truth, scene)
    assert quality.cell_accuracy.eq(1).all() and quality.background_accuracy.eq(1).all()
    assert quality.position_error.eq(0).all() and quality.lost_fraction.eq(0).all()


def test_an_object_one_cell_off_has_error_one_for_that_object_alone():
    scene = two_object_scene()
    truth = render_clip(scene)
    shifted = render_clip(two_object_scene(col=2))  # the red square one column to the right
    quality = frame_quality(shifted, all_valid(truth), truth, scene)
    # two objects, red off by exactly one column, blue exact: mean error 0.5 in every frame
    assert torch.allclose(quality.position_error, torch.full((4,), 0.5))
    assert quality.lost_fraction.eq(0).all()
    assert (quality.cell_accuracy < 1).all() and (quality.background_accuracy < 1).all()


def test_a_vanished_object_is_lost_and_left_out_of_the_position_error():
    scene = two_object_scene()
    truth = render_clip(scene)
    without_red = render_clip(replace(scene, objects=scene.objects[1:]))
    quality = frame_quality(without_red, all_valid(truth), truth, scene)
    assert torch.allclose(quality.lost_fraction, torch.full((4,), 0.5))
    assert quality.position_error.eq(0).all()  # blue, the only object found, is exact
    assert quality.background_accuracy.eq(1).all()  # the background is untouched


def test_invalid_cells_are_wrong_and_never_an_object():
    scene = two_object_scene()
    truth = render_clip(scene)
    valid = truth != 6  # every red cell invalid (a marker where a colour belongs)
    quality = frame_quality(truth, valid, truth, scene)
    assert torch.allclose(quality.lost_fraction, torch.full((4,), 0.5))
    red_cells = (truth == 6).sum(dim=(1, 2)).float() / truth[0].numel()
    assert torch.allclose(quality.cell_accuracy, 1 - red_cells)


def test_no_object_found_gives_nan_error_not_zero():
    scene = two_object_scene()
    truth = render_clip(scene)
    background = render_clip(replace(scene, objects=()))
    quality = frame_quality(background, all_valid(truth), truth, scene)
    assert all(math.isnan(v) for v in quality.position_error.tolist())
    assert quality.lost_fraction.eq(1).all()


def test_shape_mismatch_is_named():
    scene = two_object_scene()
    truth = render_clip(scene)
    with pytest.raises(ValueError, match=r"same \[T, rows, cols\] shape"):
        frame_quality(truth[:2], all_valid(truth[:2]), truth, scene)
