"""Every vLLM-version-specific touch point of the plugin, in one place (vLLM 0.32.0)."""

from __future__ import annotations

import argparse
import contextlib
import functools

SUPPORTED_VLLM = "0.32.0"


def register_model(architecture: str, class_path: str) -> None:
    """Register an out-of-tree model lazily, by "module:Class" string (documented API)."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(architecture, class_path)


def register_config_hook(architecture: str, hook: type) -> None:
    """Run ``hook.verify_and_update_model_config`` when vLLM builds a ModelConfig for the
    architecture. Uses vLLM's internal per-architecture map (model_executor/models/config.py)."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    MODELS_CONFIG_MAP[architecture] = hook


# --- scheduler side -------------------------------------------------------------------------

PLANS_ATTRIBUTE = "packcache_plans"


def attach_plans(scheduler_output, plans: dict) -> None:
    """SchedulerOutput is a plain dataclass pickled to the workers: an extra attribute travels."""
    setattr(scheduler_output, PLANS_ATTRIBUTE, plans)


def plans_of(scheduler_output) -> dict:
    return getattr(scheduler_output, PLANS_ATTRIBUTE, None) or {}


FAILURES_ATTRIBUTE = "packcache_failures"


def with_failures(model_runner_output, failures: dict[str, str]):
    """The worker's step output carrying ``failures`` (request id -> cause) to the scheduler.

    ModelRunnerOutput is a plain dataclass pickled back to the engine core (or handed over in one
    process); an extra attribute travels, on a copy (vLLM returns a shared empty output when
    nothing was scheduled)."""
    import copy

    from vllm.v1.outputs import ModelRunnerOutput

    if not isinstance(model_runner_output, ModelRunnerOutput):
        raise TypeError(
            f"PackCache reports request failures on a ModelRunnerOutput, the runner returned "
            f"{type(model_runner_output).__name__} (async scheduling must be off)"
        )
    output = copy.copy(model_runner_output)
    setattr(output, FAILURES_ATTRIBUTE, failures)
    return output


def failures_of(model_runner_output) -> dict[str, str]:
    return getattr(model_runner_output, FAILURES_ATTRIBUTE, None) or {}


def add_error_outputs(outputs: dict, requests) -> None:
    """Tell each finished ``requests``' client that it ended with an error: one
    ``EngineCoreOutput`` with its finish reason (vLLM's ``FinishReason.ERROR`` for
    ``RequestStatus.FINISHED_ERROR``; the OpenAI server answers it with HTTP 500), added to
    ``outputs`` (client index -> EngineCoreOutputs, what ``Scheduler.update_from_output``
    returns)."""
    from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs

    for request in requests:
        error = EngineCoreOutput(
            request_id=request.request_id,
            new_token_ids=[],
            finish_reason=request.get_finished_reason(),
            events=request.take_events(),
            trace_headers=request.trace_headers,
        )
        outputs.setdefault(request.client_index, EngineCoreOutputs(outputs=[])).outputs.append(
            error
        )


def leave_out_of_request_counts(stats, scheduler, is_hidden) -> None:
    """Subtract the requests for which ``is_hidden(request_id)`` from the request counts of
    ``stats`` (a ``SchedulerStats``, what ``vllm:num_requests_running`` / ``_waiting`` report), as
    vLLM's ``Scheduler.make_stats`` counts them: running; waiting (the waiting and KV-holding
    queues) less deferred; deferred (a subset of the waiting ones)."""
    waiting = [
        r for queue in (scheduler.waiting, scheduler.kv_holding_waiting) for r in queue
        if is_hidden(r.request_id)
    ]  # fmt: skip
    deferred = sum(r in scheduler.deferred_waiting for r in waiting)
    stats.num_running_reqs -= sum(is_hidden(r.request_id) for r in scheduler.running)
    stats.num_waiting_reqs -= len(waiting) - deferred
    stats.num_skipped_waiting_reqs -= deferred


def full_attention_manager(kv_cache_manager):
    """The single full-attention block manager of a one-group model (Lumos-1)."""
    managers = kv_cache_manager.coordinator.single_type_managers
    if len(managers) != 1:
        raise ValueError(
            f"PackCache supports models with one KV cache group, this one has {len(managers)}"
        )
    return managers[0]


def count_physical_tokens(manager, evicted_of, admission_blocks_of) -> None:
    """Make block allocation count physical tokens (logical - E) for every request, and make
    admission demand a request's whole bounded footprint.

    vLLM sizes a request's block list as cdiv(logical tokens, block_size); after compaction the
    request needs only cdiv(logical - E, block_size). Wraps the manager instance's two sizing
    methods (single_type_kv_cache_manager.py: get_num_blocks_to_allocate, allocate_new_blocks).
    ``get_num_blocks_to_allocate`` is only a check against the free pool, so for a request not
    yet holding blocks it reports ``admission_blocks_of(request_id)`` when larger: the request
    is admitted only when it, and every running request, can grow to its bound.
    """
    if getattr(manager, "_packcache_counts_physical", False):
        return
    get_num_blocks = manager.get_num_blocks_to_allocate
    allocate_new_blocks = manager.allocate_new_blocks

    def get_num_blocks_to_allocate(
        request_id,
        num_tokens,
        new_computed_blocks,
        total_computed_tokens,
        num_local_computed_tokens,
        num_tokens_main_model,
        *args,
        **kwargs,
    ):
        e = evicted_of(request_id)
        needed = get_num_blocks(
            request_id,
            num_tokens - e,
            new_computed_blocks,
            total_computed_tokens - e,
            num_local_computed_tokens - e if num_local_computed_tokens >= e else 0,
            num_tokens_main_model - e,
            *args,
            **kwargs,
        )
        if manager.req_to_blocks.get(request_id):
            return needed  # already admitted: its growth was reserved then
        return max(needed, admission_blocks_of(request_id))

    def allocate_physical_blocks(request_id, num_tokens, num_tokens_main_model):
        e = evicted_of(request_id)
        return allocate_new_blocks(request_id, num_tokens - e, num_tokens_main_model - e)

    manager.get_num_blocks_to_allocate = get_num_blocks_to_allocate
    manager.allocate_new_blocks = allocate_physical_blocks
    manager._packcache_counts_physical = True


# --- worker side ----------------------------------------------------------------------------


@contextlib.contextmanager
def cpu_model_runner_class(runner_cls):
    """CPUWorker.init_device builds ``CPUModelRunner`` inline (v1/worker/cpu_worker.py); swap the
    module global it reads for the duration of the call."""
    from vllm.v1.worker import cpu_worker

    original = cpu_worker.CPUModelRunner
    cpu_worker.CPUModelRunner = runner_cls
    try:
        yield
    finally:
        cpu_worker.CPUModelRunner = original


def wrap_attention_builders(runner, causal_rows) -> None:
    """Give each attention-metadata build a per-request causal flag: ``causal_rows(num_reqs)``
    returns None (vLLM's hard-coded ``causal=True``, gpu_model_runner.py
    ``_build_attention_metadata``) or an int32 tensor [num_reqs] (1: causal rows, 0: every
    query row sees the request's whole sequence). ``CommonAttentionMetadata.causal`` accepts a
    tensor (v1/attention/backend.py); CPU_ATTN's builder turns it into ``dynamic_causal``
    (v1/attention/backends/cpu_attn.py ``build``). Wraps every builder instance's ``build``."""
    import dataclasses

    for groups in runner.attn_groups:
        for group in groups:
            for builder in group.metadata_builders:
                build = builder.build

                def build_with_causal_rows(common_prefix_len, metadata, *args, _build=build, **kw):
                    causal = causal_rows(metadata.num_reqs)
                    if causal is not None:
                        metadata = dataclasses.replace(metadata, causal=causal)
                    return _build(common_prefix_len, metadata, *args, **kw)

                builder.build = build_with_causal_rows


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


def install_cli_hooks() -> None:
    """Add the PackCache flags to every parser built by ``EngineArgs.add_cli_args`` and carry
    them into the EngineArgs built by ``EngineArgs.from_cli_args``. Idempotent.

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

    if not getattr(EngineArgs.add_cli_args, CLI_HOOK_MARK, False):
        EngineArgs.add_cli_args = staticmethod(_with_packcache_arguments(EngineArgs.add_cli_args))
    if not getattr(EngineArgs.from_cli_args, CLI_HOOK_MARK, False):
        original = EngineArgs.from_cli_args.__func__
        EngineArgs.from_cli_args = classmethod(_with_packcache_overrides(original))


def _with_packcache_arguments(add_cli_args):
    @functools.wraps(add_cli_args)
    def add_cli_args_with_packcache(parser):
        parser = add_cli_args(parser)
        if not getattr(parser, CLI_HOOK_MARK, False):
            from packcache_vllm import cli

            cli.add_arguments(parser)
            _expand_after_parsing(parser)
            setattr(parser, CLI_HOOK_MARK, True)
        return parser

    setattr(add_cli_args_with_packcache, CLI_HOOK_MARK, True)
    return add_cli_args_with_packcache


def _expand_after_parsing(parser) -> None:
    """Validate the flags once parsed (``parser.error`` on a bad one: exit 2 with the message)
    and write the EngineArgs fields they expand to into the namespace. ``parse_args`` and the
    ``vllm`` top-level parser's subcommand action both go through ``parse_known_args``."""
    parse_known_args = parser.parse_known_args

    def parse_known_args_and_expand(args=None, namespace=None):
        from packcache_vllm import cli

        namespace, rest = parse_known_args(args, namespace)
        try:
            overrides = cli.overrides_from_namespace(namespace)
        except ValueError as err:
            parser.error(str(err))
        for field, value in overrides.items():
            setattr(namespace, field, value)
        if overrides:
            add_request_guard(namespace)
        return namespace, rest

    parser.parse_known_args = parse_known_args_and_expand


REQUEST_GUARD = "packcache_vllm.engine.http_guard.BooleanKnobGuard"


def add_request_guard(namespace) -> None:
    """Put ``http_guard.BooleanKnobGuard`` on vLLM's ``--middleware`` list (the OpenAI server's
    documented ASGI hook, launchers/cli_args.py; serve/middleware/register.py adds each entry
    with ``app.add_middleware``): the one place that sees a request's raw JSON, where
    ``vllm_xargs`` booleans are still booleans. A namespace without the field (not the OpenAI
    server's parser) is left alone."""
    middleware = getattr(namespace, "middleware", None)
    if middleware is not None and REQUEST_GUARD not in middleware:
        namespace.middleware = [*middleware, REQUEST_GUARD]


def _with_packcache_overrides(from_cli_args):
    @functools.wraps(from_cli_args)
    def from_cli_args_with_packcache(cls, args):
        from packcache_vllm import cli

        overrides = cli.overrides_from_namespace(args)
        if overrides:
            args = argparse.Namespace(**{**vars(args), **overrides})
            vllm_logger().info("packcache_vllm: %s", cli.describe_overrides(overrides))
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


def install_request_checks() -> None:
    """Check PackCache's per-request parts where vLLM turns a request into an engine request
    (v1/engine/input_processor.py ``InputProcessor.process_inputs``), before the engine sees it;
    vLLM's OpenAI server answers the resulting VLLMValidationError with HTTP 400. For other models
    than Lumos-1 a no-op; for Lumos-1 the policy's checks only when a policy is active."""
    from vllm.v1.engine.input_processor import InputProcessor

    if getattr(InputProcessor.process_inputs, REQUEST_CHECK_MARK, False):
        return
    process_inputs = InputProcessor.process_inputs

    @functools.wraps(process_inputs)
    def process_and_check_inputs(self, *args, **kwargs):
        from packcache_vllm.engine.requests import check_request

        request = process_inputs(self, *args, **kwargs)
        try:
            check_request(self.vllm_config, request.prompt_token_ids, request.sampling_params)
        except ValueError as err:
            raise request_error(err) from err
        return request

    setattr(process_and_check_inputs, REQUEST_CHECK_MARK, True)
    InputProcessor.process_inputs = process_and_check_inputs


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
        from packcache_vllm.engine.requests import engine_policy

        handler = getattr(self, "output_handler", None)
        shutdown(self, *args, **kwargs)
        if handler is None or engine_policy(self.vllm_config) is None:
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
