"""scripts/gpu_check.sh on a machine without CUDA vLLM: it parses, and it stops before running
anything, with exit status 2 and a line naming what is missing (it is meant for a CUDA machine
with vllm==0.32.0 and never runs in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_script_refuses_a_machine_without_cuda_vllm(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not a CUDA vLLM 0.32.0 machine" in done.stdout
    assert "vLLM's platform is 'cpu', not CUDA" in done.stdout
    assert not list(tmp_path.glob("*.log"))  # no step ran
