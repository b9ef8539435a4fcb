"""The whole suite runs the hot path's value checks (slot ranges, distinct destinations), which
production leaves off (``engine/debug_checks.py``); engine and server subprocesses inherit it."""

from __future__ import annotations

import os

os.environ.setdefault("PACKCACHE_DEBUG_CHECKS", "1")
