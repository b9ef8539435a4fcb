"""Palette frames -> RGB -> MP4 / GIF / PNG strip, and the client's command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from packcache_vllm.video.client import parse_args, parse_xarg
from packcache_vllm.video.palette import INVALID_RGB, PALETTE, PALETTE_SIZE
from packcache_vllm.video.render import to_rgb, write_video
from packcache_vllm.video.scene import random_scene, render_clip
from packcache_vllm.video.tokens import DecodedFrames


def test_each_cell_is_a_block_of_its_palette_colour():
    cells = torch.arange(96).remainder(PALETTE_SIZE).view(1, 8, 12)
    valid = torch.ones_like(cells, dtype=torch.bool)
    valid[0, 7, 11] = False
    rgb = to_rgb(DecodedFrames(cells, valid), cell_pixels=4)
    assert rgb.shape == (1, 32, 48, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 4 * 1 + 2, 4 * 3 + 1]) == PALETTE[int(cells[0, 1, 3])][1]
    assert tuple(rgb[0, 31, 47]) == INVALID_RGB


def test_gif_holds_the_frames_exactly_and_mp4_has_them_all(tmp_path):
    import imageio.v3 as iio

    frames = render_clip(random_scene("render", num_frames=5))
    rgb = to_rgb(DecodedFrames(frames, torch.ones_like(frames, dtype=torch.bool)))
    files = write_video(rgb, tmp_path / "clip")
    gif = iio.imread(files.gif, index=None)[..., :3]
    assert np.array_equal(gif, rgb)
    assert iio.imread(files.mp4, index=None).shape == rgb.shape
    assert iio.imread(files.strip).shape[1] > 5 * rgb.shape[2]


def test_client_arguments():
    assert parse_xarg("packcache_window=2") == ("packcache_window", 2)
    assert parse_xarg("packcache_min_keep=0.25") == ("packcache_min_keep", 0.25)
    args = parse_args(["--scene", "s", "--frames", "3", "--xarg", "packcache_window=2"])
    assert args.frames == 3 and dict(args.xarg) == {"packcache_window": 2}
    with pytest.raises(SystemExit):
        parse_args(["--frames", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--xarg", "no-equals-sign"])
