"""Start `vllm serve` with the videos API on, as a subprocess (the demo's server)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from packcache_vllm.videos.jobs import STORE_ENV
from packcache_vllm.videos.routes import PLUGIN_NAME

PLUGINS = f"packcache,{PLUGIN_NAME}"  # VLLM_PLUGINS: the general plugin and the routes
STARTUP_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def videos_server(model_dir: Path, store: Path, log_path: Path, flags: Sequence[str]):
    """`vllm serve MODEL_DIR FLAGS` with jobs in ``store`` and its output in ``log_path``, in
    its own process group; yields its /v1 URL and stops it (SIGTERM, then SIGKILL) at the end."""
    port = free_port()
    env = {**os.environ, "VLLM_PLUGINS": PLUGINS, STORE_ENV: str(store)}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    command = [str(Path(sys.executable).parent / "vllm"), "serve", str(model_dir),
               "--host", "127.0.0.1", "--port", str(port), *flags]  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not healthy(f"http://127.0.0.1:{port}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text()[-3000:]
                raise RuntimeError(f"vllm serve did not start; its log ends:\n{tail}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
