"""How the policy knobs read on the command line, beside the registry of ``core.policies``
(which names every policy and knob, with its range and a short help): the longer help the
PackCache preset's knobs have always had on ``--packcache-*``, and the choices of a knob whose
value is a name. A knob without an entry here uses the registry's words.
"""

from __future__ import annotations

from packcache_vllm.core.policies import KNOB_SPECS
from packcache_vllm.core.select import SELECTORS

FLAG_HELP = {
    "window": "Frames of history kept, an integer >= 1: a frame at distance >= W from the newest "
    "complete frame is dropped whole. Preset: sliding 1, packcache 4, full unbounded.",
    "decay": "Share of its tokens a frame at distance d keeps, rho^d, with 0 < rho <= 1. "
    "Preset: packcache 0.5, full and sliding 1.",
    "min_keep": "Floor on a kept frame's share of tokens, 0 <= b <= 1. "
    "Preset: packcache 3/W (0.75 at W=4, capped at 1), full and sliding 1.",
    "selector": "Which tokens of a thinned frame survive: uniform (evenly spread over the frame) "
    "or key_norm (largest key norms in the last layer, read by the worker when the frame "
    "completes). Preset: uniform.",
}
NAME_CHOICES = {"selector": tuple(sorted(SELECTORS))}


def flag_help(knob: str) -> str:
    """The ``--packcache-<knob>`` help: the words above, or the registry's help and range."""
    spec = KNOB_SPECS[knob]
    return FLAG_HELP.get(knob, f"{spec.help} Allowed: {spec.allowed}.")


def knob_choices(knob: str) -> tuple[str, ...] | None:
    """The names a name-valued knob takes (its flag's choices); None for a number."""
    return NAME_CHOICES.get(knob)
