"""Generate one video job through the server's own engine and write its files.

The prompt's token ids go to the engine client that serves ``/v1/completions`` (so videos batch
with plain completions), streamed: each finished frame moves the job's progress. The token ids
become code grids (``video.tokens.decode_frames``; a token that is not a visual code is an
invalid cell, painted ``palette.INVALID_RGB``), the codec turns them into pixels and the job's
folder gets ``video.mp4`` (+ ``video.gif``), ``thumbnail.png``, ``video-strip.png`` and
``codes.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import torch

from packcache_vllm.codec.frames import DecodedFrames, decode_frame_ids
from packcache_vllm.core.layout import tokens_per_frame
from packcache_vllm.engine.requests import check_request
from packcache_vllm.video.render import write_video
from packcache_vllm.videos.jobs import CODES_FILE, JobStore
from packcache_vllm.videos.params import ApiError, EngineSide, VideoParams, server_codec

logger = logging.getLogger(__name__)
VIDEO_STEM = "video"
THUMBNAIL = "thumbnail.png"
KNOBS_PARAM = "packcache"


def sampling_params(params: VideoParams):
    """vLLM SamplingParams of the video (streamed in deltas); ApiError for a bad value."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    try:
        return SamplingParams(
            temperature=params.temperature,
            seed=params.seed,
            max_tokens=params.max_tokens,
            ignore_eos=True,
            detokenize=False,
            extra_args=dict(params.extra_args),
            output_kind=RequestOutputKind.DELTA,
        )
    except (ValueError, TypeError) as err:
        raise ApiError(400, f"packcache.temperature / packcache.seed: {err}", KNOBS_PARAM) from err


def check_for_engine(engine: EngineSide, params: VideoParams, sampling) -> None:
    """The engine's own per-request checks (policy and sampler knobs, position limits, pool
    fit) and the context length, before a job exists; ApiError naming the problem."""
    max_len = engine.vllm_config.model_config.max_model_len
    needed = len(params.prompt_ids) + params.max_tokens
    if needed > max_len:
        raise ApiError(
            400,
            f"this video needs {needed} tokens (prompt {len(params.prompt_ids)} + "
            f"{params.frames_to_generate} frames x "
            f"{tokens_per_frame(params.shape.rows, params.shape.cols)}), the server's "
            f"max_model_len is {max_len}: ask for fewer seconds or a shorter prompt",
            "seconds",
        )
    try:
        check_request(engine.vllm_config, params.prompt_ids, sampling)
    except ValueError as err:
        raise ApiError(400, str(err), KNOBS_PARAM) from err


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


def write_assets(folder: Path, engine: EngineSide, params: VideoParams, token_ids: list[int]):
    import imageio.v2 as imageio

    codec = server_codec(engine.model_dir, params.shape.cell_pixels)
    shape = params.shape
    frames = video_frames(
        params.first_codes, token_ids, shape.rows, shape.cols, codec.codebook_size
    )
    rgb = codec.decode_frames(frames)
    write_video(rgb, folder / VIDEO_STEM, fps=shape.fps)
    conditioning = 0 if params.first_codes is None else len(params.first_codes)
    first_generated = codec.geometry.pixel_frames(conditioning) if conditioning else 0
    imageio.imwrite(folder / THUMBNAIL, rgb[first_generated])
    codes = {"token_ids": token_ids, "codes": frames.cells.tolist(), "valid": frames.valid.tolist()}
    (folder / CODES_FILE).write_text(json.dumps(codes))


async def run_job(engine_client, engine: EngineSide, store: JobStore, job_id, params, sampling):
    """Stream the video from the engine, then write its files; a failure fails this job only."""
    per_frame = tokens_per_frame(params.shape.rows, params.shape.cols)
    total = params.frames_to_generate
    token_ids: list[int] = []
    try:
        request = {"prompt_token_ids": params.prompt_ids}
        async for output in engine_client.generate(request, sampling, request_id=job_id):
            token_ids += output.outputs[0].token_ids
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
        await asyncio.to_thread(write_assets, store.folder(job_id), engine, params, token_ids)
        store.update(job_id, status="completed", progress=100, completed_at=int(time.time()))
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
        "created_at": int(time.time()),
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
