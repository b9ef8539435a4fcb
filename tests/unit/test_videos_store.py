"""The videos API's job store (packcache_vllm/videos/jobs.py) and its request reading, no server."""

from __future__ import annotations

import pytest

from packcache_vllm.videos.jobs import (
    EXPIRE_ENV,
    INTERRUPTED,
    MAX_ACTIVE_ENV,
    STORE_ENV,
    JobStore,
    StoreFull,
    StoreSettings,
)
from packcache_vllm.videos.params import ApiError, form_knobs, split_knobs


def video(prompt: str) -> dict:
    return {"prompt": prompt, "progress": 0, "error": None}


def test_a_full_store_refuses_until_a_job_finishes(tmp_path):
    store = JobStore(tmp_path, max_active=2)
    first = store.create(video("a"))
    store.create(video("b"))
    with pytest.raises(StoreFull, match="2 videos are queued or in progress"):
        store.create(video("c"))
    store.update(first.id, status="completed")
    assert store.create(video("c")).status == "queued"


def test_reopened_store_keeps_finished_jobs_and_fails_cut_off_ones(tmp_path):
    store = JobStore(tmp_path, max_active=4)
    done = store.create(video("done"))
    store.update(done.id, status="completed", progress=100)
    running = store.create(video("running"))
    store.update(running.id, status="in_progress", progress=40)
    queued = store.create(video("queued"))

    reopened = JobStore(tmp_path, max_active=4)
    assert reopened.jobs[done.id].video == store.jobs[done.id].video
    for job_id in (running.id, queued.id):
        job = reopened.jobs[job_id]
        assert job.status == "failed" and job.video["error"]["code"] == INTERRUPTED
    assert JobStore(tmp_path, max_active=4).jobs[running.id].status == "failed"  # on disk too


def test_pages_in_creation_order(tmp_path):
    store = JobStore(tmp_path, max_active=8)
    ids = [store.create(video(str(i))).id for i in range(5)]
    page, more = store.page(None, 2, "asc")
    assert [j.id for j in page] == ids[:2] and more
    page, more = store.page(ids[1], 10, "asc")
    assert [j.id for j in page] == ids[2:] and not more
    page, more = store.page(None, 3, "desc")
    assert [j.id for j in page] == ids[::-1][:3] and more
    store.delete(ids[0])
    assert not (tmp_path / ids[0]).exists()
    assert [j.id for j in store.page(None, 10, "asc")[0]] == ids[1:]


def test_knobs_from_a_form_and_their_engine_names():
    form = {"prompt": "x", "packcache[window]": "2", "packcache[seed]": "7", "packcache[x": "1"}
    knobs = form_knobs(form)
    assert knobs == {"window": "2", "seed": "7"}
    assert split_knobs(knobs, frame_parallel=False) == ({"seed": 7}, {"packcache_window": 2})
    assert split_knobs(knobs, frame_parallel=True) == ({}, {"packcache_window": 2, "ardf_seed": 7})
    with pytest.raises(ApiError, match=r"unknown packcache knob\(s\) \['guidance'\]"):
        split_knobs({"guidance": 3}, frame_parallel=False)


class Clock:
    """A settable clock (seconds) for the store."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_finished_jobs_expire_after_the_configured_time(tmp_path):
    clock = Clock(1_000)
    store = JobStore(tmp_path, max_active=4, expire_after_s=60, clock=clock)
    done, failed, running = (store.create(video(name)) for name in ("done", "failed", "running"))
    assert done.video["created_at"] == 1_000 and done.video["expires_at"] is None
    clock.now = 1_010
    store.finish(done.id)
    store.fail(failed.id, "generation_failed", "boom")
    store.update(running.id, status="in_progress")
    for job in (done, failed):
        assert (job.video["completed_at"], job.video["expires_at"]) == (1_010, 1_070)
    assert JobStore(tmp_path, 4, 60, clock).jobs[done.id].video["expires_at"] == 1_070  # on disk
    clock.now = 1_069
    assert store.get(done.id) is done and store.get(failed.id) is failed
    clock.now = 1_070
    assert store.get(done.id) is None and store.get(failed.id) is None
    assert not (tmp_path / done.id).exists() and not (tmp_path / failed.id).exists()
    clock.now = 10**9  # a job queued or in progress never expires
    assert store.get(running.id).status == "in_progress"
    assert [job.id for job in store.page(None, 10, "asc")[0]] == [running.id]


def test_an_expired_job_is_gone_after_a_restart_too(tmp_path):
    clock = Clock(0)
    store = JobStore(tmp_path, max_active=4, expire_after_s=5, clock=clock)
    job = store.create(video("a"))
    store.finish(job.id)
    clock.now = 5
    reopened = JobStore(tmp_path, max_active=4, expire_after_s=5, clock=clock)
    assert reopened.page(None, 10, "asc") == ([], False)
    assert not (tmp_path / job.id).exists()


def test_without_an_expiry_finished_jobs_stay(tmp_path):
    clock = Clock(5)
    store = JobStore(tmp_path, max_active=2, clock=clock)
    job = store.create(video("a"))
    store.finish(job.id)
    assert (job.status, job.video["progress"], job.video["expires_at"]) == ("completed", 100, None)
    clock.now = 10**12
    assert store.get(job.id) is job


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, None), ({EXPIRE_ENV: ""}, None), ({EXPIRE_ENV: "3600"}, 3600)],
)
def test_store_settings_from_the_environment(monkeypatch, tmp_path, env, expected):
    monkeypatch.setenv(STORE_ENV, str(tmp_path))
    monkeypatch.setenv(MAX_ACTIVE_ENV, "3")
    monkeypatch.delenv(EXPIRE_ENV, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert StoreSettings.from_env() == StoreSettings(tmp_path, 3, expected)


@pytest.mark.parametrize("value", ["0", "-5", "1h"])
def test_a_bad_expiry_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(EXPIRE_ENV, value)
    with pytest.raises(ValueError, match=rf"{EXPIRE_ENV} must be an integer >= 1 .*{value!r}"):
        StoreSettings.from_env()
