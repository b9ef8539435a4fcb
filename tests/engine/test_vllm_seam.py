"""The engine's seam to vLLM (``engine/seam/``): every vLLM internal in its table exists in the
installed vLLM as the table says, no module outside the seam names one, ``patches/README.md``
is the table, and a policy is refused on a vLLM version the seam was not tested on."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import typing
from pathlib import Path

import pytest

from packcache_vllm.engine.seam import symbols, version
from packcache_vllm.engine.seam.symbols import PRIVATE_SYMBOLS, Symbol

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "packcache_vllm"
SEAM = PACKAGE / "engine" / "seam"
VLLM_SOURCE = Path(importlib.util.find_spec("vllm").origin).parent
# What a module outside the seam may import from vLLM: the documented plugin surface (engine
# entry points, sampling parameters, the classes --scheduler-cls / --worker-cls subclass, the
# model-authoring layers), nothing that the seam's table lists.
PUBLIC_VLLM_IMPORTS = {
    "vllm": {"LLM", "SamplingParams", "ModelRegistry"},
    "vllm.sampling_params": {"RequestOutputKind"},
    "vllm.config": {"VllmConfig", "get_layers_from_vllm_config"},
    "vllm.distributed": {"get_tensor_model_parallel_world_size"},
    "vllm.model_executor.layers.activation": {"SiluAndMul"},
    "vllm.model_executor.layers.attention": {"Attention"},
    "vllm.model_executor.layers.attention_layer_base": {"AttentionLayerBase"},
    "vllm.model_executor.layers.layernorm": {"RMSNorm"},
    "vllm.model_executor.layers.linear": {"MergedColumnParallelLinear", "QKVParallelLinear",
                                          "RowParallelLinear"},
    "vllm.model_executor.layers.logits_processor": {"LogitsProcessor"},
    "vllm.model_executor.layers.vocab_parallel_embedding": {"ParallelLMHead",
                                                            "VocabParallelEmbedding"},
    "vllm.model_executor.model_loader.weight_utils": {"default_weight_loader"},
    "vllm.model_executor.models.interfaces": {"SupportsMRoPE"},
    "vllm.utils.math_utils": {"cdiv"},
    "vllm.v1.request": {"Request", "RequestStatus"},
    "vllm.v1.worker.cpu_model_runner": {"CPUModelRunner"},
    "vllm.v1.worker.gpu_model_runner": {"GPUModelRunner"},
    "vllm.v1.worker.gpu_worker": {"Worker"},
    "vllm.v1.worker.cpu_worker": {"CPUWorker"},
}  # fmt: skip


# --- the table against the installed vLLM -------------------------------------------------


def owner_and_name(symbol: Symbol):
    module_name, _, qualname = symbol.path.partition(":")
    module = importlib.import_module(module_name)
    owner_name, _, name = qualname.rpartition(".")
    return (getattr(module, owner_name) if owner_name else module), name


def assigned_in_source(owner: type, name: str) -> bool:
    """Whether a vLLM class of ``owner``'s MRO assigns ``self.<name>``."""
    pattern = re.compile(rf"self\.{name}\s*(:[^=\n]+)?=[^=]")
    return any(
        pattern.search(inspect.getsource(cls))
        for cls in owner.__mro__
        if cls.__module__.startswith("vllm")
    )


def exists(symbol: Symbol) -> bool:
    owner, name = owner_and_name(symbol)
    if hasattr(owner, name):
        return True
    if dataclasses.is_dataclass(owner) and name in {f.name for f in dataclasses.fields(owner)}:
        return True
    return inspect.isclass(owner) and assigned_in_source(owner, name)


def parameter_names(symbol: Symbol) -> tuple[str, ...]:
    owner, name = owner_and_name(symbol)
    raw = inspect.getattr_static(owner, name)
    method = inspect.unwrap(raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw)
    names = list(inspect.signature(method).parameters)
    if not isinstance(raw, staticmethod):
        names = names[1:]  # self / cls
    return tuple(names)


@pytest.mark.parametrize("symbol", PRIVATE_SYMBOLS, ids=lambda s: s.path)
def test_each_internal_exists_as_the_table_says(symbol):
    assert exists(symbol), f"{symbol.path} is not in the installed vLLM"
    if symbol.params is not None:
        assert parameter_names(symbol) == symbol.params, symbol.path


def test_bookkeeping_sync_result_3_is_the_sampled_token_ids():
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from packcache_vllm.engine.seam.running import SAMPLED_TOKEN_IDS

    result = inspect.signature(GPUModelRunner._bookkeeping_sync).return_annotation
    assert typing.get_args(result)[SAMPLED_TOKEN_IDS] == list[list[int]]


def test_the_table_lists_each_internal_once():
    paths = [symbol.path for symbol in PRIVATE_SYMBOLS]
    assert len(paths) == len(set(paths))


def test_patches_readme_is_the_generated_table():
    text = (ROOT / "patches" / "README.md").read_text()
    start, end = text.index(symbols.README_START), text.index(symbols.README_END)
    assert text[start : end + len(symbols.README_END)] == symbols.readme_table(), (
        "regenerate with python -m packcache_vllm.engine.seam.symbols"
    )


# --- nothing outside the seam names an internal ---------------------------------------------


def modules_outside_the_seam() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if SEAM not in p.parents]


def vllm_private_names() -> set[str]:
    """Every ``_name`` (not dunder) vLLM defines as a method or assigns as an attribute."""
    pattern = re.compile(r"(?:def |self\.|cls\.)(_[a-z]\w*)")
    names: set[str] = set()
    for path in VLLM_SOURCE.rglob("*.py"):
        names.update(pattern.findall(path.read_text(errors="replace")))
    return names


def named_internals(path: Path, table_names: set[str], private_names: set[str]) -> list[str]:
    """The rule: outside the seam, no attribute, method definition or import may be a grepped
    name of the table, or a ``_name`` vLLM defines; vLLM imports only from the public list."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.FunctionDef):
            names = [node.name] if node.name.startswith("_") or node.name in table_names else []
            names = [n for n in names if n in table_names or n in private_names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vllm":
            allowed = PUBLIC_VLLM_IMPORTS.get(node.module, set())
            found += [f"import {node.module}.{a.name}" for a in node.names if a.name not in allowed]
            continue
        else:
            continue
        found += [n for n in names if n in table_names or n in private_names]
    return found


OWN_NAME = re.compile(r"^def (_[a-z]\w*)|self\.(_[a-z]\w*)\s*=", re.MULTILINE)
OWN_METHOD = re.compile(r"^\s+def (_[a-z]\w*)", re.MULTILINE)
TOUCHES_VLLM = re.compile(r"^\s*(from|import) (vllm|packcache_vllm\.engine\.(seam|compat))\b", re.M)


def own_private_names(path: Path) -> set[str]:
    """``_name``s a module defines for itself: module-level functions and its own attributes;
    methods too in a module that reaches no vLLM class (it cannot override one)."""
    text = path.read_text()
    names = {name for found in OWN_NAME.findall(text) for name in found if name}
    if not TOUCHES_VLLM.search(text):
        names |= set(OWN_METHOD.findall(text))
    return names


def test_no_module_outside_the_seam_names_a_vllm_internal():
    table_names = {symbol.name for symbol in PRIVATE_SYMBOLS if symbol.grep}
    private_names = vllm_private_names()
    ours = set().union(*map(own_private_names, modules_outside_the_seam()))
    offenders = {}
    for path in modules_outside_the_seam():
        found = named_internals(path, table_names, private_names - ours)
        if found:
            offenders[str(path.relative_to(ROOT))] = sorted(set(found))
    assert not offenders, (
        "vLLM internals named outside packcache_vllm/engine/seam/ (use or add a seam verb): "
        f"{offenders}"
    )


def test_the_rule_finds_an_internal(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "from vllm.v1.core.sched.output import SchedulerOutput\n"
        "class R:\n"
        "    def _prepare_inputs(self): return self.input_batch.token_ids_cpu\n"
    )
    found = named_internals(module, {"input_batch", "token_ids_cpu"}, {"_prepare_inputs"})
    assert sorted(found) == [
        "_prepare_inputs",
        "import vllm.v1.core.sched.output.SchedulerOutput",
        "input_batch",
        "token_ids_cpu",
    ]


# --- the version guard ------------------------------------------------------------------------


def test_the_installed_vllm_is_the_tested_one():
    assert version.installed_vllm() == version.TESTED_VLLM
    assert version.is_tested()


def test_a_policy_is_refused_on_an_untested_vllm(monkeypatch):
    from packcache_vllm import cli

    monkeypatch.delenv(version.ALLOW_UNTESTED_ENV, raising=False)
    monkeypatch.setattr(version, "installed_vllm", lambda: "0.33.1")
    with pytest.raises(ValueError) as error:
        cli.engine_overrides("packcache", device="cpu")
    message = str(error.value)
    assert "tested on vLLM 0.32.0, the installed vLLM is 0.33.1" in message
    assert version.ALLOW_UNTESTED_ENV in message
    assert cli.engine_overrides("none", device="cpu") == {}  # no policy: nothing to refuse
    monkeypatch.setenv(version.ALLOW_UNTESTED_ENV, "1")
    assert cli.engine_overrides("packcache", device="cpu")["scheduler_cls"]


def test_a_hand_named_scheduler_is_refused_on_an_untested_vllm(monkeypatch):
    """``scheduler_cls`` given without ``--kv-policy`` still meets the guard."""
    from packcache_vllm.engine.scheduler import scheduler_policy

    entry = {"packcache": {"policy": "packcache"}}
    monkeypatch.delenv(version.ALLOW_UNTESTED_ENV, raising=False)
    monkeypatch.setattr(version, "installed_vllm", lambda: "0.33.1")
    with pytest.raises(ValueError, match="PackCacheScheduler was tested on vLLM 0.32.0, the "):
        scheduler_policy(entry)
    monkeypatch.setenv(version.ALLOW_UNTESTED_ENV, "1")
    assert scheduler_policy(entry).window == 4


def test_untested_versions_are_told_apart():
    assert not version.is_tested("0.33.1", environ={})
    assert version.is_tested("0.33.1", environ={version.ALLOW_UNTESTED_ENV: "1"})
    assert not version.is_tested("0.33.1", environ={version.ALLOW_UNTESTED_ENV: "0"})
    assert version.is_tested(version.TESTED_VLLM, environ={})
