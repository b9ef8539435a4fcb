"""Real multi-process `vllm serve` with the plugin installed (policy off) answers OpenAI calls."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

STARTUP_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"vllm serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(
        f"vllm serve not healthy after {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}"
    )


@contextlib.contextmanager
def running_server(model_dir, log_path: Path, *extra_args: str):
    """`vllm serve` as a subprocess in its own session; yields its /v1 URL; stops it by its PID."""
    port = free_port()
    inherited_only_here = ("VLLM_ENABLE_V1_MULTIPROCESSING", "PACKCACHE_METRICS_DIR")
    env = {k: v for k, v in os.environ.items() if k not in inherited_only_here}
    if "--kv-cache-memory-bytes" in extra_args:
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # the variable would override the flag
    else:
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    command = [
        str(Path(sys.executable).parent / "vllm"), "serve", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--max-model-len", "2048", "--block-size", "32", "--no-enable-prefix-caching",
        "--seed", "0", *extra_args,
    ]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_until_healthy(proc, f"http://127.0.0.1:{port}/health", log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# Longer than Lumos-1's 4,095 text tokens before the first frame, so the limit is the plugin's.
LONG_MAX_MODEL_LEN = 8192


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with running_server(
        tiny_model_dir, log_path, "--max-model-len", str(LONG_MAX_MODEL_LEN)
    ) as url:
        yield url


def test_text_completion(server, tiny_model_dir):
    from openai import OpenAI

    client = OpenAI(base_url=server, api_key="unused")
    reply = client.completions.create(
        model=str(tiny_model_dir), prompt="a red ball bounces", max_tokens=8, temperature=0.0
    )
    assert reply.usage.completion_tokens == 8
    assert isinstance(reply.choices[0].text, str)


def test_long_text_before_the_first_frame_is_http_400_without_a_policy(server, tiny_model_dir):
    """The Lumos-1 model's position codes carry at most 4,095 text tokens before the first frame:
    a longer prompt is refused at the door even with the policy off, and the server (whose
    engine would have died computing its positions) keeps serving."""
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=server, api_key="unused", max_retries=0)
    model = str(tiny_model_dir)
    with pytest.raises(BadRequestError, match=r"at most 4,095 text tokens before the first "
                                              r"frame, this prompt has 4,096"):  # fmt: skip
        client.completions.create(model=model, prompt=[300] * 4096, max_tokens=8)
    reply = client.completions.create(
        model=model, prompt=[300] * 8, max_tokens=8, extra_body={"ignore_eos": True}
    )
    assert reply.usage.completion_tokens == 8


def scrape_metrics(base_url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The server's ``/metrics``: metric sample name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_metrics_without_policy_are_vllms_own(server):
    samples = scrape_metrics(server)
    assert any(name.startswith("vllm:") for name in samples)
    assert not [name for name in samples if name.startswith("packcache:")]


def video_tokens(base_url: str, model, prompt: list[int], max_tokens: int, **extra_body) -> list:
    """Greedy token ids for a token-id prompt through the OpenAI client (`return_token_ids`)."""
    from openai import OpenAI

    reply = OpenAI(base_url=base_url, api_key="unused").completions.create(
        model=str(model),
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0.0,
        extra_body={"return_token_ids": True, "ignore_eos": True, **extra_body},
    )
    return list(reply.choices[0].token_ids)


def test_video_token_prompt_matches_offline_engine(server, tiny_model_dir, llm, video_prompts):
    """Same greedy float32 tokens through HTTP + multi-process engine as in-process."""
    from vllm import SamplingParams

    prompt, num_tokens = video_prompts[0], 40
    served = video_tokens(server, tiny_model_dir, prompt, num_tokens)
    params = SamplingParams(
        temperature=0.0, max_tokens=num_tokens, ignore_eos=True, detokenize=False
    )
    offline = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    assert served == list(offline[0].outputs[0].token_ids)
