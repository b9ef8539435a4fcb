"""Held-out scene clips for evaluation: ``random_scene("heldout-<i>")``, never trained on (training
draws ``train-<i>``), image-to-video prompts (caption + the true first frame)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from packcache_vllm.video.scene import random_scene, render_clip
from packcache_vllm.video.tokens import SceneClip, frames_tokens, scene_prompt


def trained_clip_frames(model_dir: Path) -> int | None:
    """Frames per training clip from the checkpoint's training.json (None: not trained here)."""
    path = Path(model_dir) / "training.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())["config"]["clip"]["num_frames"]


def heldout_clips(
    rows: int, cols: int, frames: int, scenes: int, prompt_frames: int | None = None
) -> list[SceneClip]:
    """``scenes`` clips of ``frames`` generated frames + the conditioning one, on a rows x cols
    grid. The prompt's duration token says ``prompt_frames`` frames (default: the clip's own);
    pass the training clips' length to a model that saw no other."""
    clips = []
    for i in range(scenes):
        scene = random_scene(f"heldout-{i}", rows, cols, frames + 1)
        truth = render_clip(scene)
        duration = scene if prompt_frames is None else replace(scene, num_frames=prompt_frames)
        clips.append(
            SceneClip(scene, truth, scene_prompt(duration, truth[0]), frames_tokens(truth[1:]))
        )
    return clips


def model_heldout_clips(model_dir: Path, frames: int, scenes: int) -> list[SceneClip]:
    """Held-out clips on the checkpoint's grid whose prompt carries its training clips' duration
    token (the model saw no other), or the clip's own for a checkpoint not trained here."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return heldout_clips(
        config["video_rows"], config["video_cols"], frames, scenes, trained_clip_frames(model_dir)
    )
