"""How close a generated video is to its scene's true motion, frame by frame.

Four measures per generated frame, each against the ground truth (``render_clip``):

* cell accuracy: fraction of cells with the true palette index (an invalid token is wrong);
* background accuracy: the same, over the cells where the truth shows background (palette
  entries 0-5): does the static background survive, or do objects smear or ghosts appear;
* object position error: per object, the distance (in cells) between the centroid of the cells
  painted in its colours (solid colour and stripe colour, unique to it in a scene) in the
  generated frame and in the truth; objects fully occluded in the truth are skipped;
* objects lost: the fraction of the truth's visible objects with no cell of their colours at all
  in the generated frame (their position error is then undefined and left out of the mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from packcache_vllm.video.palette import BACKGROUND_COLOURS
from packcache_vllm.video.scene import Scene


@dataclass(frozen=True)
class FrameQuality:
    """Per generated frame, [T] each. position_error is NaN where no object was found."""

    cell_accuracy: torch.Tensor
    background_accuracy: torch.Tensor
    position_error: torch.Tensor
    lost_fraction: torch.Tensor

    def as_lists(self) -> dict[str, list[float]]:
        return {name: getattr(self, name).tolist() for name in self.__dataclass_fields__}


def decoded_accuracy(cells: torch.Tensor, valid: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """cells, valid, truth: [T, rows, cols] (``decode_frames`` output and the true frames) ->
    [T] fraction of cells holding the true palette index (an invalid cell is wrong)."""
    return ((cells == truth) & valid).float().mean(dim=(1, 2))


def object_colours(scene: Scene) -> list[tuple[int, ...]]:
    """Each object's palette indices: its colour, then its stripe colour if striped."""
    return [
        (obj.colour,) if obj.stripe_colour is None else (obj.colour, obj.stripe_colour)
        for obj in scene.objects
    ]


def centroids(
    frames: torch.Tensor, colours: tuple[int, ...], valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """frames: [T, rows, cols] palette indices; valid: [T, rows, cols] bool, the cells to look at
    (None: all). Returns (centre [T, 2] float (row, col) of the valid cells holding any of
    ``colours``, NaN where none; found [T] bool)."""
    painted = torch.isin(frames, torch.tensor(colours))  # [T, rows, cols]
    if valid is not None:
        painted &= valid
    count = painted.sum(dim=(1, 2)).float()  # [T]
    rows = torch.arange(frames.shape[1], dtype=torch.float32)[None, :, None]
    cols = torch.arange(frames.shape[2], dtype=torch.float32)[None, None, :]
    centre = torch.stack(
        [(painted * rows).sum(dim=(1, 2)) / count, (painted * cols).sum(dim=(1, 2)) / count], -1
    )
    return centre, count > 0


def frame_quality(
    cells: torch.Tensor, valid: torch.Tensor, truth: torch.Tensor, scene: Scene
) -> FrameQuality:
    """cells, valid: [T, rows, cols] a generated video (``decode_frames``); truth: [T, rows, cols]
    the true frames at the same times; scene: whose objects to track."""
    if cells.shape != truth.shape or valid.shape != truth.shape:
        raise ValueError(
            f"generated {tuple(cells.shape)} / valid {tuple(valid.shape)} and truth "
            f"{tuple(truth.shape)} must have the same [T, rows, cols] shape"
        )
    correct = (cells == truth) & valid
    background = torch.isin(truth, torch.tensor(BACKGROUND_COLOURS))
    errors, lost, visible = [], [], []
    for colours in object_colours(scene):
        true_centre, in_truth = centroids(truth, colours)
        centre, found = centroids(cells, colours, valid)
        distance = (centre - true_centre).norm(dim=-1)
        errors.append(torch.where(in_truth & found, distance, math.nan))
        lost.append(in_truth & ~found)
        visible.append(in_truth)
    errors_t = torch.stack(errors)  # [objects, T]
    return FrameQuality(
        cell_accuracy=decoded_accuracy(cells, valid, truth),
        background_accuracy=(correct & background).sum(dim=(1, 2)).float()
        / background.sum(dim=(1, 2)).clamp(min=1).float(),
        position_error=errors_t.nanmean(dim=0),
        lost_fraction=torch.stack(lost).sum(0).float()
        / torch.stack(visible).sum(0).clamp(min=1).float(),
    )
