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

import logging
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from packcache_vllm.cli import packcache_mode_from
from packcache_vllm.videos.engines import LocalEngine
from packcache_vllm.videos.jobs import JobStore, StoreSettings
from packcache_vllm.videos.params import FORM_FIELDS, ApiError, EngineSide, form_knobs
from packcache_vllm.videos.service import DEFAULT_PAGE, VideoService

logger = logging.getLogger(__name__)
PLUGIN_NAME = "packcache_videos"
STATE_KEY = "packcache_videos"
MEDIA_TYPES = {"video": "video/mp4", "thumbnail": "image/png", "spritesheet": "image/png"}

router = APIRouter()


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


# --- one handler per route, shared by `vllm serve`'s router and the Ray Serve ingress ---------


async def create_video_response(videos: VideoService, request: Request) -> Response:
    try:
        fields, knobs, reference = await read_create_request(request)
        return JSONResponse(await videos.create(fields, knobs, reference))
    except ApiError as err:
        return error_response(err)


def list_videos_response(videos: VideoService, after: str | None, limit: str, order: str):
    try:
        return JSONResponse(videos.page(after, limit, order))
    except ApiError as err:
        return error_response(err)


def retrieve_video_response(videos: VideoService, video_id: str) -> Response:
    try:
        return JSONResponse(videos.job(video_id).video)
    except ApiError as err:
        return error_response(err)


def video_content_response(videos: VideoService, video_id: str, variant: str) -> Response:
    try:
        path = videos.asset(video_id, variant)
    except ApiError as err:
        return error_response(err)
    return FileResponse(path, media_type=MEDIA_TYPES[variant])


def delete_video_response(videos: VideoService, video_id: str) -> Response:
    try:
        return JSONResponse(videos.delete(video_id))
    except ApiError as err:
        return error_response(err)


@router.post("/v1/videos")
async def create_video(request: Request):
    return await create_video_response(service(request), request)


@router.get("/v1/videos")
async def list_videos(
    request: Request, after: str | None = None, limit: str = str(DEFAULT_PAGE), order: str = "desc"
):
    return list_videos_response(service(request), after, limit, order)


@router.get("/v1/videos/{video_id}")
async def retrieve_video(request: Request, video_id: str):
    return retrieve_video_response(service(request), video_id)


@router.get("/v1/videos/{video_id}/content")
async def video_content(request: Request, video_id: str, variant: str = "video") -> Response:
    return video_content_response(service(request), video_id, variant)


@router.delete("/v1/videos/{video_id}")
async def delete_video(request: Request, video_id: str):
    return delete_video_response(service(request), video_id)


def engine_side(engine_client, args) -> EngineSide:
    names = tuple(args.served_model_name or [args.model])
    return EngineSide(names, Path(args.model), packcache_mode_from(engine_client.vllm_config))


class VideosPlugin:
    """The ``vllm.endpoint_plugins`` factory: routes on the app, the job service in its state."""

    name = PLUGIN_NAME
    required_tasks = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        app.include_router(router)

    async def init_state(self, engine_client, state, args) -> None:
        if engine_client is None:
            raise RuntimeError(f"{PLUGIN_NAME} needs an engine: it cannot run on a render server")
        store = JobStore.open(StoreSettings.from_env())
        videos = VideoService(LocalEngine(engine_client), engine_side(engine_client, args), store)
        setattr(state, STATE_KEY, videos)
        logger.info("videos API on /v1/videos: %d jobs in %s", len(store.jobs), store.root)
