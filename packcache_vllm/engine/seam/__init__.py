"""The engine's one seam to vLLM: the only modules of the package that name vLLM's V1 internals
(private methods, runner buffers, KV manager internals, patched functions).

- ``symbols.py``: the table of every private symbol used, with why / how / remove-when, checked
  against the installed vLLM by ``tests/engine/test_vllm_seam.py``; ``patches/README.md`` is
  generated from it;
- ``version.py``: the vLLM version the seam was tested on, and the guard that keeps a policy off
  any other;
- ``process.py``: the patches applied when the plugin registers (model, config hook, CLI flags,
  request checks, shutdown);
- ``scheduling.py``: ``SchedulerSeam`` (vLLM's scheduler, its private hooks as plain ones) and
  what travels on the scheduler's and worker's outputs;
- ``running.py``: ``runner_seam`` (vLLM's V1 runner, likewise, for the plugin's runner mixin)
  and the workers building it.

Importing this package imports nothing from vLLM; its modules do.
"""
