"""Frame-parallel mode on CUDA: its worker, and the attention backend chosen (TRITON_ATTN, the one
that honours a per-request causal tensor on Hopper) or refused by name. No vLLM is imported."""

from __future__ import annotations

import pytest

from packcache_vllm import cli
from packcache_vllm.engine.attention_backend import (
    FRAME_PARALLEL_CUDA_BACKEND,
    check_frame_parallel_backends,
    frame_parallel_backend_settings,
)

ARDF_GPU_WORKER = "packcache_vllm.engine.ardf_gpu_worker.ARDFGPUWorker"


class FakeEnum:
    """Stands for vLLM's ``AttentionBackendEnum`` member: only its ``name`` is read."""

    def __init__(self, name: str) -> None:
        self.name = name


class AttentionConfigLike:
    """vLLM's ``AttentionConfig`` as the parser leaves it: attributes, not a dict."""

    def __init__(self, backend=None, backend_per_kind=None) -> None:
        self.backend = backend
        self.backend_per_kind = backend_per_kind or {}


@pytest.fixture
def v1_runner(monkeypatch):
    monkeypatch.setenv(cli.V2_RUNNER_ENV, "0")


def test_frame_parallel_on_cuda_gets_the_gpu_worker_and_triton(v1_runner):
    overrides = cli.engine_overrides("packcache", device="cuda", mode="frame-parallel")
    assert overrides["worker_cls"] == ARDF_GPU_WORKER
    assert overrides["scheduler_cls"] == cli.FRAME_PARALLEL_SCHEDULER_CLS
    assert overrides["attention_backend"] == FRAME_PARALLEL_CUDA_BACKEND == "TRITON_ATTN"
    assert overrides["async_scheduling"] is False


def test_other_modes_and_devices_leave_the_backend_to_vllm(v1_runner):
    assert "attention_backend" not in cli.engine_overrides("packcache", device="cuda")
    cpu = cli.engine_overrides("packcache", device="cpu", mode="frame-parallel")
    assert "attention_backend" not in cpu


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"attention_backend": "FLASH_ATTN"}, "attention_backend (--attention-backend)=FLASH_ATTN"),
        ({"attention_backend": FakeEnum("FLASHINFER")}, "=FLASHINFER"),
        ({"attention_config": {"backend": "FLEX_ATTENTION"}}, "attention_config.backend=FLEX_ATTENTION"),
        ({"attention_config": AttentionConfigLike(FakeEnum("FLASH_ATTN"))},
         "attention_config.backend=FLASH_ATTN"),
        ({"attention_config": AttentionConfigLike(None, {"full_attention": "FLASH_ATTN"})},
         "attention_config.backend_per_kind['full_attention']=FLASH_ATTN"),
    ],
)  # fmt: skip
def test_another_forced_backend_is_refused_naming_it(v1_runner, settings, named):
    with pytest.raises(ValueError) as refused:
        cli.engine_overrides(
            "packcache", device="cuda", mode="frame-parallel", engine_settings=settings
        )
    message = str(refused.value)
    assert named in message
    assert "runs on attention backend TRITON_ATTN" in message


@pytest.mark.parametrize(
    "settings",
    [
        {"attention_backend": "TRITON_ATTN"},
        {"attention_backend": "triton_attn"},
        {"attention_config": {"backend": "TRITON_ATTN"}},
        {"attention_config": AttentionConfigLike(FakeEnum("TRITON_ATTN"))},
    ],
)
def test_triton_given_by_the_user_is_kept_and_not_set_twice(v1_runner, settings):
    """vLLM refuses ``attention_backend`` together with ``attention_config.backend``, so a user's
    own choice of TRITON_ATTN is left as given."""
    overrides = cli.engine_overrides(
        "packcache", device="cuda", mode="frame-parallel", engine_settings=settings
    )
    assert "attention_backend" not in overrides


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"attention_backend": None},
        {"attention_backend": "auto"},
        {"attention_config": AttentionConfigLike()},
        {"attention_config": {"backend": None, "flash_attn_version": 3}},
    ],
)
def test_automatic_selection_is_replaced_by_triton(settings):
    assert frame_parallel_backend_settings(settings) == {"attention_backend": "TRITON_ATTN"}


def test_vllm_serve_flags_reach_the_check(v1_runner):
    """The namespace fields ``vllm serve`` parses into are the ones the check reads."""
    assert {"attention_backend", "attention_config"} <= set(cli.ENGINE_SETTING_FIELDS)
    parser = cli_parser()
    namespace = parser.parse_args(["--kv-policy", "full", "--packcache-mode", "frame-parallel"])
    namespace.attention_backend = "FLASH_ATTN"
    with pytest.raises(ValueError, match=r"--attention-backend\)=FLASH_ATTN"):
        cli.overrides_from_namespace(namespace, device="cuda")


def cli_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="serve")
    cli.add_arguments(parser)
    return parser


def test_runner_start_up_check_names_the_backends_vllm_built():
    check_frame_parallel_backends(["TRITON_ATTN", "TRITON_ATTN"])
    with pytest.raises(RuntimeError) as refused:
        check_frame_parallel_backends(["TRITON_ATTN", "FLASH_ATTN"])
    assert "cannot run on attention backend FLASH_ATTN" in str(refused.value)
    assert "--attention-backend TRITON_ATTN" in str(refused.value)


def test_the_module_stays_free_of_vllm():
    """cli imports it at parse time, and cli never imports vLLM."""
    import subprocess
    import sys

    code = "import sys, packcache_vllm.engine.attention_backend; print('vllm' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
