"""The seam's process-level patches: what the plugin changes in vLLM's API server, engine core and
worker processes when it registers (model and config hook, CLI flags, request checks, shutdown),
and the platform facts the CLI asks for. Each is listed in ``symbols.PRIVATE_SYMBOLS``."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass


def register_model(architecture: str, class_path: str) -> None:
    """Register an out-of-tree model lazily, by "module:Class" string (documented API)."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(architecture, class_path)


def register_config_hook(architecture: str, hook: type) -> None:
    """Run ``hook.verify_and_update_model_config`` when vLLM builds a ModelConfig for the
    architecture. Uses vLLM's internal per-architecture map (model_executor/models/config.py)."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    MODELS_CONFIG_MAP[architecture] = hook


# --- command line: `vllm serve --kv-policy ...` ---------------------------------------------

CLI_HOOK_MARK = "_packcache_cli_hook"


def current_device() -> str:
    """The device PackCache's worker runs on: "cpu", "cuda", or the platform's device type."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return "cpu"
    if current_platform.is_cuda():
        return "cuda"
    return str(current_platform.device_type)


def cpu_attention_block_size_need(block_size: int) -> str | None:
    """None when vLLM's CPU attention backend runs ``block_size``; else the block sizes it runs,
    in words ("a multiple of 32 (CPU_ATTN)"), from the backend's own list (``[MultipleOf(32)]``,
    v1/attention/backends/cpu_attn.py ``get_supported_kernel_block_sizes``)."""
    from vllm.v1.attention.backend import MultipleOf
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    sizes = CPUAttentionBackend.get_supported_kernel_block_sizes()
    if any(
        block_size % size.base == 0 if isinstance(size, MultipleOf) else block_size == size
        for size in sizes
    ):
        return None
    words = [f"a multiple of {s.base}" if isinstance(s, MultipleOf) else str(s) for s in sizes]
    return f"{' or '.join(words)} ({CPUAttentionBackend.get_name()})"


@dataclass(frozen=True)
class CliFlags:
    """What the CLI hook puts into vLLM's parser (``cli.vllm_flags()``; given by the plugin, so
    the engine never imports the CLI): the argument group, the EngineArgs fields a parsed
    namespace expands to (``{}`` without a policy; ValueError naming a bad flag), and the log
    line describing an expansion."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    overrides: Callable[[argparse.Namespace], dict]
    describe: Callable[[Mapping], str]


def install_cli_hooks(flags: CliFlags | None = None) -> None:
    """Add the PackCache flags to every parser built by ``EngineArgs.add_cli_args`` and carry
    them into the EngineArgs built by ``EngineArgs.from_cli_args``. Idempotent (``flags`` may be
    left out once the hooks are in).

    vLLM 0.32 loads general plugins inside ``AsyncEngineArgs.add_cli_args`` just before it calls
    ``EngineArgs.add_cli_args(parser)`` (engine/arg_utils.py:3202-3204), so ``vllm serve`` and
    ``python -m vllm.entrypoints.openai.api_server`` (both via launchers/cli_args.py
    ``make_arg_parser``) get the flags. ``from_cli_args`` (arg_utils.py:1933) copies only
    dataclass fields, so the flags are expanded into EngineArgs fields twice over: into the
    parsed namespace right after parsing (so a bad value fails at parse time, and a namespace
    handed to another process carries the fields), and again in ``from_cli_args`` (a namespace
    built some other way). Both expand to ``{}`` for ``--kv-policy none``.
    """
    from vllm.engine.arg_utils import EngineArgs

    hooked = (EngineArgs.add_cli_args, EngineArgs.from_cli_args)
    if all(getattr(method, CLI_HOOK_MARK, False) for method in hooked):
        return
    if flags is None:
        raise TypeError("install_cli_hooks needs the CLI's flags (cli.vllm_flags()) the first time")
    if not getattr(EngineArgs.add_cli_args, CLI_HOOK_MARK, False):
        add_cli_args = _with_packcache_arguments(EngineArgs.add_cli_args, flags)
        EngineArgs.add_cli_args = staticmethod(add_cli_args)
    if not getattr(EngineArgs.from_cli_args, CLI_HOOK_MARK, False):
        original = EngineArgs.from_cli_args.__func__
        EngineArgs.from_cli_args = classmethod(_with_packcache_overrides(original, flags))


def _with_packcache_arguments(add_cli_args, flags: CliFlags):
    @functools.wraps(add_cli_args)
    def add_cli_args_with_packcache(parser):
        parser = add_cli_args(parser)
        if not getattr(parser, CLI_HOOK_MARK, False):
            flags.add_arguments(parser)
            _expand_after_parsing(parser, flags)
            setattr(parser, CLI_HOOK_MARK, True)
        return parser

    setattr(add_cli_args_with_packcache, CLI_HOOK_MARK, True)
    return add_cli_args_with_packcache


def _expand_after_parsing(parser, flags: CliFlags) -> None:
    """Validate the flags once parsed (``parser.error`` on a bad one: exit 2 with the message)
    and write the EngineArgs fields they expand to into the namespace. ``parse_args`` and the
    ``vllm`` top-level parser's subcommand action both go through ``parse_known_args``."""
    parse_known_args = parser.parse_known_args

    def parse_known_args_and_expand(args=None, namespace=None):
        namespace, rest = parse_known_args(args, namespace)
        try:
            overrides = flags.overrides(namespace)
        except ValueError as err:
            parser.error(str(err))
        for field, value in overrides.items():
            setattr(namespace, field, value)
        if overrides:
            add_request_guard(namespace)
        return namespace, rest

    parser.parse_known_args = parse_known_args_and_expand


REQUEST_GUARD = "packcache_vllm.engine.http_guard.RequestGuard"


def add_request_guard(namespace) -> None:
    """Put ``http_guard.RequestGuard`` on vLLM's ``--middleware`` list (the OpenAI server's
    documented ASGI hook, launchers/cli_args.py; serve/middleware/register.py adds each entry
    with ``app.add_middleware``): the one place that sees a request's raw JSON, where
    ``vllm_xargs`` booleans are still booleans, and that can answer before vLLM starts a
    stream. A namespace without the field (not the OpenAI server's parser) is left alone."""
    middleware = getattr(namespace, "middleware", None)
    if middleware is not None and REQUEST_GUARD not in middleware:
        namespace.middleware = [*middleware, REQUEST_GUARD]


def _with_packcache_overrides(from_cli_args, flags: CliFlags):
    @functools.wraps(from_cli_args)
    def from_cli_args_with_packcache(cls, args):
        overrides = flags.overrides(args)
        if overrides:
            args = argparse.Namespace(**{**vars(args), **overrides})
            vllm_logger().info("packcache_vllm: %s", flags.describe(overrides))
        return from_cli_args(cls, args)

    setattr(from_cli_args_with_packcache, CLI_HOOK_MARK, True)
    return from_cli_args_with_packcache


def vllm_logger(name: str = "packcache_vllm"):
    """A logger under "vllm.", so vLLM's logging configuration (handler, VLLM_LOGGING_LEVEL)
    applies to the plugin's lines too."""
    from vllm.logger import init_logger

    return init_logger(f"vllm.{name}")


# --- request validation at the API boundary ---------------------------------------------------

REQUEST_CHECK_MARK = "_packcache_request_check"


def request_error(err: ValueError) -> Exception:
    """vLLM's OpenAI server answers VLLMValidationError with HTTP 400 (a bare ValueError from the
    input processor is a 500); the result is still a ValueError for offline callers."""
    from vllm.exceptions import VLLMValidationError

    class PackCacheRequestError(VLLMValidationError, ValueError):
        pass

    return PackCacheRequestError(str(err))


def install_request_checks(check_request: Callable[..., None]) -> None:
    """Run ``check_request(vllm_config, prompt_token_ids, sampling_params)`` (``engine.requests``,
    given by the plugin) where vLLM turns a request into an engine request
    (v1/engine/input_processor.py ``InputProcessor.process_inputs``), before the engine sees it;
    vLLM's OpenAI server answers the resulting VLLMValidationError with HTTP 400."""
    from vllm.v1.engine.input_processor import InputProcessor

    if getattr(InputProcessor.process_inputs, REQUEST_CHECK_MARK, False):
        return
    process_inputs = InputProcessor.process_inputs

    @functools.wraps(process_inputs)
    def process_and_check_inputs(self, *args, **kwargs):
        request = process_inputs(self, *args, **kwargs)
        try:
            check_request(self.vllm_config, request.prompt_token_ids, request.sampling_params)
        except ValueError as err:
            raise request_error(err) from err
        return request

    setattr(process_and_check_inputs, REQUEST_CHECK_MARK, True)
    InputProcessor.process_inputs = process_and_check_inputs


async def streamed_completion_refusal(scope, body: bytes) -> dict | None:
    """vLLM's error body (``ErrorResponse``) for a streamed ``/v1/completions`` request that the
    input processor refuses, the plugin's checks included (``install_request_checks``); None
    for any other request.

    vLLM 0.32 runs the input processor inside a streamed request's stream (HTTP 200, then an
    error event). Here, before the stream: the request becomes engine inputs and sampling
    params as ``OpenAIServingCompletion._create_completion`` makes them, and each goes through
    ``InputProcessor.process_inputs``, whose result is dropped (the engine sees nothing); a
    refusal gives the body and status a plain request gets. None as well where vLLM refuses the
    request in those first steps (or serves no completions): vLLM then answers it itself, as
    before, since those steps run before it starts a stream."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    from vllm.exceptions import VLLMClientError

    prepared = await streamed_completion_inputs(scope, body)
    if prepared is None:
        return None
    engine_client, inputs = prepared
    supported_tasks = await engine_client.get_supported_tasks()
    for index, (engine_input, sampling_params) in enumerate(inputs):
        try:
            engine_client.input_processor.process_inputs(
                f"packcache-door-{index}", engine_input, sampling_params, supported_tasks
            )
        except (VLLMClientError, ValueError, TypeError, OverflowError) as err:  # vLLM's 4xx
            return create_error_response(err).model_dump()
    return None


async def streamed_completion_inputs(scope, body: bytes):
    """(engine client, [(engine input, SamplingParams)]) of a streamed ``/v1/completions``
    body, made by vLLM's own steps: the route's media-type check, the model check and the
    server's renderer and tokenizer (``render_completion_request``), ``get_max_tokens``,
    ``to_sampling_params``. None for a request that is not streamed, or that vLLM refuses in
    these steps."""
    import json

    from fastapi.exceptions import RequestValidationError
    from starlette.requests import Request
    from vllm.entrypoints.openai.completion.api_router import completion
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse
    from vllm.entrypoints.serve.utils.api_utils import validate_json_request
    from vllm.exceptions import VLLMError

    raw_request = Request(scope)
    handler = completion(raw_request)
    if handler is None:
        return None
    try:
        await validate_json_request(raw_request)
        request = CompletionRequest.model_validate(json.loads(body))
        if not request.stream or request.use_beam_search:
            return None
        engine_inputs = await handler.render_completion_request(request)
        if isinstance(engine_inputs, ErrorResponse):
            return None
        inputs = [(i, completion_params(handler, request, i)) for i in engine_inputs]
    except (RequestValidationError, VLLMError, ValueError, TypeError, OverflowError):
        return None  # vLLM refuses it again, itself, before any stream
    return handler.engine_client, inputs


def completion_params(handler, request, engine_input):
    """The SamplingParams vLLM gives one prompt of a completion request (max_tokens as
    ``OpenAIServingCompletion._create_completion`` works it out)."""
    from vllm.entrypoints.serve.utils.api_utils import get_max_tokens
    from vllm.renderers.inputs.preprocess import extract_prompt_len

    model_config = handler.engine_client.vllm_config.model_config
    max_tokens = get_max_tokens(
        model_config.max_model_len,
        request.max_tokens,
        extract_prompt_len(model_config, engine_input),
        handler.default_sampling_params,
        handler.override_max_tokens,
        truncate_prompt_tokens=request.truncate_prompt_tokens,
    )
    return request.to_sampling_params(max_tokens, handler.default_sampling_params)


# --- shutdown: every in-flight request gets a terminal response -----------------------------

SHUTDOWN_ABORT_MARK = "_packcache_shutdown_aborts"


def install_shutdown_aborts() -> None:
    """On shutdown, finish every request still in flight in the API server as aborted, so each
    client gets a terminal response (``finish_reason: "abort"``, then ``[DONE]`` when streamed).

    vLLM 0.32's default ``--shutdown-timeout 0`` sends the engine core SIGTERM and SIGKILL at
    once (v1/utils.py ``shutdown``), then cancels the API server's output handler. The engine's
    own abort outputs reach the clients only if it gets to them in between: with synchronous
    scheduling (the plugin's) it is inside a step and never does, and the requests' generators
    wait forever while uvicorn waits for their connections. Wraps ``AsyncLLM.shutdown``; after
    vLLM's own shutdown, ``OutputProcessor.abort_requests`` (what ``AsyncLLM.abort`` uses) runs
    on the output handler's event loop for whatever is still unfinished. A no-op without a
    policy."""
    from vllm.v1.engine.async_llm import AsyncLLM

    if getattr(AsyncLLM.shutdown, SHUTDOWN_ABORT_MARK, False):
        return
    shutdown = AsyncLLM.shutdown

    @functools.wraps(shutdown)
    def shutdown_and_abort_in_flight(self, *args, **kwargs):
        from packcache_vllm.settings import Settings

        handler = getattr(self, "output_handler", None)
        shutdown(self, *args, **kwargs)
        if handler is None or not Settings.of(self.vllm_config).active:
            return
        from vllm.utils.async_utils import run_in_loop

        run_in_loop(handler.get_loop(), abort_in_flight, self.output_processor)

    setattr(shutdown_and_abort_in_flight, SHUTDOWN_ABORT_MARK, True)
    AsyncLLM.shutdown = shutdown_and_abort_in_flight


def abort_in_flight(output_processor) -> None:
    """Finish every unfinished request of an ``OutputProcessor`` with ``FinishReason.ABORT``."""
    in_flight = list(output_processor.request_states)
    if in_flight:
        vllm_logger().info("[shutdown] packcache: %d in-flight request(s) aborted", len(in_flight))
        output_processor.abort_requests(in_flight, internal=True)
