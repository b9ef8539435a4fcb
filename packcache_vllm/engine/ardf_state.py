"""What the worker keeps per frame-parallel request: the frame being denoised and its sampler.

``CanvasState`` is mutable (it changes at every step); it is created when the request first
reaches the runner and dropped when vLLM reports it finished. Its ``trace`` (the cell offsets
fixed at every denoising step of every frame) is kept for a while after the request finishes
(``FinishedTraces``), for comparing the engine with the dense reference step by step.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from packcache_vllm.core.maskgit import (
    ARDFSamplingParams,
    apply_history_mask,
    history_mask,
    request_generator,
)

FrameTrace = list[frozenset[int]]  # per denoising step: the frame offsets it fixed


@dataclass
class CanvasState:
    """One request's frame in progress.

    canvas: [F] int64, the current canvas (``<mask>`` at cells not fixed yet).
    commit_mask: [F] bool, the history mask its commits get.
    condition_mask: [F] bool, the mask its prompt's conditioning frames get (all False by
        default: Lumos-1 caches them whole).
    step: denoising steps done on this frame (== steps_per_frame: the next step commits).
    frame: frames of this request committed before this one.
    """

    params: ARDFSamplingParams
    generator: torch.Generator
    frame_start: int
    commit_mask: torch.Tensor
    condition_mask: torch.Tensor
    canvas: torch.Tensor
    step: int = 0
    frame: int = 0
    trace: list[FrameTrace] = field(default_factory=lambda: [[]])

    @classmethod
    def start(
        cls,
        params: ARDFSamplingParams,
        frame_start: int,
        template: torch.Tensor,
        rows: int,
        cols: int,
    ) -> CanvasState:
        """template: [F] int64, ``frame_template(rows, cols)``."""
        return cls(
            params=params,
            generator=request_generator(params),
            frame_start=frame_start,
            commit_mask=history_mask(rows, cols, params.history_mask_ratio),
            condition_mask=history_mask(rows, cols, params.condition_mask_ratio),
            canvas=template.clone(),
        )

    @property
    def committing(self) -> bool:
        """The frame is finished: the next step commits it."""
        return self.step >= self.params.steps_per_frame

    def commit_input(self) -> torch.Tensor:
        """[F] int64: the finished frame's history-masked copy, whose KV the cache keeps."""
        return apply_history_mask(self.canvas, self.commit_mask)

    def advance(self, canvas: torch.Tensor, fixed: frozenset[int]) -> None:
        """Record one denoising step: the next canvas [F] and the offsets it fixed."""
        self.canvas = canvas
        self.step += 1
        self.trace[-1].append(fixed)

    def next_frame(self, template: torch.Tensor) -> None:
        """After a commit: a fresh canvas (template: [F] int64) for the next frame."""
        self.canvas = template.clone()
        self.step = 0
        self.frame += 1
        self.trace.append([])


class FinishedTraces:
    """The traces of the most recently finished requests (at most ``capacity``)."""

    def __init__(self, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError(f"FinishedTraces capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.traces: OrderedDict[str, list[FrameTrace]] = OrderedDict()

    def add(self, request_id: str, trace: list[FrameTrace]) -> None:
        self.traces[request_id] = [frame for frame in trace if frame]  # no empty next frame
        while len(self.traces) > self.capacity:
            self.traces.popitem(last=False)

    def get(self, request_id: str) -> list[FrameTrace]:
        if request_id not in self.traces:
            raise KeyError(f"no finished frame-parallel request {request_id!r} on this worker")
        return self.traces[request_id]
