"""What a checkpoint's config.json says about its videos, the shape of a requested video, and the
checkpoint's codec (``codec_for``).

Keys of our own in config.json (beside ``video_rows`` / ``video_cols`` / ``codebook_size``):

* ``packcache_codec``: ``{"kind": "palette"}`` (the synthetic scenes' colours, 16 codes; sizes at
  16, 8 or 32 pixels per code) or ``{"kind": "emu3-vq", "path": "vq"}`` (an ``Emu3VQVAE`` folder
  inside the checkpoint; optional ``"mean"`` / ``"std"``, 3 floats each). Absent (a real Lumos-1
  checkpoint): Lumos-1's Cosmos DV4x8x8 geometry (8 pixels per code, 4 frames per latent frame,
  first frame alone) for sizes and durations, and ``codec_for`` refuses (no Cosmos tokenizer here).
* ``video_fps``: the fps of the prompt's fps token and of ``seconds`` (default 12, Lumos-1's).
* ``video_prompt``: ``"lumos"`` (Lumos-1's instruction template, the default) or ``"caption"``
  (the caption alone: how the trained checkpoints in ``checkpoints/`` were trained, at 4 fps).

``seconds`` -> latent frames: ``geometry.latent_frames(seconds * fps)`` (Lumos-1 at 12 fps:
ceil((24 - 1) / 4) + 1 = 7 for 2 s; the palette: 4 fps, one latent frame per frame, 8 for 2 s).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from packcache_vllm.codec.base import COSMOS_DV4X8X8, CodecGeometry, VisualCodec
from packcache_vllm.codec.emu3_vq import DEFAULT_MEAN, DEFAULT_STD, emu3_geometry
from packcache_vllm.core.layout import LUMOS_TOKENS
from packcache_vllm.model.config_hook import frame_grid, visual_codebook_size
from packcache_vllm.video.palette import PALETTE_SIZE

CODEC_KEY = "packcache_codec"
FPS_KEY = "video_fps"
PROMPT_KEY = "video_prompt"
PALETTE, EMU3_VQ = "palette", "emu3-vq"
CODEC_KINDS = (PALETTE, EMU3_VQ)
PROMPT_STYLES = ("lumos", "caption")
DEFAULT_FPS = 12  # Lumos-1: --video_fps 12
DEFAULT_SECONDS = 2  # Lumos-1's inference: 2 s
PALETTE_CELL_PIXELS = (16, 8, 32)  # the first is the default size
MAX_COUNT = LUMOS_TOKENS.mask - LUMOS_TOKENS.grid_base - 1  # largest duration/fps token count


@dataclass(frozen=True)
class CheckpointVideo:
    """A checkpoint's video settings. geometries: one per size it makes, the default first."""

    model_dir: Path
    rows: int
    cols: int
    codebook_size: int
    fps: int
    prompt_style: str
    codec: dict | None  # the packcache_codec field
    geometries: tuple[CodecGeometry, ...]

    @property
    def sizes(self) -> tuple[str, ...]:
        return tuple(g.size(self.rows, self.cols) for g in self.geometries)

    def geometry_for(self, size: str | None) -> CodecGeometry:
        """ValueError (starting with "size") unless ``size`` is one this model makes."""
        if size is None:
            return self.geometries[0]
        if size not in self.sizes:
            raise ValueError(
                f"size must be one of {list(self.sizes)} for this model ({self.rows} x "
                f"{self.cols} codes per frame), got {size!r}"
            )
        return self.geometries[self.sizes.index(size)]


def checkpoint_video(model_dir: str | Path) -> CheckpointVideo:
    """Read ``model_dir/config.json``; ValueError naming a bad key or a codebook mismatch."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    rows, cols = frame_grid(SimpleNamespace(**config))
    codebook_size = visual_codebook_size(SimpleNamespace(**config))
    fps = config.get(FPS_KEY, DEFAULT_FPS)
    if not isinstance(fps, int) or isinstance(fps, bool) or not 1 <= fps <= MAX_COUNT:
        raise ValueError(
            f"{model_dir}: {FPS_KEY} must be an integer in [1, {MAX_COUNT}], got {fps!r}"
        )
    style = config.get(PROMPT_KEY, PROMPT_STYLES[0])
    if style not in PROMPT_STYLES:
        raise ValueError(f"{model_dir}: {PROMPT_KEY} must be one of {PROMPT_STYLES}, got {style!r}")
    codec = config.get(CODEC_KEY)
    geometries = codec_geometries(model_dir, codec, codebook_size)
    return CheckpointVideo(model_dir, rows, cols, codebook_size, fps, style, codec, geometries)


def codec_geometries(
    model_dir: Path, codec: dict | None, codebook_size: int
) -> tuple[CodecGeometry, ...]:
    if codec is None:
        return (COSMOS_DV4X8X8,)
    kind = codec.get("kind") if isinstance(codec, dict) else None
    if kind == PALETTE:
        check_codebook(model_dir, PALETTE_SIZE, codebook_size, "the palette")
        return tuple(CodecGeometry(p) for p in PALETTE_CELL_PIXELS)
    if kind == EMU3_VQ:
        vq_config = json.loads((vq_dir(model_dir, codec) / "config.json").read_text())
        check_codebook(model_dir, vq_config["codebook_size"], codebook_size, "its Emu3 VQ")
        return (emu3_geometry(vq_config),)
    raise ValueError(
        f"{model_dir}: {CODEC_KEY} must be an object with kind one of {CODEC_KINDS}, got {codec!r}"
    )


def check_codebook(model_dir: Path, codec_size: int, model_size: int, codec_name: str) -> None:
    if codec_size != model_size:
        raise ValueError(
            f"{model_dir}: {codec_name} has {codec_size} codes, the model's visual codebook "
            f"(codebook_size) {model_size}: they must be the same"
        )


def vq_dir(model_dir: Path, codec: dict) -> Path:
    path = codec.get("path")
    if not isinstance(path, str) or not path:
        raise ValueError(f"{model_dir}: {CODEC_KEY} of kind {EMU3_VQ} needs a folder 'path'")
    return model_dir / path


@dataclass(frozen=True)
class VideoShape:
    """A requested video: rows x cols codes per frame, ``num_frames`` latent frames (the
    conditioning frames included), ``cell_pixels`` pixels per code, ``seconds`` at ``fps``."""

    rows: int
    cols: int
    num_frames: int
    cell_pixels: int
    seconds: int
    fps: int

    @property
    def width(self) -> int:
        return self.cols * self.cell_pixels

    @property
    def height(self) -> int:
        return self.rows * self.cell_pixels

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def video_shape(model_dir: str | Path, size: str | None, seconds: int | str | None) -> VideoShape:
    """The OpenAI ``size`` ("WIDTHxHEIGHT"; None: the model's default) and ``seconds`` (a whole
    number, int or string; None: 2) -> the video's shape. ValueError starting with "size" or
    "seconds", naming what this model can make."""
    video = checkpoint_video(model_dir)
    geometry = video.geometry_for(size)
    duration = parse_seconds(seconds)
    frames = geometry.latent_frames(duration * video.fps)
    return VideoShape(
        video.rows, video.cols, frames, geometry.pixels_per_token, duration, video.fps
    )


def parse_seconds(seconds: int | str | None) -> int:
    if seconds is None:
        return DEFAULT_SECONDS
    text = str(seconds) if isinstance(seconds, (int, str)) and not isinstance(seconds, bool) else ""
    if not text.isdigit() or not 1 <= int(text) <= MAX_COUNT:
        raise ValueError(f"seconds must be a whole number in [1, {MAX_COUNT}], got {seconds!r}")
    return int(text)


def codec_for(model_dir: str | Path, cell_pixels: int | None = None) -> VisualCodec:
    """The checkpoint's codec (``packcache_codec``); ``cell_pixels`` picks one of its sizes
    (None: the default). ValueError when the checkpoint names none this project builds."""
    video = checkpoint_video(model_dir)
    pixels = [g.pixels_per_token for g in video.geometries]
    if cell_pixels is not None and cell_pixels not in pixels:
        raise ValueError(f"cell_pixels must be one of {pixels} for this model, got {cell_pixels}")
    if video.codec is None:
        raise ValueError(
            f"{video.model_dir}: config.json has no {CODEC_KEY}; Lumos-1's own Cosmos DV4x8x8 "
            "tokenizer is not built in (see packcache_vllm/codec/__init__.py to plug one in)"
        )
    if video.codec["kind"] == PALETTE:
        from packcache_vllm.codec.palette import PaletteCodec

        return PaletteCodec(pixels[0] if cell_pixels is None else cell_pixels)
    from packcache_vllm.codec.emu3_vq import Emu3VQCodec

    mean, std = video.codec.get("mean", DEFAULT_MEAN), video.codec.get("std", DEFAULT_STD)
    return Emu3VQCodec.from_pretrained(vq_dir(video.model_dir, video.codec), mean=mean, std=std)


def palette_checkpoint_keys() -> dict:
    """config.json keys of a palette checkpoint trained on the synthetic scenes
    (``video.tokens.scene_prompt``: the caption alone, ``SCENE_FPS`` frames per second)."""
    from packcache_vllm.video.scene import SCENE_FPS

    return {CODEC_KEY: {"kind": PALETTE}, FPS_KEY: SCENE_FPS, PROMPT_KEY: "caption"}


def emu3_checkpoint_keys(path: str = "vq") -> dict:
    """config.json keys of a checkpoint whose Emu3 VQ sits in ``path`` (Lumos-1's prompt)."""
    return {CODEC_KEY: {"kind": EMU3_VQ, "path": path}}
