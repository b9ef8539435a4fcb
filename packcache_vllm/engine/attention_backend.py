"""The attention backend frame-parallel mode runs on with CUDA, chosen and checked at start-up.

A frame-parallel step mixes causal rows (text prefill) with bidirectional ones (canvases,
commits, conditioning frames) through one per-request causal tensor. Of vLLM 0.32's CUDA
backends only ``TRITON_ATTN`` honours that tensor on Hopper (FlashAttention needs FA4,
FlashInfer and FlexAttention take its truth value; ``docs/attention-backends.md`` has the
file:line evidence). So on CUDA the mode selects it through vLLM's documented setting
(``EngineArgs.attention_backend``, ``--attention-backend``) and refuses a command line that forces
another; the runner checks the backends vLLM actually built once more at start-up.

Pure Python: importing this module never imports vLLM (``cli`` uses it at parse time).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

FRAME_PARALLEL_CUDA_BACKEND = "TRITON_ATTN"
WHY = (
    "frame-parallel canvases attend bidirectionally through a per-request causal tensor, "
    f"which on CUDA only {FRAME_PARALLEL_CUDA_BACKEND} honours"
)


def backend_name(value: object) -> str | None:
    """A backend as vLLM's settings hold it (``AttentionBackendEnum``, its name, "auto" or
    None) -> its upper-case name, or None for automatic selection."""
    if value is None:
        return None
    name = str(getattr(value, "name", value)).upper()
    return None if name == "AUTO" else name


def forced_backends(settings: Mapping[str, Any]) -> dict[str, str]:
    """The backends given in engine ``settings`` (EngineArgs field -> value), by the setting
    that names each: ``attention_backend`` (``--attention-backend``), ``attention_config.backend``
    and ``attention_config.backend_per_kind[kind]`` (``--attention-config``, a dict or vLLM's
    ``AttentionConfig``)."""
    forced = {}
    given = backend_name(settings.get("attention_backend"))
    if given is not None:
        forced["attention_backend (--attention-backend)"] = given
    config = settings.get("attention_config")
    if config is None:
        return forced
    field = config.get if isinstance(config, Mapping) else lambda key: getattr(config, key, None)
    given = backend_name(field("backend"))
    if given is not None:
        forced["attention_config.backend"] = given
    for kind, backend in (field("backend_per_kind") or {}).items():
        if backend_name(backend) is not None:
            forced[f"attention_config.backend_per_kind[{kind!r}]"] = backend_name(backend)
    return forced


def frame_parallel_backend_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The EngineArgs fields that run frame-parallel mode on CUDA: ``attention_backend`` set to
    ``TRITON_ATTN`` unless the user already chose it. ValueError naming the setting and the
    backend when the user forced another."""
    forced = forced_backends(settings)
    other = {name: backend for name, backend in forced.items()
             if backend != FRAME_PARALLEL_CUDA_BACKEND}  # fmt: skip
    if other:
        given = ", ".join(f"{name}={backend}" for name, backend in other.items())
        raise ValueError(
            f"--packcache-mode frame-parallel on CUDA runs on attention backend "
            f"{FRAME_PARALLEL_CUDA_BACKEND}, but {given} was given: {WHY}"
        )
    if forced:
        return {}
    return {"attention_backend": FRAME_PARALLEL_CUDA_BACKEND}


def check_frame_parallel_backends(backends: Iterable[str]) -> None:
    """RuntimeError naming any backend (``AttentionBackend.get_name()``) that vLLM built for
    frame-parallel mode on CUDA other than ``TRITON_ATTN``."""
    other = sorted({name for name in backends if name != FRAME_PARALLEL_CUDA_BACKEND})
    if other:
        raise RuntimeError(
            f"frame-parallel mode on CUDA cannot run on attention backend "
            f"{', '.join(other)}: {WHY} (start vLLM with --attention-backend "
            f"{FRAME_PARALLEL_CUDA_BACKEND}, which --packcache-mode frame-parallel selects)"
        )
