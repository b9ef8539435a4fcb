"""A local Ray cluster (2 CPUs, small object store) and a tiny Lumos-1 checkpoint, per session."""

from __future__ import annotations

import pytest

RAY_CPUS = 2
OBJECT_STORE_BYTES = 128 << 20


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(
        num_cpus=RAY_CPUS,
        object_store_memory=OBJECT_STORE_BYTES,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_model_dir(tmp_path_factory):
    from packcache_vllm.model.factory import build_tiny_lumos

    return build_tiny_lumos(tmp_path_factory.mktemp("ray-tiny-lumos"), seed=0)
