"""Video jobs on disk: one folder per job, surviving a server restart.

``STORE/<id>/job.json`` holds the job as the OpenAI ``Video`` object (plus this project's
``packcache`` block: frames done / total, the mode and the request's knobs) and its place in
creation order; a finished job's folder also holds ``video.mp4`` (and ``video.gif``),
``thumbnail.png`` (the first generated frame), ``video-strip.png`` (the spritesheet: every frame,
left to right) and ``codes.json`` (the generated token ids and the code grid of every frame).
A job found ``queued`` or ``in_progress`` when the store is opened was cut off by a server stop:
it is marked ``failed`` with the reason.

The folder is ``$PACKCACHE_VIDEOS_DIR``, or ``packcache-videos`` under the server's working
directory. ``$PACKCACHE_VIDEOS_MAX_ACTIVE`` caps the jobs queued or in progress at once (default
16); past it a new job is refused (HTTP 429).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STORE_ENV = "PACKCACHE_VIDEOS_DIR"
DEFAULT_STORE = "packcache-videos"
MAX_ACTIVE_ENV = "PACKCACHE_VIDEOS_MAX_ACTIVE"
DEFAULT_MAX_ACTIVE = 16
ACTIVE = ("queued", "in_progress")
JOB_FILE = "job.json"
ASSETS = {"video": "video.mp4", "thumbnail": "thumbnail.png", "spritesheet": "video-strip.png"}
CODES_FILE = "codes.json"
INTERRUPTED = "server_stopped"


def store_dir_from_env() -> Path:
    return Path(os.environ.get(STORE_ENV) or Path.cwd() / DEFAULT_STORE)


def max_active_from_env() -> int:
    text = os.environ.get(MAX_ACTIVE_ENV, str(DEFAULT_MAX_ACTIVE))
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{MAX_ACTIVE_ENV} must be an integer >= 1, got {text!r}")
    return int(text)


class StoreFull(Exception):
    """Too many jobs queued or in progress."""


@dataclass
class Job:
    """One job: ``video`` is the OpenAI Video object as served; ``sequence`` its creation rank."""

    video: dict[str, Any]
    sequence: int

    @property
    def id(self) -> str:
        return self.video["id"]

    @property
    def status(self) -> str:
        return self.video["status"]


def write_json(path: Path, data: object) -> None:
    """Whole-file replace, so a crash never leaves a half-written record."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)


class JobStore:
    def __init__(self, root: Path, max_active: int):
        self.root = Path(root)
        self.max_active = max_active
        self.root.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, Job] = {}
        for path in sorted(self.root.glob(f"*/{JOB_FILE}")):
            record = json.loads(path.read_text())
            job = Job(record["video"], record["sequence"])
            self.jobs[job.id] = job
            if job.status in ACTIVE:
                self.fail(job.id, INTERRUPTED, "the server stopped before this video was finished")

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def save(self, job: Job) -> None:
        write_json(self.folder(job.id) / JOB_FILE, {"video": job.video, "sequence": job.sequence})

    def create(self, video: dict[str, Any]) -> Job:
        """Register a new queued job; StoreFull past the cap on active jobs."""
        active = sum(job.status in ACTIVE for job in self.jobs.values())
        if active >= self.max_active:
            raise StoreFull(
                f"{active} videos are queued or in progress, the most this server takes "
                f"({MAX_ACTIVE_ENV}={self.max_active}); retry when one finishes"
            )
        job_id = f"video_{uuid.uuid4().hex}"
        sequence = 1 + max((job.sequence for job in self.jobs.values()), default=0)
        job = Job({**video, "id": job_id, "object": "video", "status": "queued"}, sequence)
        self.folder(job_id).mkdir()
        self.jobs[job_id] = job
        self.save(job)
        return job

    def update(self, job_id: str, **fields: Any) -> Job:
        job = self.jobs[job_id]
        job.video.update(fields)
        self.save(job)
        return job

    def fail(self, job_id: str, code: str, message: str) -> Job:
        return self.update(
            job_id, status="failed", error={"code": code, "message": message},
            completed_at=int(time.time()),
        )  # fmt: skip

    def delete(self, job_id: str) -> None:
        del self.jobs[job_id]
        shutil.rmtree(self.folder(job_id))

    def asset(self, job_id: str, variant: str) -> Path:
        return self.folder(job_id) / ASSETS[variant]

    def page(self, after: str | None, limit: int, order: str) -> tuple[list[Job], bool]:
        """Jobs in creation order (``asc``/``desc``) after the job ``after``; whether more follow.
        KeyError when ``after`` is not a job."""
        ordered = sorted(self.jobs.values(), key=lambda job: job.sequence, reverse=order == "desc")
        start = 0
        if after is not None:
            start = 1 + [job.id for job in ordered].index(self.jobs[after].id)
        return ordered[start : start + limit], start + limit < len(ordered)
