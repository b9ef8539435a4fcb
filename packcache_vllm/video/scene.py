"""Deterministic synthetic motion clips: a textured background, objects bouncing off the walls.

A ``Scene`` is pure data (frozen dataclasses); ``render_clip(scene)`` draws its frames as palette
indices ``[T, rows, cols]``. ``random_scene(seed, ...)`` draws a scene from a string or int seed
(``random.Random``), so the same seed always gives the same clip on every machine.

Motion is in whole cells per frame (each velocity component in {-1, 0, 1}), so a next-frame
predictor can be exact. An object reflects off a wall when its next step would leave the frame.
Objects are painted far to near (``depth`` descending), so nearer objects occlude farther ones.
A camera pan shifts the background (wider than the frame) by one cell every ``pan_period`` frames;
objects live in screen coordinates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from packcache_vllm.video.palette import BACKGROUND_COLOURS, OBJECT_COLOURS, colour_name

SCENE_FPS = 4  # a scene clip's frames per second: one latent frame per 1/4 s (its fps token)
SHAPES = ("square", "ring", "plus")
BACKGROUNDS = ("vertical stripes", "horizontal stripes", "checks", "diagonal stripes")
DIRECTIONS = {
    (-1, 0): "up",
    (1, 0): "down",
    (0, -1): "left",
    (0, 1): "right",
    (-1, -1): "up-left",
    (-1, 1): "up-right",
    (1, -1): "down-left",
    (1, 1): "down-right",
}


@dataclass(frozen=True)
class SceneObject:
    """One moving object: top-left cell (row, col), velocity in cells per frame, size x size cells.

    depth: larger is farther (painted first). stripe_colour is the second colour of a striped
    texture (rows alternate), None for a solid object.
    """

    shape: str
    colour: int
    row: int
    col: int
    d_row: int
    d_col: int
    size: int
    depth: int
    stripe_colour: int | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if (self.d_row, self.d_col) not in DIRECTIONS:
            raise ValueError(
                f"velocity must be a nonzero step in {{-1, 0, 1}}^2, "
                f"got ({self.d_row}, {self.d_col})"
            )
        if self.size < 1:
            raise ValueError(f"object size must be >= 1, got {self.size}")

    def describe(self) -> str:
        texture = "" if self.stripe_colour is None else "striped "
        direction = DIRECTIONS[(self.d_row, self.d_col)]
        return f"{colour_name(self.colour)} {texture}{self.shape} {direction}"

    def mask(self) -> torch.Tensor:
        """[size, size] bool: the cells the shape covers."""
        r = torch.arange(self.size)
        dist_r = (2 * r - (self.size - 1)).abs()[:, None]
        dist_c = (2 * r - (self.size - 1)).abs()[None, :]
        if self.shape == "square":
            return torch.ones(self.size, self.size, dtype=torch.bool)
        if self.shape == "ring":
            edge = self.size - 1
            return (dist_r == edge) | (dist_c == edge)
        return (dist_r <= 1) | (dist_c <= 1)  # plus

    def cells(self) -> torch.Tensor:
        """[size, size] int64 palette indices of the texture (masked by ``mask``)."""
        colours = torch.full((self.size, self.size), self.colour, dtype=torch.int64)
        if self.stripe_colour is not None:
            colours[1::2] = self.stripe_colour
        return colours


@dataclass(frozen=True)
class Scene:
    """A clip: grid, background texture, objects, camera pan and length.

    background: one of BACKGROUNDS, drawn with ``background_colours`` (two palette indices) at
    ``background_period`` cells per stripe/check. pan: camera step (-1, 0 or 1 columns) every
    ``pan_period`` frames.
    """

    rows: int
    cols: int
    num_frames: int
    background: str
    background_colours: tuple[int, int]
    background_period: int
    objects: tuple[SceneObject, ...]
    pan: int = 0
    pan_period: int = 2

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "num_frames", "background_period", "pan_period"):
            if getattr(self, name) < 1:
                raise ValueError(f"Scene.{name} must be >= 1, got {getattr(self, name)}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        if self.pan not in (-1, 0, 1):
            raise ValueError(f"pan must be -1, 0 or 1 (columns per step), got {self.pan}")
        for obj in self.objects:
            if not (0 <= obj.row <= self.rows - obj.size and 0 <= obj.col <= self.cols - obj.size):
                raise ValueError(
                    f"object {obj.describe()!r} does not fit the {self.rows}x{self.cols} grid"
                )

    def caption(self) -> str:
        objects = ", ".join(obj.describe() for obj in self.objects)
        colours = "-".join(colour_name(c) for c in self.background_colours)
        pan = {0: "", 1: ", pan right", -1: ", pan left"}[self.pan]
        return f"{objects} on {colours} {self.background}{pan}"


def background_world(scene: Scene, width: int) -> torch.Tensor:
    """[rows, width] int64: the background texture, ``width`` columns wide (for panning)."""
    r = torch.arange(scene.rows)[:, None]
    c = torch.arange(width)[None, :]
    p = scene.background_period
    phase = {
        "vertical stripes": (c // p) + 0 * r,
        "horizontal stripes": (r // p) + 0 * c,
        "checks": (r // p) + (c // p),
        "diagonal stripes": (r + c) // p,
    }[scene.background]
    first, second = scene.background_colours
    return torch.where(phase % 2 == 0, first, second).to(torch.int64)


def bounce(position: int, velocity: int, limit: int) -> tuple[int, int]:
    """One step in [0, limit], reflecting off the walls. Returns (position, velocity)."""
    if limit == 0:
        return 0, velocity
    nxt = position + velocity
    if nxt < 0 or nxt > limit:
        velocity = -velocity
        nxt = position + velocity
    return nxt, velocity


def trajectory(obj: SceneObject, scene: Scene) -> list[tuple[int, int]]:
    """Top-left (row, col) of ``obj`` in every frame."""
    row, col, d_row, d_col = obj.row, obj.col, obj.d_row, obj.d_col
    points = []
    for _ in range(scene.num_frames):
        points.append((row, col))
        row, d_row = bounce(row, d_row, scene.rows - obj.size)
        col, d_col = bounce(col, d_col, scene.cols - obj.size)
    return points


def camera_offsets(scene: Scene) -> list[int]:
    """Leftmost background-world column seen in each frame."""
    steps = [t // scene.pan_period for t in range(scene.num_frames)]
    if scene.pan >= 0:
        return [scene.pan * s for s in steps]
    last = steps[-1]
    return [last - s for s in steps]


def render_clip(scene: Scene) -> torch.Tensor:
    """[num_frames, rows, cols] int64 palette indices of every frame."""
    offsets = camera_offsets(scene)
    world = background_world(scene, scene.cols + max(offsets))
    frames = torch.stack([world[:, x : x + scene.cols] for x in offsets]).clone()
    for obj in sorted(scene.objects, key=lambda o: -o.depth):
        mask, cells = obj.mask(), obj.cells()
        for t, (row, col) in enumerate(trajectory(obj, scene)):
            window = frames[t, row : row + obj.size, col : col + obj.size]
            window[mask] = cells[mask]
    return frames


def random_scene(
    seed: int | str,
    rows: int = 8,
    cols: int = 12,
    num_frames: int = 8,
    *,
    max_objects: int = 3,
    pan_probability: float = 0.0,
) -> Scene:
    """A scene drawn deterministically from ``seed``: 1..max_objects objects of size 2-3 with
    distinct colours and depths, a background of two background tones, and (with probability
    ``pan_probability``) a camera pan."""
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    if not 0.0 <= pan_probability <= 1.0:
        raise ValueError(f"pan_probability must be in [0, 1], got {pan_probability}")
    rng = random.Random(seed)
    num_objects = rng.randint(1, max_objects)
    colours = rng.sample(OBJECT_COLOURS, 2 * num_objects)
    objects = tuple(
        random_object(rng, rows, cols, colours[2 * i], colours[2 * i + 1], depth=i)
        for i in range(num_objects)
    )
    pan = rng.choice((-1, 1)) if rng.random() < pan_probability else 0
    return Scene(
        rows=rows,
        cols=cols,
        num_frames=num_frames,
        background=rng.choice(BACKGROUNDS),
        background_colours=tuple(rng.sample(BACKGROUND_COLOURS, 2)),
        background_period=rng.randint(1, 3),
        objects=objects,
        pan=pan,
    )


def random_object(
    rng: random.Random, rows: int, cols: int, colour: int, second: int, depth: int
) -> SceneObject:
    size = min(rng.randint(2, 3), rows, cols)
    d_row, d_col = rng.choice(sorted(DIRECTIONS))
    shape = rng.choice(SHAPES) if size > 2 else "square"  # 2x2 rings and pluses are squares
    return SceneObject(
        shape=shape,
        colour=colour,
        row=rng.randint(0, rows - size),
        col=rng.randint(0, cols - size),
        d_row=d_row,
        d_col=d_col,
        size=size,
        depth=depth,
        stripe_colour=second if rng.random() < 0.3 else None,
    )
