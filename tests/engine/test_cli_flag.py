"""`--kv-policy` and the `--packcache-*` knobs on vLLM's real `vllm serve` parser.

In-process tests build the parser the way `vllm serve` does (launchers/cli_args.py
make_arg_parser). Three subprocesses, started together when this module starts (each pays vLLM's
~8 s import) and collected by the tests that need them: the real `vllm serve` console script with
a bad knob and with a bad block size, and the stock parser with the plugin switched off.

Run as a script (``python test_cli_flag.py '[["x"], ...]'``) it prints the parsed namespace and
AsyncEngineArgs of each argv as JSON: the stock baseline, with the plugin switched off.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
SCHEDULER = "packcache_vllm.engine.scheduler.PackCacheScheduler"
SUBPROCESS_TIMEOUT_S = 120
# Command lines compared between stock vLLM and vLLM with the plugin and no policy.
STOCK_ARGVS = [
    ["x"],
    [
        "x",
        "--enable-prefix-caching",
        "--worker-cls",
        "my.Worker",
        "--additional-config",
        '{"other": {"a": 1}}',
        "--max-model-len",
        "4096",
    ],
]


def parsed_snapshot(argvs: list[list[str]]) -> dict[str, dict[str, dict[str, str]]]:
    """repr() of every namespace attribute and AsyncEngineArgs field, per argv."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    snapshot = {}
    for argv in argvs:
        namespace = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
        engine_args = AsyncEngineArgs.from_cli_args(namespace)
        snapshot[" ".join(argv)] = {
            "namespace": {key: repr(value) for key, value in vars(namespace).items()},
            "engine_args": {
                field.name: repr(getattr(engine_args, field.name))
                for field in dataclasses.fields(engine_args)
            },
        }
    return snapshot


class Launched:
    """A subprocess started now, its result collected once when first asked for."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None):
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
        self.completed: tuple[int, str, str] | None = None

    def result(self) -> tuple[int, str, str]:
        if self.completed is None:
            out, err = self.process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
            self.completed = (self.process.returncode, out, err)
        return self.completed


def env_without_packcache_plugin() -> dict[str, str]:
    others = [
        point.name
        for point in importlib.metadata.entry_points(group="vllm.general_plugins")
        if point.name != "packcache"
    ]
    return {**os.environ, "VLLM_PLUGINS": ",".join(others)}


@pytest.fixture(scope="module", autouse=True)
def launched():
    runs = {
        "bad_window": Launched(
            [str(VENV_BIN / "vllm"), "serve", "x", "--kv-policy", "packcache"]
            + ["--packcache-window", "0"]
        ),
        "bad_block_size": Launched(
            [str(VENV_BIN / "vllm"), "serve", "x", "--kv-policy", "packcache"]
            + ["--block-size", "48"]
        ),
        "stock": Launched(
            [sys.executable, __file__, json.dumps(STOCK_ARGVS)], env=env_without_packcache_plugin()
        ),
    }
    yield runs
    for run in runs.values():
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


@pytest.fixture(scope="module")
def make_parser():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from packcache_vllm import plugin

    plugin.register()
    return lambda: make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))


@pytest.fixture(scope="module")
def worker_cls():
    from packcache_vllm import cli
    from packcache_vllm.engine import compat

    return cli.WORKER_CLS_BY_DEVICE[compat.current_device()]


# --- in process -----------------------------------------------------------------------------


def test_policy_flags_reach_engine_args(make_parser, worker_cls):
    from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs

    namespace = make_parser().parse_args(
        ["x", "--kv-policy", "packcache", "--packcache-window", "2"]
    )
    for engine_args_cls in (AsyncEngineArgs, EngineArgs):
        engine_args = engine_args_cls.from_cli_args(namespace)
        assert engine_args.scheduler_cls == SCHEDULER
        assert engine_args.worker_cls == worker_cls
        assert engine_args.enable_prefix_caching is False
        assert engine_args.additional_config == {
            "packcache": {
                "policy": "packcache",
                "window": 2,
                "decay": 0.5,
                "min_keep": 1.0,
                "selector": "uniform",
            }
        }


def test_offline_overrides_are_engine_args_keywords(make_parser, worker_cls):
    """`LLM(model, **engine_overrides(...))` passes them to EngineArgs (classes stay strings)."""
    from vllm.engine.arg_utils import EngineArgs

    from packcache_vllm.cli import engine_overrides

    engine_args = EngineArgs(model="x", **engine_overrides("packcache", window=2))
    assert (engine_args.scheduler_cls, engine_args.worker_cls) == (SCHEDULER, worker_cls)
    assert engine_args.enable_prefix_caching is False
    assert engine_args.additional_config["packcache"]["window"] == 2


def test_user_additional_config_is_kept(make_parser):
    from vllm.engine.arg_utils import AsyncEngineArgs

    argv = ["x", "--kv-policy", "full", "--additional-config", '{"other": 1}']
    engine_args = AsyncEngineArgs.from_cli_args(make_parser().parse_args(argv))
    assert engine_args.additional_config["other"] == 1
    assert engine_args.additional_config["packcache"]["policy"] == "full"


def test_from_cli_args_expands_a_namespace_built_elsewhere(make_parser, worker_cls):
    """A namespace that never went through our parse hook still gets expanded, with one INFO
    line on vLLM's logger."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    namespace = make_parser().parse_args(["x"])
    namespace.kv_policy, namespace.packcache_window = "sliding", 3
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("vllm.packcache_vllm")
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        engine_args = AsyncEngineArgs.from_cli_args(namespace)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    assert (engine_args.scheduler_cls, engine_args.worker_cls) == (SCHEDULER, worker_cls)
    assert engine_args.additional_config["packcache"]["window"] == 3
    assert namespace.scheduler_cls is None  # the caller's namespace is left alone
    assert [record.levelno for record in records] == [logging.INFO]
    assert "--kv-policy sliding -> scheduler_cls=" in records[0].getMessage()


def test_none_and_no_flag_build_identical_engine_args(make_parser):
    from vllm.engine.arg_utils import AsyncEngineArgs

    without_flag = make_parser().parse_args(["x"])
    with_none = make_parser().parse_args(["x", "--kv-policy", "none"])
    assert vars(without_flag) == vars(with_none) and with_none.kv_policy == "none"
    assert not any(key.startswith("packcache_") for key in vars(with_none))
    stock = AsyncEngineArgs.from_cli_args(without_flag)
    assert (stock.scheduler_cls, stock.worker_cls, stock.additional_config) == (None, "auto", {})
    assert vars(AsyncEngineArgs.from_cli_args(with_none)) == vars(stock)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--kv-policy", "packcache", "--packcache-window", "0"],
            "argument --packcache-window: must be an integer >= 1 (frames), got 0",
        ),
        (
            ["--kv-policy", "packcache", "--packcache-decay", "0"],
            "argument --packcache-decay: must be a number in (0, 1], got 0",
        ),
        (
            ["--kv-policy", "sliding", "--packcache-min-keep", "1.5"],
            "argument --packcache-min-keep: must be a number in [0, 1], got 1.5",
        ),
        (
            ["--kv-policy", "packcache", "--packcache-selector", "lru"],
            "argument --packcache-selector: invalid choice: 'lru'",
        ),
        (["--kv-policy", "lru"], "argument --kv-policy: invalid choice: 'lru'"),
        (
            ["--packcache-window", "2"],
            "error: --packcache-window needs --kv-policy full|sliding|packcache",
        ),
        (
            ["--kv-policy", "none", "--packcache-selector", "key_norm"],
            "error: --packcache-selector needs --kv-policy full|sliding|packcache",
        ),
        (
            ["--kv-policy", "packcache", "--enable-prefix-caching"],
            "needs prefix caching off (packed blocks are rewritten), but "
            "enable_prefix_caching=True (--enable-prefix-caching) was given",
        ),
        (
            ["--kv-policy", "packcache", "--speculative-config", '{"method": "ngram"}'],
            "does not support speculative decoding",
        ),
        (
            ["--kv-policy", "packcache", "--block-size", "48"],
            "error: --block-size 48 (block_size): vLLM's CPU attention backend needs a multiple "
            "of 32 (CPU_ATTN)",
        ),
    ],
)
def test_bad_flags_fail_at_parse_time(make_parser, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        make_parser().parse_args(["x", *argv])
    assert exit_.value.code == 2
    assert message in " ".join(capsys.readouterr().err.split())


def test_a_policy_puts_the_request_guard_on_the_servers_middleware(make_parser):
    """``--kv-policy`` adds the ASGI guard that refuses JSON booleans for knobs (once, after the
    user's own middleware); the block sizes CPU_ATTN runs parse; no policy adds nothing."""
    from packcache_vllm.engine import compat

    argv = ["x", "--kv-policy", "packcache", "--block-size", "64", "--middleware", "my.Guard"]
    namespace = make_parser().parse_args(argv)
    assert namespace.middleware == ["my.Guard", compat.REQUEST_GUARD]
    compat.add_request_guard(namespace)
    assert namespace.middleware == ["my.Guard", compat.REQUEST_GUARD]
    assert make_parser().parse_args(["x", "--block-size", "48"]).middleware == []


def test_hooks_are_installed_once(make_parser):
    from vllm.engine.arg_utils import EngineArgs

    from packcache_vllm import plugin
    from packcache_vllm.engine import compat

    plugin.register()
    compat.install_cli_hooks()
    compat.install_cli_hooks()
    for hooked in (EngineArgs.add_cli_args, EngineArgs.from_cli_args.__func__):
        assert getattr(hooked, compat.CLI_HOOK_MARK)
        assert not hasattr(hooked.__wrapped__, compat.CLI_HOOK_MARK)
    parser = make_parser()
    assert sum("--kv-policy" in action.option_strings for action in parser._actions) == 1


# --- real command lines ---------------------------------------------------------------------


@pytest.fixture
def help_text(make_parser, capsys, monkeypatch):
    """What `vllm serve <args>` prints for a --help; the search keyword --help=GROUP sets is a
    class attribute, restored afterwards."""
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    monkeypatch.setattr(FlexibleArgumentParser, "_search_keyword", None)

    def help_text(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_:
            make_parser().parse_args(list(args))
        assert exit_.value.code == 0
        return " ".join(capsys.readouterr().out.split())

    return help_text


def test_serve_help_lists_the_packcache_group(help_text):
    assert "PackCache packcache_vllm: a bounded, frame-aware KV cache" in help_text("--help")


def test_serve_help_for_the_group_explains_each_knob(help_text):
    text = help_text("--help=PackCache")
    assert text.startswith("PackCache: packcache_vllm: a bounded, frame-aware KV cache")
    from packcache_vllm.settings import POLICIES  # every policy of the core's registry

    assert "--kv-policy {none,full,sliding,packcache," in text
    assert f"--kv-policy {{{','.join(POLICIES)}}}" in text
    for fragment in ("--packcache-window W", "an integer >= 1", "0 < rho <= 1", "0 <= b <= 1"):
        assert fragment in text
    assert "--packcache-selector {key_norm,uniform}" in text


def test_deprecated_api_server_entrypoint_parses_the_same_flags(make_parser, capsys, monkeypatch):
    """`python -m vllm.entrypoints.openai.api_server` runs launchers/api_server/entry.py main()."""
    from vllm.entrypoints.launchers.api_server import entry

    # main() sets VLLM_WORKER_MULTIPROC_METHOD when unset; keep it from leaking out.
    monkeypatch.setenv(
        "VLLM_WORKER_MULTIPROC_METHOD", os.environ.get("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    )
    argv = ["api_server.py", "x", "--kv-policy", "sliding", "--packcache-decay", "1.5"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        entry.main()
    assert exit_.value.code == 2
    assert "error: argument --packcache-decay: must be a number in (0, 1], got 1.5" in (
        capsys.readouterr().err
    )


def test_serve_rejects_a_bad_knob_before_loading_anything(launched):
    returncode, _, err = launched["bad_window"].result()
    assert returncode == 2
    assert (
        "vllm serve: error: argument --packcache-window: must be an integer >= 1 (frames), got 0"
        in err
    )
    assert "Traceback" not in err


def test_serve_rejects_a_block_size_the_cpu_backend_cannot_run(launched):
    returncode, _, err = launched["bad_block_size"].result()
    assert returncode == 2
    assert (
        "vllm serve: error: --block-size 48 (block_size): vLLM's CPU attention backend needs a "
        "multiple of 32 (CPU_ATTN)" in " ".join(err.split())
    )
    assert "Traceback" not in err


def test_no_policy_matches_vllm_without_the_plugin(launched, make_parser):
    returncode, out, err = launched["stock"].result()
    assert returncode == 0, err[-2000:]
    stock = json.loads(out.strip().splitlines()[-1])
    assert all("kv_policy" not in run["namespace"] for run in stock.values()), "plugin was on"
    ours = parsed_snapshot(STOCK_ARGVS)
    with_none = parsed_snapshot([[*argv, "--kv-policy", "none"] for argv in STOCK_ARGVS])
    for argv in STOCK_ARGVS:
        key = " ".join(argv)
        for run in (ours[key], with_none[f"{key} --kv-policy none"]):
            assert run["namespace"].pop("kv_policy") == repr("none")
            assert run == stock[key]


if __name__ == "__main__":
    print(json.dumps(parsed_snapshot(json.loads(sys.argv[1]))))
