"""The seam's worker side: vLLM's V1 model runner with its private hooks turned into the plugin's
verbs, the runner's internal buffers, and the workers that build the plugin's runners.

``runner_seam`` decorates the plugin's runner mixin, the class right before vLLM's V1 runner class
(``CPUModelRunner`` or ``GPUModelRunner``) in the MRO: it gives the mixin ``RunnerSeam``'s verbs
and default hooks, and overrides vLLM's private methods on it to call the hooks (the overrides are
written here, so the mixin names none of them, and the MRO stays mixin, then vLLM's class):

- ``before_inputs(scheduler_output, num_scheduled_tokens)`` / ``after_inputs(scheduler_output)``
  around ``_prepare_inputs`` (vLLM gathers the step's token ids, positions, slots, lengths);
- ``before_bookkeeping()`` / ``after_bookkeeping(sampled_token_ids, hidden_states)`` around
  ``_bookkeeping_sync`` (vLLM records the sampled tokens);
- ``before_positions(request_id, sampling_params)`` / ``on_positions_failed(request_id, err)``
  around ``_init_mrope_positions`` (the model's position codes for a new request).

The verbs: ``batch_request_ids``, ``computed_tokens_of_row``, ``row_token_ids`` /
``write_row_token_ids``, ``discard_sampled_tokens``, ``emit_tokens`` (a committed frame),
``set_block_row``, ``make_physical`` (slots and attention lengths), ``sampling_params_of``,
``prompt_token_ids_of``, ``num_prompt_tokens_of``, ``layer_caches``, ``kv_write_path``,
``use_causal_rows``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import torch
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker

SAMPLED_TOKEN_IDS = 3  # _bookkeeping_sync's result: [3] is the rows' sampled token ids
V1_RUNNER_HINT = "set VLLM_USE_V2_MODEL_RUNNER=0 (PackCache hooks vLLM's V1 model runner)"


class RunnerSeam:
    """The verbs and default hooks ``runner_seam`` gives a runner mixin (copied onto it, so they
    use no zero-argument ``super``; a mixin's own hooks are the base ones: they call no super)."""

    def before_inputs(self, scheduler_output, num_scheduled_tokens: np.ndarray) -> None:
        """num_scheduled_tokens: [num_reqs] tokens per batch row, in vLLM's row order."""

    def after_inputs(self, scheduler_output) -> None:
        pass

    def before_bookkeeping(self) -> None:
        pass

    def after_bookkeeping(self, sampled_token_ids: list[list[int]], hidden_states) -> None:
        """sampled_token_ids: per batch row, what the step emits (writable);
        hidden_states: [N, D] of every scheduled token."""

    def before_positions(self, request_id: str, sampling_params) -> None:
        pass

    def on_positions_failed(self, request_id: str, err: Exception) -> None:
        raise err

    # --- this step's batch ------------------------------------------------------------------
    def batch_request_ids(self) -> list[str]:
        """The request of each batch row, in row order."""
        return self.input_batch.req_ids[: self.input_batch.num_reqs]

    def computed_tokens_of_row(self, row: int) -> int:
        return int(self.input_batch.num_computed_tokens_cpu[row])

    def row_token_ids(self, row: int, start: int, end: int) -> torch.Tensor:
        """[end - start] int64: the row's token ids at logical indices [start, end) (a copy)."""
        return torch.from_numpy(self.input_batch.token_ids_cpu[row, start:end].astype(np.int64))

    def write_row_token_ids(self, row: int, start: int, ids: torch.Tensor) -> None:
        """ids: [n] int64, the row's input ids at logical indices [start, start + n)."""
        self.input_batch.token_ids_cpu[row, start : start + ids.numel()] = ids.numpy()

    def discard_sampled_tokens(self) -> None:
        """vLLM's sampled token of every row of this step is not used."""
        self.discard_request_mask.np[: self.input_batch.num_reqs] = True

    def emit_tokens(
        self, row: int, request_id: str, ids: list[int], sampled_token_ids: list[list[int]]
    ) -> None:
        """Emit ``ids`` as the row's sampled tokens of this step, recorded as vLLM records its
        own (token_ids_cpu, num_tokens_no_spec, the request's output ids)."""
        batch = self.input_batch
        start = int(batch.num_tokens_no_spec[row])
        batch.token_ids_cpu[row, start : start + len(ids)] = ids
        batch.is_token_ids[row, start : start + len(ids)] = True
        batch.num_tokens_no_spec[row] = start + len(ids)
        self.requests[request_id].output_token_ids.extend(ids)
        sampled_token_ids[row] = ids

    def set_block_row(self, request_id: str, block_ids: list[int]) -> None:
        """The request's block list from now on (its state, and its batch row if it has one)."""
        self.requests[request_id].block_ids[0][:] = block_ids
        row = self.input_batch.req_id_to_index.get(request_id)
        if row is not None:
            self.input_batch.block_table.add_row((block_ids,), row)

    def make_physical(self, num_tokens: int, evicted_tokens: Mapping[str, int]) -> None:
        """Make this step's slot mapping and attention lengths physical: a request's tokens
        sit ``evicted_tokens[request_id]`` (default 0) slots before their logical index.
        Positions stay logical (the model's MM-RoPE reads them). num_tokens: the step's."""
        num_reqs = self.input_batch.num_reqs
        ids = self.batch_request_ids()
        evicted_cpu = torch.tensor([evicted_tokens.get(r, 0) for r in ids], dtype=torch.int64)
        if not evicted_cpu.any():
            return
        evicted = evicted_cpu.to(self.positions.device)  # [num_reqs]
        req_indices = self.req_indices.gpu[:num_tokens].to(torch.int64)  # [num_tokens]
        physical_positions = self.positions[:num_tokens] - evicted[req_indices]
        self.input_batch.block_table.compute_slot_mapping(
            num_reqs, self.query_start_loc.gpu[: num_reqs + 1], physical_positions
        )
        self.seq_lens[:num_reqs] -= evicted.to(self.seq_lens.dtype)
        self.optimistic_seq_lens_cpu[:num_reqs] -= evicted_cpu.to(
            self.optimistic_seq_lens_cpu.dtype
        )

    # --- requests and the KV cache ----------------------------------------------------------
    def sampling_params_of(self, request_id: str):
        return self.requests[request_id].sampling_params

    def prompt_token_ids_of(self, request_id: str) -> list[int]:
        return list(self.requests[request_id].prompt_token_ids)

    def num_prompt_tokens_of(self, request_id: str) -> int:
        return self.requests[request_id].num_prompt_tokens

    def layer_caches(self) -> list[torch.Tensor]:
        """Every attention layer's paged KV tensor, in layer order, addressed by the
        scheduler's block ids."""
        return self.kv_caches

    def kv_write_path(self, kv_cache_config) -> tuple[Callable, str]:
        """The first attention layer's KV write as the backend does it in the forward,
        ``write(key, value, kv_cache, slot_mapping)``, and the backend's name."""
        layer_name = kv_cache_config.kv_cache_groups[0].layer_names[0]
        layer = self.compilation_config.static_forward_context[layer_name]

        def write(key, value, kv_cache, slot_mapping) -> None:
            layer.impl.do_kv_cache_update(layer, key, value, kv_cache, slot_mapping)

        return write, type(layer.impl).__name__

    def use_causal_rows(self, causal_rows) -> None:
        wrap_attention_builders(self, causal_rows)


def runner_seam(mixin: type) -> type:
    """Class decorator for the mixin placed right before vLLM's V1 runner class: ``RunnerSeam``'s
    verbs and hooks (those the mixin does not define) and vLLM's private methods as hooks."""
    for name, value in vars(RunnerSeam).items():
        if callable(value) and not name.startswith("__") and name not in vars(mixin):
            setattr(mixin, name, value)

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens, *args, **kwargs):
        self.before_inputs(scheduler_output, num_scheduled_tokens)
        vllm_prepare = super(mixin, self)._prepare_inputs
        result = vllm_prepare(scheduler_output, num_scheduled_tokens, *args, **kwargs)
        self.after_inputs(scheduler_output)
        return result

    def _bookkeeping_sync(self, scheduler_output, sampler_output, logits, hidden_states, *args):
        self.before_bookkeeping()
        vllm_bookkeeping = super(mixin, self)._bookkeeping_sync
        result = vllm_bookkeeping(scheduler_output, sampler_output, logits, hidden_states, *args)
        self.after_bookkeeping(result[SAMPLED_TOKEN_IDS], hidden_states)
        return result

    def _init_mrope_positions(self, req_state) -> None:
        """vLLM's per-request M-RoPE set-up, guarded: on failure the request gets plain
        positions, so the batched forward runs, and ``on_positions_failed`` decides."""
        try:
            self.before_positions(req_state.req_id, req_state.sampling_params)
            super(mixin, self)._init_mrope_positions(req_state)
        except Exception as err:
            self.on_positions_failed(req_state.req_id, err)
            plain = torch.arange(len(req_state.prompt_token_ids or ()), dtype=torch.int64)
            req_state.mrope_positions = plain.expand(3, -1).clone()  # [3, L]
            req_state.mrope_position_delta = 0

    for override in (_prepare_inputs, _bookkeeping_sync, _init_mrope_positions):
        override.__qualname__ = f"{mixin.__qualname__}.{override.__name__}"
        setattr(mixin, override.__name__, override)
    return mixin


def wrap_attention_builders(runner, causal_rows) -> None:
    """Give each attention-metadata build a per-request causal flag: ``causal_rows(num_reqs)``
    returns None (vLLM's hard-coded ``causal=True``, gpu_model_runner.py
    ``_build_attention_metadata``) or an int32 tensor [num_reqs] (1: causal rows, 0: every
    query row sees the request's whole sequence). ``CommonAttentionMetadata.causal`` accepts a
    tensor (v1/attention/backend.py); CPU_ATTN's builder turns it into ``dynamic_causal``
    (v1/attention/backends/cpu_attn.py ``build``). Wraps every builder instance's ``build``."""
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


# --- workers ------------------------------------------------------------------------------------


def check_v1_runner(worker, device: str) -> None:
    if worker.use_v2_model_runner:
        raise ValueError(f"PackCache on {device} cannot run on vLLM's V2 model runner: "
                         f"{V1_RUNNER_HINT}")  # fmt: skip


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


class CPUWorkerSeam(CPUWorker):
    """vLLM's CPU worker building ``runner_class()`` (vLLM's V1 runner) instead of its own."""

    def runner_class(self) -> type:
        raise NotImplementedError

    def init_device(self) -> None:
        check_v1_runner(self, "CPU")
        with cpu_model_runner_class(self.runner_class()):
            super().init_device()


class GPUWorkerSeam(Worker):
    """vLLM's GPU worker building ``runner_class()`` (vLLM's V1 runner) instead of its own."""

    def runner_class(self) -> type:
        raise NotImplementedError

    def _make_model_runner(self):
        check_v1_runner(self, "CUDA")
        return self.runner_class()(self.vllm_config, self.device)
