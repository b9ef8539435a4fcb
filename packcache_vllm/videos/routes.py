"""OpenAI's videos API on `vllm serve` (``vllm.endpoint_plugins`` entry point ``packcache_videos``).

    POST   /v1/videos                 create a job (multipart form or JSON) -> Video
    GET    /v1/videos                 list jobs (after, limit, order) -> page of Video
    GET    /v1/videos/{id}            one job: status, progress, error
    GET    /v1/videos/{id}/content    variant=video (MP4, default) | thumbnail | spritesheet (PNG)
    DELETE /v1/videos/{id}            cancel (if running) and delete a job

vLLM loads an endpoint plugin only when ``VLLM_PLUGINS`` names it; as ``VLLM_PLUGINS`` is then
also the allow-list of general plugins, serve with ``VLLM_PLUGINS=packcache,packcache_videos``.
Jobs run on the engine the server already holds (``init_state``'s engine client).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from packcache_vllm.cli import packcache_mode_from
from packcache_vllm.videos.driver import (
    check_for_engine,
    new_video_record,
    run_job,
    sampling_params,
)
from packcache_vllm.videos.jobs import (
    ASSETS,
    JobStore,
    StoreFull,
    max_active_from_env,
    store_dir_from_env,
)
from packcache_vllm.videos.params import (
    FORM_FIELDS,
    ApiError,
    EngineSide,
    form_knobs,
    parse_video_request,
    server_codec,
)

logger = logging.getLogger(__name__)
PLUGIN_NAME = "packcache_videos"
STATE_KEY = "packcache_videos"
MEDIA_TYPES = {"video": "video/mp4", "thumbnail": "image/png", "spritesheet": "image/png"}
MAX_PAGE = 100
DEFAULT_PAGE = 20

router = APIRouter()


class VideoService:
    """The jobs of one server: their store and their running generation tasks."""

    def __init__(self, engine_client, engine: EngineSide, store: JobStore):
        self.engine_client = engine_client
        self.engine = engine
        self.store = store
        self.tasks: dict[str, asyncio.Task] = {}

    def create(self, fields: dict, knobs: dict, reference: object) -> dict:
        try:
            server_codec(self.engine.model_dir, None)
        except ValueError as err:
            message = f"this server's model cannot make videos: {err}"
            raise ApiError(400, message, "model") from err
        params = parse_video_request(fields, knobs, reference, self.engine)
        sampling = sampling_params(params)
        check_for_engine(self.engine, params, sampling)
        try:
            job = self.store.create(new_video_record(params))
        except StoreFull as err:
            raise ApiError(429, str(err), None, "too_many_jobs") from err
        task = asyncio.create_task(
            run_job(self.engine_client, self.engine, self.store, job.id, params, sampling)
        )
        self.tasks[job.id] = task
        task.add_done_callback(lambda _: self.tasks.pop(job.id, None))
        return job.video

    def job(self, job_id: str):
        if job_id not in self.store.jobs:
            raise ApiError(404, f"no video with id {job_id!r}", "video_id", "video_not_found")
        return self.store.jobs[job_id]

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


def service(request: Request) -> VideoService:
    return getattr(request.app.state, STATE_KEY)


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def read_create_request(request: Request) -> tuple[dict, dict, object]:
    """(OpenAI fields, packcache knobs, input_reference) from a multipart form or JSON body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()
        reference = form.get("input_reference")
        if hasattr(reference, "read"):
            reference = await reference.read()
        elif reference is None and "input_reference[image_url]" in form:
            reference = {"image_url": form["input_reference[image_url]"]}
        return {k: form.get(k) for k in FORM_FIELDS}, form_knobs(form), reference
    try:
        body = await request.json()
    except ValueError as err:
        raise ApiError(400, f"the body is neither a form nor JSON: {err}") from err
    if not isinstance(body, dict):
        raise ApiError(400, "the JSON body must be an object")
    knobs = body.get("packcache") or {}
    if not isinstance(knobs, dict):
        raise ApiError(400, "packcache must be an object of knobs", "packcache")
    return {k: body.get(k) for k in FORM_FIELDS}, knobs, body.get("input_reference")


@router.post("/v1/videos")
async def create_video(request: Request):
    try:
        fields, knobs, reference = await read_create_request(request)
        return JSONResponse(service(request).create(fields, knobs, reference))
    except ApiError as err:
        return error_response(err)


@router.get("/v1/videos")
async def list_videos(
    request: Request, after: str | None = None, limit: str = str(DEFAULT_PAGE), order: str = "desc"
):
    try:
        return JSONResponse(service(request).page(after, limit, order))
    except ApiError as err:
        return error_response(err)


@router.get("/v1/videos/{video_id}")
async def retrieve_video(request: Request, video_id: str):
    try:
        return JSONResponse(service(request).job(video_id).video)
    except ApiError as err:
        return error_response(err)


@router.get("/v1/videos/{video_id}/content")
async def video_content(request: Request, video_id: str, variant: str = "video") -> Response:
    try:
        path = service(request).asset(video_id, variant)
    except ApiError as err:
        return error_response(err)
    return FileResponse(path, media_type=MEDIA_TYPES[variant])


@router.delete("/v1/videos/{video_id}")
async def delete_video(request: Request, video_id: str):
    try:
        return JSONResponse(service(request).delete(video_id))
    except ApiError as err:
        return error_response(err)


def engine_side(engine_client, args) -> EngineSide:
    vllm_config = engine_client.vllm_config
    names = tuple(args.served_model_name or [args.model])
    return EngineSide(names, Path(args.model), packcache_mode_from(vllm_config), vllm_config)


class VideosPlugin:
    """The ``vllm.endpoint_plugins`` factory: routes on the app, the job service in its state."""

    name = PLUGIN_NAME
    required_tasks = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        app.include_router(router)

    async def init_state(self, engine_client, state, args) -> None:
        if engine_client is None:
            raise RuntimeError(f"{PLUGIN_NAME} needs an engine: it cannot run on a render server")
        store = JobStore(store_dir_from_env(), max_active_from_env())
        engine = engine_side(engine_client, args)
        setattr(state, STATE_KEY, VideoService(engine_client, engine, store))
        logger.info("videos API on /v1/videos: %d jobs in %s", len(store.jobs), store.root)
