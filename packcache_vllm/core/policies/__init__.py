"""The KV policies by name, with their knobs and ranges: what ``--kv-policy NAME``, the
``--packcache-<knob>`` flags and per-request overrides accept.

Every policy is a ``core.budget.PackCacheConfig`` (the presets ``full``, ``sliding``,
``packcache``) or a small subclass of it (one file each here), so all of them go through the
same compaction, packing, time rebase and admission. A policy answers how many tokens each
generated frame keeps (``keep_counts``), which frames are anchors (``eviction_layout``), and
which tokens of a thinned frame survive (``make_selector``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.policies.dedupe import DedupePolicy
from packcache_vllm.core.policies.geometric import GeometricPolicy
from packcache_vllm.core.policies.salience import SaliencePolicy
from packcache_vllm.core.policies.sink_window import SinkWindowPolicy
from packcache_vllm.core.select import SELECTORS


@dataclass(frozen=True)
class Knob:
    """One knob: its name (``--packcache-<name>``, ``packcache_<name>`` per request), how a
    command-line value converts (``parse``), the allowed values in words, and its help."""

    name: str
    parse: type
    allowed: str
    metavar: str | None
    help: str


@dataclass(frozen=True)
class PolicySpec:
    """A policy name, its knobs (any subset may be given), its class, and how it is built."""

    name: str
    cls: type[PackCacheConfig]
    knobs: tuple[str, ...]
    summary: str
    build: Callable[..., PackCacheConfig]


KNOB_SPECS: dict[str, Knob] = {
    knob.name: knob
    for knob in (
        Knob("window", int, "an integer >= 1 (frames)", "W", "frames of history kept"),
        Knob("decay", float, "a number in (0, 1]", "RHO", "share kept per frame of distance"),
        Knob("min_keep", float, "a number in [0, 1]", "B", "floor on a kept frame's share"),
        Knob("selector", str, f"one of {sorted(SELECTORS)}", None, "which tokens survive"),
        Knob(
            "sinks",
            int,
            "an integer >= 0 (frames)",
            "S",
            "sink-window: the first S generated frames, kept whole forever beside the prompt. "
            "Default 1.",
        ),
        Knob(
            "threshold",
            float,
            "a number in (0, 1]",
            "TAU",
            "dedupe: a cell whose last-layer key has cosine similarity >= TAU with the same "
            "cell's key in the next frame is evicted first. Default 0.95.",
        ),
        Knob(
            "floor",
            float,
            "a number in (0, 1]",
            "PHI",
            "geometric: the smallest share a frame keeps; one whose decay^d falls below it is "
            "dropped whole. Default 1/16.",
        ),
    )
}

PACKCACHE_KNOBS = ("window", "decay", "min_keep", "selector")
PRESET_SUMMARIES = {
    "full": "the PackCache engine keeping every frame whole (no eviction)",
    "sliding": "keep only the newest complete frame, whole (W=1)",
    "packcache": "keep the newest W frames, older ones thinned to max(rho^d, b) of their tokens "
    "(W=4, rho=0.5, b=3/W)",
}

POLICY_SPECS: dict[str, PolicySpec] = {
    **{
        name: PolicySpec(
            name, PackCacheConfig, PACKCACHE_KNOBS, summary, partial(PackCacheConfig.preset, name)
        )
        for name, summary in PRESET_SUMMARIES.items()
    },
    "sink-window": PolicySpec(
        "sink-window",
        SinkWindowPolicy,
        ("sinks", "window"),
        "the first S generated frames (sinks) + the newest W, whole; the rest dropped (S=1, W=3)",
        SinkWindowPolicy,
    ),
    "geometric": PolicySpec(
        "geometric",
        GeometricPolicy,
        ("decay", "floor", "selector"),
        "the frame at distance d keeps decay^d of its tokens, dropped below a floor "
        "(FramePack; decay=0.5, floor=1/16)",
        GeometricPolicy,
    ),
    "dedupe": PolicySpec(
        "dedupe",
        DedupePolicy,
        ("window", "decay", "min_keep", "threshold"),
        "packcache's budget; a thinned frame gives up first the cells whose last-layer key "
        "nearly repeats in the next frame (cosine >= 0.95)",
        DedupePolicy.build,
    ),
    "salience": PolicySpec(
        "salience",
        SaliencePolicy,
        ("window", "decay", "min_keep"),
        "packcache's budget; a thinned frame keeps the cells the next frame's queries attended "
        "to most (last layer; next-token mode)",
        SaliencePolicy.build,
    ),
}
POLICY_NAMES = tuple(POLICY_SPECS)
_SPEC_BY_CLASS = {spec.cls: spec for spec in POLICY_SPECS.values()}  # PackCacheConfig: packcache
ALL_KNOBS = tuple(KNOB_SPECS)


def make_policy(name: str, **knobs: object) -> PackCacheConfig:
    """The policy ``name`` with ``knobs`` overriding its defaults. ValueError naming an unknown
    policy, a knob the policy does not have, or a bad value (the class's own checks)."""
    if name not in POLICY_SPECS:
        raise ValueError(f"KV policy must be one of {list(POLICY_NAMES)}, got {name!r}")
    spec = POLICY_SPECS[name]
    check_knob_names(spec, knobs)
    return spec.build(**knobs)


def check_knob_names(spec: PolicySpec, knobs: Mapping[str, object]) -> None:
    foreign = [knob for knob in knobs if knob not in spec.knobs]
    if foreign:
        raise ValueError(
            f"KV policy {spec.name!r} has no knob(s) {foreign}; its knobs: {list(spec.knobs)}"
        )


def spec_of(config: PackCacheConfig) -> PolicySpec:
    """The spec of a built policy (the presets share one class: ``packcache``'s spec)."""
    spec = _SPEC_BY_CLASS.get(type(config))
    if spec is None:
        raise ValueError(f"{type(config).__name__} is not a registered KV policy class")
    return spec


def knob_values(config: PackCacheConfig) -> dict[str, object]:
    """Every knob of the policy's class and its value (what round-trips through the engine's
    settings: ``make_policy(name, **knob_values(config)) == config``)."""
    return {knob: getattr(config, knob) for knob in spec_of(config).knobs}


def with_knobs(config: PackCacheConfig, **knobs: object) -> PackCacheConfig:
    """``config`` with some knobs replaced (a request's overrides): only its own knobs, each
    validated by the class; no preset is re-derived."""
    check_knob_names(spec_of(config), knobs)
    return replace(config, **knobs)


def knob_is_valid(knob: str, value: object) -> bool:
    """Whether some policy with ``knob`` accepts ``value`` for it (a command-line flag is parsed
    before the policy is known; the policy's own class checks again when it is built)."""
    for spec in POLICY_SPECS.values():
        if knob in spec.knobs:
            try:
                with_knobs(spec.build(), **{knob: value})
            except ValueError:
                continue
            return True
    return False
