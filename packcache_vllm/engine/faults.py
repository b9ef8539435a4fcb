"""Per-request failures of the plugin's work: how a cause is reported, and test-only fault
injection into that work (off unless armed at start-up).

The engine's failure isolation (a request whose PackCache work raises fails alone: its client gets
an error, its blocks return to the pool, the others keep running) is tested by making that work
raise on purpose for one marked request among several. Two things must both hold:

* the server was started with ``PACKCACHE_FAULT_INJECTION`` set (read once, when this module is
  first imported; vLLM's engine and worker processes inherit it): a comma-separated list of
  stages from ``STAGES``, or ``all``;
* the request names one of those stages in ``SamplingParams.extra_args["inject_fault"]``
  (``vllm_xargs`` over HTTP; not a ``packcache_*`` key, which the door checks as a knob).

Unset (production), ``inject`` returns at its first check and a request's key does nothing.

Stages: ``positions`` (the runner computes the request's M-RoPE position codes), ``planning`` (the
scheduler makes its compaction plan), ``moves`` (the worker moves its tokens in every layer),
``rerotation`` (the worker re-rotates its anchors' keys), ``sorts`` (the worker sorts a completing
frame by its cached keys, ``key_norm`` selector), ``twin`` (the frame-parallel scheduler makes the
request's unconditional twin), ``pairing`` (it pairs the request's canvas with its twin's).
"""

from __future__ import annotations

import os

FAULTS_ENV = "PACKCACHE_FAULT_INJECTION"
REQUEST_KEY = "inject_fault"
STAGES = ("positions", "planning", "moves", "rerotation", "sorts", "twin", "pairing")


class InjectedFault(RuntimeError):
    """The failure ``inject`` raises."""


def failure_cause(err: Exception) -> str:
    """How a request's failure is logged and reported to the scheduler (a string: the worker's
    exceptions cross a process boundary)."""
    return f"{type(err).__name__}: {err}"


def armed_stages(value: str | None) -> frozenset[str] | None:
    """The stages a ``PACKCACHE_FAULT_INJECTION`` value arms (None: unset or empty)."""
    if not value:
        return None
    stages = frozenset(s.strip() for s in value.split(",") if s.strip())
    if stages == {"all"}:
        return frozenset(STAGES)
    unknown = sorted(stages - set(STAGES))
    if unknown:
        raise ValueError(f"{FAULTS_ENV}: unknown stages {unknown}; valid: all or {list(STAGES)}")
    return stages


ARMED: frozenset[str] | None = armed_stages(os.environ.get(FAULTS_ENV))


def inject(stage: str, request_id: str, sampling_params) -> None:
    """Raise ``InjectedFault`` when ``stage`` is armed and the request asks for it."""
    if ARMED is None:
        return
    extra_args = getattr(sampling_params, "extra_args", None) or {}
    if stage in ARMED and extra_args.get(REQUEST_KEY) == stage:
        raise InjectedFault(f"injected {stage} fault for request {request_id}")
