"""A short soak (``benchmarks/soak.py``) against real `vllm serve`s, both modes of the plugin:
mixed streamed and plain requests with per-request overrides, a third abandoned by the client,
some bad. Nothing here depends on timing: which requests end up served or aborted may vary, but
no server dies, no served request differs from the dense reference (no abandoned stream from its
prefix), no request errs, every bad request and only those is refused with HTTP 400, no cache
outgrows its bound, and after every round the server is idle with an empty KV cache."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.server

REQUESTS, ROUND = 40, 20


@pytest.fixture(scope="module")
def soak_rounds(tiny_model_dir, tmp_path_factory):
    from benchmarks import soak

    out = tmp_path_factory.mktemp("soak")
    argv = [
        "--runs",
        "packcache:next-token",
        "packcache:frame-parallel",
        "--model",
        str(tiny_model_dir),
        "--requests",
        str(REQUESTS),
        "--round",
        str(ROUND),
        "--distinct",
        "6",
        "--max-frames",
        "5",
        "--bad-share",
        "0.1",
        "--out",
        str(out),
    ]
    return soak.main(argv)


@pytest.mark.parametrize("run", ["packcache:next-token", "packcache:frame-parallel"])
def test_short_soak(soak_rounds, run):
    rounds = soak_rounds[run]
    last = rounds[-1]
    assert [r["server_alive"] for r in rounds] == [True] * (REQUESTS // ROUND)
    assert last["requests"] == REQUESTS
    assert last["totals"]["error"] == 0, last
    assert last["wrong_tokens"] == 0
    assert last["bad_sent"] > 0 and last["totals"]["rejected"] == last["bad_sent"]
    assert last["bad_rejected"] == last["bad_sent"]
    assert last["num_over_bound"] == 0, last["requests_over_bound"]
    for record in rounds:
        assert record["idle"] == {"running": 0, "waiting": 0, "kv_usage": 0, "cache_tokens": 0}
