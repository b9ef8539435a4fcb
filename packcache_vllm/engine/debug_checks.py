"""Whether the hot path checks values: slot ranges and distinct destinations of every KV move.

Such a check reads a tensor back to the host (``min``, ``max``, ``unique``): on a GPU a
device-to-host synchronisation per compaction. So they run only when ``PACKCACHE_DEBUG_CHECKS``
is set (read once, at import; the test suite sets it in ``tests/conftest.py``). Shape, dtype and
device checks, which read no values, always run.
"""

from __future__ import annotations

import os

DEBUG_CHECKS_ENV = "PACKCACHE_DEBUG_CHECKS"
ENABLED: bool = os.environ.get(DEBUG_CHECKS_ENV, "") not in ("", "0")


def enabled() -> bool:
    return ENABLED
