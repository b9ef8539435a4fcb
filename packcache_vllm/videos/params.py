"""One ``POST /v1/videos`` request, read and checked before any job exists.

The OpenAI fields (``prompt``, ``model``, ``seconds``, ``size``, ``input_reference``) come as
multipart form fields (what the official client sends) or as a JSON body (curl). This project's
knobs travel in one sub-object, ``packcache`` (``extra_body={"packcache": {...}}``; in a form,
``packcache[window]=2``): the policy knobs (``window``, ``decay``, ``min_keep``, ``selector``),
the frame-parallel sampler knobs (``steps_per_frame``, ``cfg_scale``, ``top_k``, ...; see
``engine/ardf_requests.py``), ``mode`` (must be the server's), ``frames`` (latent frames, instead
of ``seconds``), ``temperature`` and ``seed`` (next-token: vLLM's sampler, default temperature 0,
greedy; frame-parallel: the frame sampler's ``ardf_temperature`` / ``ardf_seed``).

Every problem is an ``ApiError`` with the HTTP status, naming the field and the value.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from packcache_vllm.cli import FRAME_PARALLEL, KNOBS, REQUEST_FLAT_PREFIX
from packcache_vllm.codec.prompts import video_prompt
from packcache_vllm.codec.spec import VideoShape, codec_for, video_shape
from packcache_vllm.core.layout import tokens_per_frame
from packcache_vllm.core.maskgit import ARDFSamplingParams
from packcache_vllm.engine.ardf_requests import ARDF_PREFIX

KNOBS_FIELD = "packcache"
# One codec per (model dir, pixels per code) for the server's life: a learned codec loads weights.
server_codec = functools.lru_cache(maxsize=8)(codec_for)
OWN_KNOBS = ("mode", "frames", "temperature", "seed")
FORM_FIELDS = ("prompt", "model", "seconds", "size")


class ApiError(Exception):
    """An HTTP error answer: status, message, the offending parameter and a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = ""):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code = code or {400: "invalid_request", 404: "not_found", 429: "too_many_jobs"}.get(
            status, "error"
        )

    def __reduce__(self):  # crosses a process boundary whole (Ray Serve: replica -> ingress)
        return ApiError, (self.status, self.message, self.param, self.code)

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param,
                          "code": self.code}}  # fmt: skip


def scalar(text: object) -> object:
    """A form value as int, float or the string itself (JSON values pass unchanged)."""
    if not isinstance(text, str):
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


@dataclass(frozen=True)
class EngineSide:
    """What the server's engine is: its model names and dir, its mode."""

    model_names: tuple[str, ...]
    model_dir: Path
    mode: str


@dataclass(frozen=True)
class VideoParams:
    """A checked request: the prompt as token ids and how to sample the video after it."""

    model: str
    caption: str
    shape: VideoShape
    first_codes: torch.Tensor | None  # [T, rows, cols] codes of the input_reference image
    prompt_ids: list[int]
    temperature: float
    seed: int | None
    extra_args: dict[str, Any]
    knobs: dict[str, Any]

    @property
    def frames_to_generate(self) -> int:
        """Frames after the prompt: an input_reference image is the video's first frame."""
        return self.shape.num_frames - (0 if self.first_codes is None else len(self.first_codes))

    @property
    def max_tokens(self) -> int:
        return self.frames_to_generate * tokens_per_frame(self.shape.rows, self.shape.cols)


def form_knobs(form: Mapping[str, Any]) -> dict[str, Any]:
    """``packcache[name]`` form fields -> {name: value}."""
    prefix = KNOBS_FIELD + "["
    return {
        k[len(prefix) : -1]: v for k, v in form.items() if k.startswith(prefix) and k[-1] == "]"
    }


def split_knobs(knobs: Mapping[str, Any], frame_parallel: bool) -> tuple[dict, dict]:
    """{name: value} -> (own knobs, engine extra_args); ApiError naming an unknown name.
    ``temperature`` and ``seed`` are vLLM's sampler's in next-token mode, the frame-parallel
    sampler's (``ardf_*``) in frame-parallel mode."""
    engine_names = {k: REQUEST_FLAT_PREFIX + k for k in KNOBS}
    engine_names |= {k: ARDF_PREFIX + k for k in ARDFSamplingParams.knob_names()}
    own_names = OWN_KNOBS if not frame_parallel else ("mode", "frames")
    unknown = sorted(set(knobs) - set(engine_names) - set(own_names))
    if unknown:
        valid = sorted({*engine_names, *OWN_KNOBS})
        raise ApiError(400, f"unknown {KNOBS_FIELD} knob(s) {unknown}; valid: {valid}", KNOBS_FIELD)
    own = {k: scalar(v) for k, v in knobs.items() if k in own_names}
    extra = {engine_names[k]: scalar(v) for k, v in knobs.items() if k not in own_names}
    return own, extra


def read_image(data: bytes, shape: VideoShape) -> np.ndarray:
    """Encoded image bytes -> [height, width, 3] uint8 at the video's size (same aspect)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        message = f"input_reference is not a readable image: {err}"
        raise ApiError(400, message, "input_reference") from err
    width, height = image.size
    if width * shape.height != height * shape.width:
        raise ApiError(
            400,
            f"input_reference is {width}x{height}; its aspect must match size {shape.size}",
            "input_reference",
        )
    image = image.convert("RGB").resize((shape.width, shape.height), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)


def image_bytes(reference: object) -> bytes | None:
    """The upload's bytes, or a ``data:`` URL's (``{"image_url": "data:image/png;base64,..."}``)."""
    if reference is None or reference == "":
        return None
    if isinstance(reference, bytes):
        return reference
    url = reference.get("image_url", "") if isinstance(reference, Mapping) else reference
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise ApiError(
            400,
            "input_reference must be an uploaded image file or {'image_url': 'data:...;base64,'}",
            "input_reference",
        )
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except ValueError as err:
        raise ApiError(400, f"input_reference data URL: {err}", "input_reference") from err


def chosen_model(requested: object, engine: EngineSide) -> str:
    if requested in (None, ""):
        return engine.model_names[0]
    if requested not in engine.model_names:
        raise ApiError(
            404,
            f"the model {requested!r} does not exist; this server has {list(engine.model_names)}",
            "model",
            "model_not_found",
        )
    return str(requested)


def checked_shape(fields: Mapping[str, Any], own: Mapping[str, Any], engine: EngineSide):
    try:
        shape = video_shape(engine.model_dir, fields.get("size"), fields.get("seconds"))
    except ValueError as err:
        param = "size" if str(err).startswith("size") else "seconds"
        raise ApiError(400, str(err), param) from err
    frames = own.get("frames")
    if frames is None:
        return shape
    if not isinstance(frames, int) or frames < 1:
        raise ApiError(400, f"packcache.frames must be an integer >= 1, got {frames!r}", "frames")
    return replace(shape, num_frames=frames)


def parse_video_request(
    fields: Mapping[str, Any], knobs: Mapping[str, Any], reference: object, engine: EngineSide
) -> VideoParams:
    """The request's fields (OpenAI names), its ``packcache`` knobs and its input_reference
    (bytes, a data-URL object or None) -> VideoParams; ApiError naming the first problem."""
    caption = fields.get("prompt")
    if not isinstance(caption, str) or not caption.strip():
        raise ApiError(400, "prompt must be a non-empty caption", "prompt")
    model = chosen_model(fields.get("model"), engine)
    mode = knobs.get("mode", engine.mode)
    if mode != engine.mode:
        raise ApiError(
            400,
            f"packcache.mode {mode!r}: this server runs {engine.mode!r} "
            "(start another with --packcache-mode to serve the other)",
            "mode",
        )
    own, extra = split_knobs(knobs, engine.mode == FRAME_PARALLEL)
    shape = checked_shape(fields, own, engine)
    data = image_bytes(reference)
    first_codes = None
    if data is not None:
        first_codes = server_codec(engine.model_dir, shape.cell_pixels).encode(
            read_image(data, shape)
        )
    try:
        prompt_ids = video_prompt(engine.model_dir, caption, shape, first_codes)
    except ValueError as err:
        param = "input_reference" if str(err).startswith("condition") else "prompt"
        raise ApiError(400, str(err), param) from err
    temperature = scalar(own.get("temperature", 0.0))
    seed = own.get("seed")
    knob_record = {k: scalar(v) for k, v in knobs.items()} | {"mode": mode}
    return VideoParams(
        model, caption, shape, first_codes, prompt_ids, temperature, seed, extra, knob_record
    )
