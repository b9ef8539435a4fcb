#!/usr/bin/env bash
# The main job: the committed tiny Lumos-1 (trained on synthetic motion) generates a few videos at
# once in vLLM with the plugin's PackCache policy, asked for through `vllm serve`'s /v1/videos with
# the official openai client; writes an MP4, a thumbnail and a spritesheet per video.
# Extra arguments go to `python -m packcache_vllm.demo` (see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
cd "$root"
exec .venv/bin/python -m packcache_vllm.demo "$@"
