#!/usr/bin/env bash
# The main job: build a tiny random-weight Lumos-1 checkpoint, run it in vLLM with the plugin,
# generate a short video token stream for a few requests at once, and print what happened.
# Extra arguments go to `python -m packcache_vllm.demo` (see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
cd "$root"
exec .venv/bin/python -m packcache_vllm.demo "$@"
