#!/usr/bin/env bash
# The main job: the committed tiny Lumos-1 (trained on synthetic motion) generates a few videos at
# once in vLLM with the plugin's PackCache policy; writes MP4 + GIF per video and prints the paths.
# Extra arguments go to `python -m packcache_vllm.demo` (see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
cd "$root"
exec .venv/bin/python -m packcache_vllm.demo "$@"
