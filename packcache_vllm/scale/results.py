"""Where a batch job's results live, and how a re-run finds what is finished.

    OUTPUT/videos/<id>.jsonl     the generated frames, one JSON line per frame:
                                 {"frame": k, "tokens": [...]}
    OUTPUT/mp4/<id>.mp4          with --mp4: the generated frames as a video (``movies``)
    OUTPUT/requests/<id>.json    the request's record (written last: its presence means finished)
    OUTPUT/replicas/<replica>.json   per replica: videos done and its PackCache counters
    OUTPUT/runs/<run>.json       per run: what was skipped and generated, and every replica

Every file is written to a temporary name and renamed, so a killed job leaves no half file.
On a multi-node cluster OUTPUT must be a directory every node sees (a shared filesystem).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packcache_vllm.scale.requests import VideoRequest


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def split_frames(tokens: Sequence[int], tokens_per_frame: int) -> list[list[int]]:
    if len(tokens) % tokens_per_frame:
        raise ValueError(
            f"{len(tokens)} generated tokens are not whole frames of {tokens_per_frame} tokens"
        )
    return [
        list(tokens[start : start + tokens_per_frame])
        for start in range(0, len(tokens), tokens_per_frame)
    ]


@dataclass(frozen=True)
class ResultStore:
    root: Path

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def records(self) -> Path:
        return self.root / "requests"

    @property
    def mp4(self) -> Path:
        return self.root / "mp4"

    @property
    def replicas(self) -> Path:
        return self.root / "replicas"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def create(self) -> ResultStore:
        for folder in (self.videos, self.mp4, self.records, self.replicas, self.runs):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    # --- per request ------------------------------------------------------------------------
    def write_video(
        self, request: VideoRequest, tokens: Sequence[int], tokens_per_frame: int, record: dict
    ) -> None:
        frames = split_frames(tokens, tokens_per_frame)
        lines = "".join(json.dumps({"frame": k, "tokens": f}) + "\n" for k, f in enumerate(frames))
        write_atomically(self.videos / f"{request.id}.jsonl", lines)
        full_record = {"id": request.id, "fingerprint": request.fingerprint(), **record}
        write_atomically(self.records / f"{request.id}.json", json.dumps(full_record, indent=1))

    def movies(self, model: Path):
        """The ``movies.Movies`` that writes this store's MP4s from ``model``'s codec."""
        from packcache_vllm.scale.movies import Movies

        return Movies(Path(model), self.mp4)

    def read_frames(self, request_id: str) -> list[list[int]]:
        lines = (self.videos / f"{request_id}.jsonl").read_text().splitlines()
        return [json.loads(line)["tokens"] for line in lines]

    def read_record(self, request_id: str) -> dict[str, Any]:
        return json.loads((self.records / f"{request_id}.json").read_text())

    def finished(self, requests: Iterable[VideoRequest]) -> set[str]:
        """Ids of the requests with a result; ValueError if a result was made from a different
        request under the same id (reusing it would hand back the wrong video)."""
        done = set()
        for request in requests:
            if not (self.records / f"{request.id}.json").is_file():
                continue
            stored = self.read_record(request.id)["fingerprint"]
            if stored != request.fingerprint():
                raise ValueError(
                    f"{self.records / (request.id + '.json')} is the result of a different "
                    f"request with id {request.id!r} (fingerprint {stored}, now "
                    f"{request.fingerprint()}): use another output directory or delete it"
                )
            done.add(request.id)
        return done

    # --- per replica and per run ------------------------------------------------------------
    def write_replica(self, summary: dict[str, Any]) -> None:
        write_atomically(
            self.replicas / f"{summary['replica']}.json", json.dumps(summary, indent=1)
        )

    def replicas_of_run(self, run_id: str) -> list[dict[str, Any]]:
        paths = sorted(self.replicas.glob(f"{run_id}-*.json"))
        return [json.loads(path.read_text()) for path in paths]

    def write_run(self, run_id: str, summary: dict[str, Any]) -> Path:
        path = self.runs / f"{run_id}.json"
        write_atomically(path, json.dumps(summary, indent=1))
        return path
