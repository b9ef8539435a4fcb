"""One MP4 per request of a batch job (``--mp4``): ``OUTPUT/mp4/<id>.mp4``.

The generated frames go through the checkpoint's codec exactly as the videos API renders a video
(``videos.driver.video_rgb``: a token that is not a visual code is an invalid cell, painted
``palette.INVALID_RGB``), at the checkpoint's fps. A conditioning frame inside the prompt is not
part of it (the prompt is token ids; only the generated frames are). Written to a temporary
folder and renamed into place, with ``<id>.gif`` and ``<id>-strip.png`` (every frame, left to
right) beside it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def check_model_has_codec(model: Path) -> None:
    """ValueError naming the model when it has no codec to draw frames with."""
    from packcache_vllm.codec.spec import codec_for

    try:
        codec_for(model)
    except ValueError as err:
        raise ValueError(f"--mp4 needs a checkpoint with a codec: {err}") from None


@dataclass(frozen=True)
class Movies:
    """Writes ``folder/<id>.mp4`` from a request's generated token ids."""

    model: Path
    folder: Path

    def path(self, request_id: str) -> Path:
        return self.folder / f"{request_id}.mp4"

    def write(self, request_id: str, token_ids: Sequence[int]) -> Path:
        from packcache_vllm.codec.spec import checkpoint_video
        from packcache_vllm.video.render import write_video
        from packcache_vllm.videos.driver import video_rgb

        video = checkpoint_video(self.model)
        rgb, _ = video_rgb(self.model, None, None, list(token_ids), video.rows, video.cols)
        partial = self.folder / f".{request_id}.{os.getpid()}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        files = write_video(rgb, partial / request_id, fps=video.fps)
        for path in (files.gif, files.strip, files.mp4):  # the MP4 last: it marks the set
            os.replace(path, self.folder / path.name)
        partial.rmdir()
        return self.path(request_id)
