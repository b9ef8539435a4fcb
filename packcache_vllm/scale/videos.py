"""OpenAI's videos API on the Ray Serve application: the routes and fields of `vllm serve`'s.

The application's ingress (``VideoIngress``: Ray Serve LLM's OpenAI ingress plus the
``/v1/videos`` routes) holds the job service of ``packcache_vllm.videos`` (the same requests,
checks, job store and files as on `vllm serve`) and is one replica, since the jobs live in it.
A video's tokens come from the LLM replicas (``VideoLLMServer``: Ray Serve LLM's ``LLMServer``
plus two methods), through the deployment handle (``ReplicaEngine``): the engine's own checks run
in a replica before the job exists, then the tokens stream back frame by frame. Videos therefore
spread over the LLM replicas like completions, and batch with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from ray.serve.llm.deployment import LLMServer
from ray.serve.llm.ingress import OpenAiIngress

from packcache_vllm.videos import routes
from packcache_vllm.videos.engines import LocalEngine
from packcache_vllm.videos.jobs import JobStore, StoreSettings
from packcache_vllm.videos.params import ApiError, EngineSide, VideoParams
from packcache_vllm.videos.service import DEFAULT_PAGE, VideoService

VIDEO_ENDPOINTS = {
    "create_video": lambda app: app.post("/v1/videos"),
    "list_videos": lambda app: app.get("/v1/videos"),
    "retrieve_video": lambda app: app.get("/v1/videos/{video_id}"),
    "video_content": lambda app: app.get("/v1/videos/{video_id}/content"),
    "delete_video": lambda app: app.delete("/v1/videos/{video_id}"),
}


def engine_client_of(vllm_engine):
    """The ``AsyncLLM`` inside Ray Serve LLM's ``VLLMEngine`` (ray 2.60: ``_engine_client``)."""
    client = getattr(vllm_engine, "_engine_client", None)
    if client is None:
        raise RuntimeError(
            f"{type(vllm_engine).__name__} has no started engine client (_engine_client): "
            "this Ray version's LLM server is not the one packcache_vllm.scale.videos supports"
        )
    return client


class VideoLLMServer(LLMServer):
    """An LLM replica that also checks and generates the ingress's videos on its engine."""

    def video_engine(self) -> LocalEngine:
        return LocalEngine(engine_client_of(self.engine))

    async def check_video(self, params: VideoParams) -> ApiError | None:
        """The refusal (returned, not raised: it crosses to the ingress whole) or None."""
        try:
            await self.video_engine().check(params)
        except ApiError as err:
            return err
        return None

    async def video_tokens(self, params: VideoParams, request_id: str):
        async for delta in self.video_engine().token_deltas(params, request_id):
            yield delta


class ReplicaEngine:
    """``engines.VideoEngine`` over a handle to the ``VideoLLMServer`` deployment."""

    def __init__(self, handle):
        self.handle = handle

    async def check(self, params: VideoParams) -> None:
        refusal = await self.handle.check_video.remote(params)
        if refusal is not None:
            raise refusal

    async def token_deltas(self, params: VideoParams, request_id: str):
        stream = self.handle.options(stream=True).video_tokens.remote(params, request_id)
        try:
            async for delta in stream:
                yield delta
        finally:
            stream.cancel()  # a deleted job or a stopping ingress aborts the replica's request


@dataclass(frozen=True)
class VideoApp:
    """What the ingress's job service needs: the model (id, local dir, mode) and its store."""

    model_id: str
    model_dir: Path
    mode: str
    store: StoreSettings


class VideoIngress(OpenAiIngress):
    """Ray Serve LLM's OpenAI ingress with the ``/v1/videos`` routes (``VIDEO_ENDPOINTS``)."""

    def __init__(self, llm_deployments, model_cards, *, videos: VideoApp, **kwargs):
        super().__init__(llm_deployments, model_cards, **kwargs)
        side = EngineSide((videos.model_id,), videos.model_dir, videos.mode)
        engine = ReplicaEngine(llm_deployments[videos.model_id])
        self.videos = VideoService(engine, side, JobStore.open(videos.store))

    async def create_video(self, request: Request):
        return await routes.create_video_response(self.videos, request)

    async def list_videos(
        self, after: str | None = None, limit: str = str(DEFAULT_PAGE), order: str = "desc"
    ):
        return routes.list_videos_response(self.videos, after, limit, order)

    async def retrieve_video(self, video_id: str):
        return routes.retrieve_video_response(self.videos, video_id)

    async def video_content(self, video_id: str, variant: str = "video"):
        return routes.video_content_response(self.videos, video_id, variant)

    async def delete_video(self, video_id: str):
        return routes.delete_video_response(self.videos, video_id)
