"""Generate one video job through the server's engine and write its files.

The prompt's token ids go to the engine that serves ``/v1/completions`` (so videos batch with
plain completions; ``engines.VideoEngine``), streamed: each finished frame moves the job's
progress. The token ids become code grids (``video.tokens.decode_frames``; a token that is not a
visual code is an invalid cell, painted ``palette.INVALID_RGB``), the codec turns them into
pixels (``video_rgb``, also what a Ray Data batch job writes its MP4s with) and the job's folder
gets ``video.mp4`` (+ ``video.gif``), ``thumbnail.png``, ``video-strip.png`` and
``codes.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import torch

from packcache_vllm.codec.frames import DecodedFrames, decode_frame_ids
from packcache_vllm.core.layout import tokens_per_frame
from packcache_vllm.video.render import write_video
from packcache_vllm.videos.engines import VideoEngine
from packcache_vllm.videos.jobs import CODES_FILE, JobStore
from packcache_vllm.videos.params import VideoParams, server_codec

logger = logging.getLogger(__name__)
VIDEO_STEM = "video"
THUMBNAIL = "thumbnail.png"


def video_frames(
    first_codes: torch.Tensor | None, token_ids: list[int], rows: int, cols: int, codebook_size: int
) -> DecodedFrames:
    """Generated token ids -> every latent frame of the video [T, rows, cols]: the
    input_reference's codes [T0, rows, cols] first, when there are some."""
    generated = decode_frame_ids(token_ids, rows, cols, codebook_size, strict=False)
    if first_codes is None:
        return generated
    cells = torch.cat([first_codes, generated.cells])
    return DecodedFrames(cells, torch.cat([torch.ones_like(first_codes, dtype=torch.bool),
                                           generated.valid]))  # fmt: skip


def video_rgb(
    model_dir: Path,
    cell_pixels: int | None,
    first_codes,
    token_ids: list[int],
    rows: int,
    cols: int,
):
    """The checkpoint's codec's pixels of a video: (rgb [T, H, W, 3] uint8, its DecodedFrames)."""
    codec = server_codec(model_dir, cell_pixels)
    frames = video_frames(first_codes, token_ids, rows, cols, codec.codebook_size)
    return codec.decode_frames(frames), frames


def write_assets(folder: Path, model_dir: Path, params: VideoParams, token_ids: list[int]):
    import imageio.v2 as imageio

    shape = params.shape
    rgb, frames = video_rgb(
        model_dir, shape.cell_pixels, params.first_codes, token_ids, shape.rows, shape.cols
    )
    write_video(rgb, folder / VIDEO_STEM, fps=shape.fps)
    conditioning = 0 if params.first_codes is None else len(params.first_codes)
    geometry = server_codec(model_dir, shape.cell_pixels).geometry
    first_generated = geometry.pixel_frames(conditioning) if conditioning else 0
    imageio.imwrite(folder / THUMBNAIL, rgb[first_generated])
    codes = {"token_ids": token_ids, "codes": frames.cells.tolist(), "valid": frames.valid.tolist()}
    (folder / CODES_FILE).write_text(json.dumps(codes))


async def run_job(engine: VideoEngine, model_dir: Path, store: JobStore, job_id, params):
    """Stream the video from the engine, then write its files; a failure fails this job only."""
    per_frame = tokens_per_frame(params.shape.rows, params.shape.cols)
    total = params.frames_to_generate
    token_ids: list[int] = []
    try:
        async for delta in engine.token_deltas(params, job_id):
            token_ids += delta
            done = len(token_ids) // per_frame
            job = store.jobs[job_id]
            if job.status == "queued" or done != job.video["packcache"]["frames_done"]:
                progress = {**job.video["packcache"], "frames_done": done}
                store.update(
                    job_id, status="in_progress", progress=min(99, 100 * done // total),
                    packcache=progress,
                )  # fmt: skip
        if len(token_ids) != params.max_tokens:
            raise RuntimeError(
                f"the engine returned {len(token_ids)} of {params.max_tokens} tokens"
            )
        await asyncio.to_thread(write_assets, store.folder(job_id), model_dir, params, token_ids)
        store.finish(job_id)
    except asyncio.CancelledError:
        if job_id in store.jobs:  # the server is stopping (a deleted job is gone already)
            store.fail(job_id, "server_stopped", "the server stopped before this video was done")
        raise
    except Exception as err:  # this job fails alone; the server keeps serving the others
        logger.exception("video %s failed", job_id)
        if job_id in store.jobs:
            store.fail(job_id, "generation_failed", f"{type(err).__name__}: {err}")


def new_video_record(params: VideoParams) -> dict:
    """The OpenAI Video fields of a new job (the store adds id, object and status)."""
    return {
        "completed_at": None,
        "error": None,
        "expires_at": None,
        "model": params.model,
        "progress": 0,
        "prompt": params.caption,
        "remixed_from_video_id": None,
        "seconds": str(params.shape.seconds),
        "size": params.shape.size,
        "packcache": {
            "frames_done": 0,
            "frames_total": params.frames_to_generate,
            "frames_in_video": params.shape.num_frames,
            "input_reference": params.first_codes is not None,
            "knobs": params.knobs,
        },
    }
