"""The video jobs of one server: checked requests in, jobs on the engine, answers out.

The same service runs behind `vllm serve`'s routes (``routes.VideosPlugin``, the engine in its
own process: ``engines.LocalEngine``) and in the Ray Serve ingress (``scale.videos``, the engine
in an LLM replica). Every method raises ``ApiError`` for an answer other than 200.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from packcache_vllm.videos.driver import new_video_record, run_job
from packcache_vllm.videos.engines import VideoEngine
from packcache_vllm.videos.jobs import ASSETS, Job, JobStore, StoreFull
from packcache_vllm.videos.params import ApiError, EngineSide, parse_video_request, server_codec

MAX_PAGE = 100
DEFAULT_PAGE = 20


class VideoService:
    """The jobs of one server: their store and their running generation tasks."""

    def __init__(self, engine: VideoEngine, side: EngineSide, store: JobStore):
        self.engine = engine
        self.side = side
        self.store = store
        self.tasks: dict[str, asyncio.Task] = {}

    async def create(self, fields: dict, knobs: dict, reference: object) -> dict:
        try:
            server_codec(self.side.model_dir, None)
        except ValueError as err:
            message = f"this server's model cannot make videos: {err}"
            raise ApiError(400, message, "model") from err
        params = parse_video_request(fields, knobs, reference, self.side)
        await self.engine.check(params)
        try:
            job = self.store.create(new_video_record(params))
        except StoreFull as err:
            raise ApiError(429, str(err), None, "too_many_jobs") from err
        task = asyncio.create_task(
            run_job(self.engine, self.side.model_dir, self.store, job.id, params)
        )
        self.tasks[job.id] = task
        task.add_done_callback(lambda _: self.tasks.pop(job.id, None))
        return job.video

    def job(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise ApiError(404, f"no video with id {job_id!r}", "video_id", "video_not_found")
        return job

    def asset(self, job_id: str, variant: str) -> Path:
        if variant not in ASSETS:
            message = f"variant must be one of {list(ASSETS)}, got {variant!r}"
            raise ApiError(400, message, "variant")
        job = self.job(job_id)
        if job.status != "completed":
            why = f": {job.video['error']['message']}" if job.status == "failed" else ""
            raise ApiError(
                404,
                f"video {job_id} is not ready: its status is {job.status}{why}",
                "video_id",
                "video_not_ready",
            )
        return self.store.asset(job_id, variant)

    def page(self, after: str | None, limit: str, order: str) -> dict:
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE:
            message = f"limit must be an integer in [1, {MAX_PAGE}], got {limit!r}"
            raise ApiError(400, message, "limit")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"order must be 'asc' or 'desc', got {order!r}", "order")
        if after is not None:
            self.job(after)
        jobs, has_more = self.store.page(after, int(limit), order)
        return {
            "object": "list",
            "data": [job.video for job in jobs],
            "first_id": jobs[0].id if jobs else None,
            "last_id": jobs[-1].id if jobs else None,
            "has_more": has_more,
        }

    def delete(self, job_id: str) -> dict:
        self.job(job_id)
        self.store.delete(job_id)
        task = self.tasks.pop(job_id, None)
        if task is not None:
            task.cancel()  # closing the engine stream aborts the request
        return {"id": job_id, "deleted": True, "object": "video.deleted"}
