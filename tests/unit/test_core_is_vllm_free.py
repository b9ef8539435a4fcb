"""packcache_vllm.core must stay pure Python + torch: importing it never imports vLLM."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import packcache_vllm.core

CORE_DIR = Path(packcache_vllm.core.__file__).parent
CORE_MODULES = sorted(
    "packcache_vllm.core." + ".".join(path.relative_to(CORE_DIR).with_suffix("").parts)
    for path in CORE_DIR.rglob("*.py")
    if path.stem != "__init__"
)
VLLM_IMPORT = re.compile(r"^\s*(import\s+vllm\b|from\s+vllm\b)", re.MULTILINE)


def test_all_core_modules_are_checked():
    expected = {"layout", "rope", "position_code", "budget", "select", "plan", "geometric"}
    assert {name.rsplit(".", 1)[1] for name in CORE_MODULES} >= expected


def test_importing_core_does_not_import_vllm():
    imports = "; ".join(f"import {module}" for module in CORE_MODULES)
    check = (
        f"import sys; {imports}; "
        "loaded = [m for m in sys.modules if m == 'vllm' or m.startswith('vllm.')]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_core_sources_never_import_vllm():
    offenders = [
        path.name for path in CORE_DIR.rglob("*.py") if VLLM_IMPORT.search(path.read_text())
    ]
    assert offenders == []
