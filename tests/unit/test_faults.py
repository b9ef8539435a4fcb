"""engine.faults: fault injection is armed only by its environment variable, and then fires only
for a request that names an armed stage."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from packcache_vllm.engine import faults


def test_unset_or_empty_variable_arms_nothing():
    assert faults.armed_stages(None) is None
    assert faults.armed_stages("") is None


def test_all_arms_every_stage_and_a_list_arms_those():
    assert faults.armed_stages("all") == frozenset(faults.STAGES)
    assert faults.armed_stages("moves, twin") == frozenset({"moves", "twin"})


def test_an_unknown_stage_is_refused_by_name():
    with pytest.raises(ValueError, match=r"PACKCACHE_FAULT_INJECTION.*'bogus'"):
        faults.armed_stages("moves,bogus")


def params(stage: str | None) -> SimpleNamespace:
    return SimpleNamespace(extra_args=None if stage is None else {faults.REQUEST_KEY: stage})


def test_inject_fires_only_for_an_armed_stage_the_request_names(monkeypatch):
    monkeypatch.setattr(faults, "ARMED", frozenset({"moves"}))
    with pytest.raises(faults.InjectedFault, match="injected moves fault for request r1"):
        faults.inject("moves", "r1", params("moves"))
    faults.inject("moves", "r2", params(None))  # the request asks for nothing
    faults.inject("moves", "r3", params("planning"))  # another stage
    faults.inject("planning", "r4", params("planning"))  # a stage not armed


def test_disarmed_a_request_key_does_nothing(monkeypatch):
    monkeypatch.setattr(faults, "ARMED", None)
    for stage in faults.STAGES:
        faults.inject(stage, "r1", params(stage))
