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
16); past it a new job is refused (HTTP 429). ``$PACKCACHE_VIDEOS_EXPIRE_S``: a finished job
(completed or failed) expires that many seconds after it finished: its ``expires_at`` says when,
and from then on it is gone (folder deleted when the store is next used). Unset (the default):
finished jobs are kept until deleted, ``expires_at`` is null. Jobs queued or in progress never
expire.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STORE_ENV = "PACKCACHE_VIDEOS_DIR"
DEFAULT_STORE = "packcache-videos"
MAX_ACTIVE_ENV = "PACKCACHE_VIDEOS_MAX_ACTIVE"
DEFAULT_MAX_ACTIVE = 16
EXPIRE_ENV = "PACKCACHE_VIDEOS_EXPIRE_S"
ACTIVE = ("queued", "in_progress")
JOB_FILE = "job.json"
ASSETS = {"video": "video.mp4", "thumbnail": "thumbnail.png", "spritesheet": "video-strip.png"}
CODES_FILE = "codes.json"
INTERRUPTED = "server_stopped"


def store_dir_from_env() -> Path:
    return Path(os.environ.get(STORE_ENV) or Path.cwd() / DEFAULT_STORE)


def positive_int_from_env(name: str, default: int | None) -> int | None:
    text = os.environ.get(name) or None
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        unset = "" if default is not None else " (or unset)"
        raise ValueError(f"{name} must be an integer >= 1{unset}, got {text!r}")
    return int(text)


def is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class StoreSettings:
    """Where the jobs live, how many may be active at once, when a finished one expires."""

    root: Path
    max_active: int = DEFAULT_MAX_ACTIVE
    expire_after_s: int | None = None  # None: finished jobs are kept until deleted

    def __post_init__(self) -> None:
        if not is_positive_int(self.max_active):
            raise ValueError(
                f"the videos' max_active must be an integer >= 1, got {self.max_active!r}"
            )
        if self.expire_after_s is not None and not is_positive_int(self.expire_after_s):
            raise ValueError(
                f"the videos' expire_after_s must be an integer >= 1 or None, "
                f"got {self.expire_after_s!r}"
            )

    @classmethod
    def from_env(cls) -> StoreSettings:
        """From ``$PACKCACHE_VIDEOS_DIR``, ``_MAX_ACTIVE``, ``_EXPIRE_S``; ValueError naming one."""
        return cls(
            store_dir_from_env(),
            positive_int_from_env(MAX_ACTIVE_ENV, DEFAULT_MAX_ACTIVE),
            positive_int_from_env(EXPIRE_ENV, None),
        )


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
    """The jobs of ``root``; ``clock`` (seconds since the epoch) stamps and expires them."""

    def __init__(
        self,
        root: Path,
        max_active: int,
        expire_after_s: int | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.root = Path(root)
        self.max_active = max_active
        self.expire_after_s = expire_after_s
        self.clock = clock
        self.root.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, Job] = {}
        for path in sorted(self.root.glob(f"*/{JOB_FILE}")):
            record = json.loads(path.read_text())
            job = Job(record["video"], record["sequence"])
            self.jobs[job.id] = job
            if job.status in ACTIVE:
                self.fail(job.id, INTERRUPTED, "the server stopped before this video was finished")

    @classmethod
    def open(cls, settings: StoreSettings) -> JobStore:
        return cls(settings.root, settings.max_active, settings.expire_after_s)

    def now(self) -> int:
        return int(self.clock())

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def save(self, job: Job) -> None:
        write_json(self.folder(job.id) / JOB_FILE, {"video": job.video, "sequence": job.sequence})

    def create(self, video: dict[str, Any]) -> Job:
        """Register a new queued job; StoreFull past the cap on active jobs."""
        self.expire()
        active = sum(job.status in ACTIVE for job in self.jobs.values())
        if active >= self.max_active:
            raise StoreFull(
                f"{active} videos are queued or in progress, the most this server takes "
                f"({MAX_ACTIVE_ENV}={self.max_active}); retry when one finishes"
            )
        job_id = f"video_{uuid.uuid4().hex}"
        sequence = 1 + max((job.sequence for job in self.jobs.values()), default=0)
        fields = {"id": job_id, "object": "video", "status": "queued", "created_at": self.now()}
        job = Job({**video, **fields, "expires_at": None}, sequence)
        self.folder(job_id).mkdir()
        self.jobs[job_id] = job
        self.save(job)
        return job

    def update(self, job_id: str, **fields: Any) -> Job:
        job = self.jobs[job_id]
        job.video.update(fields)
        self.save(job)
        return job

    def get(self, job_id: str) -> Job | None:
        """The job, or None when there is none (or it expired)."""
        self.expire()
        return self.jobs.get(job_id)

    def finish(self, job_id: str) -> Job:
        return self.update(job_id, status="completed", progress=100, **self.end_stamps())

    def fail(self, job_id: str, code: str, message: str) -> Job:
        error = {"code": code, "message": message}
        return self.update(job_id, status="failed", error=error, **self.end_stamps())

    def end_stamps(self) -> dict[str, int | None]:
        now = self.now()
        expires = None if self.expire_after_s is None else now + self.expire_after_s
        return {"completed_at": now, "expires_at": expires}

    def expire(self) -> None:
        """Delete the finished jobs whose ``expires_at`` has come."""
        now = self.now()
        for job in list(self.jobs.values()):
            expires = job.video.get("expires_at")
            if job.status not in ACTIVE and expires is not None and expires <= now:
                self.delete(job.id)

    def delete(self, job_id: str) -> None:
        del self.jobs[job_id]
        shutil.rmtree(self.folder(job_id))

    def asset(self, job_id: str, variant: str) -> Path:
        return self.folder(job_id) / ASSETS[variant]

    def page(self, after: str | None, limit: int, order: str) -> tuple[list[Job], bool]:
        """Jobs in creation order (``asc``/``desc``) after the job ``after``; whether more follow.
        KeyError when ``after`` is not a job."""
        self.expire()
        ordered = sorted(self.jobs.values(), key=lambda job: job.sequence, reverse=order == "desc")
        start = 0
        if after is not None:
            start = 1 + [job.id for job in ordered].index(self.jobs[after].id)
        return ordered[start : start + limit], start + limit < len(ordered)
