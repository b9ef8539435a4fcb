"""The videos API's job store (packcache_vllm/videos/jobs.py) and its request reading, no server."""

from __future__ import annotations

import pytest

from packcache_vllm.videos.jobs import INTERRUPTED, JobStore, StoreFull
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
