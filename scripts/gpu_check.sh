#!/usr/bin/env bash
# The GPU check, one command: on a CUDA machine with vllm==0.32.0 (and this package installed in
# the same Python), run both modes' oracle suites and the token-row ops on the CUDA workers, then a
# short benchmark, and print a summary. Nothing here runs in CI (no GPU there).
#
#   bash scripts/gpu_check.sh              # PYTHON=... to pick the interpreter (default .venv)
#
# Logs and the benchmark's table go to $GPU_CHECK_OUT (default artifacts/gpu_check/). Exit status:
# 0 when every step passed, 1 when one failed, 2 when the machine is not a CUDA vLLM 0.32.0 one.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-$root/.venv/bin/python}"
out="${GPU_CHECK_OUT:-$root/artifacts/gpu_check}"
mkdir -p "$out"

# The settings the CUDA workers need, and IEEE float32 in Triton's attention dots (Triton's
# default on NVIDIA is TF32, which the float32 oracles would see as a different model).
export VLLM_USE_V2_MODEL_RUNNER=0
export TRITON_F32_DEFAULT=ieee
export PACKCACHE_TEST_DEVICE=cuda
export VLLM_ENABLE_V1_MULTIPROCESSING=0

if ! "$py" - >"$out/preflight.txt" 2>&1 <<'EOF'
import torch
import vllm
from vllm.platforms import current_platform

problems = []
if vllm.__version__ != "0.32.0":
    problems.append(f"vllm {vllm.__version__} (needs 0.32.0)")
if not torch.cuda.is_available():
    problems.append(f"torch {torch.__version__} sees no CUDA device")
if not current_platform.is_cuda():
    problems.append(f"vLLM's platform is {current_platform.device_type!r}, not CUDA")
import packcache_vllm  # noqa: F401  (installed in this Python)
if problems:
    raise SystemExit("not a CUDA vLLM 0.32.0 machine: " + "; ".join(problems))
print(f"vllm {vllm.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}, "
      f"capability {'.'.join(map(str, torch.cuda.get_device_capability()))}")
EOF
then
    cat "$out/preflight.txt"
    exit 2
fi

names=()
results=()
run_step() {  # run_step NAME LOG COMMAND...: run, keep the log, remember the outcome
    local name="$1" log="$out/$2"
    shift 2
    local start=$SECONDS
    echo "== $name ($log)"
    "$@" >"$log" 2>&1
    local rc=$?
    local outcome="passed"
    [ "$rc" -ne 0 ] && outcome="FAILED (exit $rc)"
    local tally
    tally="$(grep -E '^(=+ )?[0-9]+ (passed|failed)|^=+ .*(passed|failed|error)' "$log" | tail -1)"
    names+=("$name")
    results+=("$outcome in $((SECONDS - start)) s${tally:+; pytest: ${tally//=/}}")
}

pytest=("$py" -m pytest -p no:cacheprovider -q)
run_step "token-row ops on the GPU" token_rows.log \
    "${pytest[@]}" tests/unit/test_token_rows.py
run_step "next-token oracle (PackCacheGPUWorker)" next_token_oracle.log \
    "${pytest[@]}" tests/engine/test_packcache_oracle.py
run_step "frame-parallel oracle (ARDFGPUWorker, TRITON_ATTN)" frame_parallel_oracle.log \
    "${pytest[@]}" tests/engine/test_ardf_oracle.py
run_step "CUDA worker wiring" cuda_wiring.log \
    "${pytest[@]}" tests/engine/test_cuda_variant.py tests/engine/test_ardf_cuda_worker.py
run_step "benchmark (13 frames, 4 videos, both modes)" benchmark.log \
    "$py" benchmarks/run.py --modes next-token frame-parallel --policies stock full packcache \
    --frames 13 --requests 4 --windows 4 --out "$out/bench"

echo
echo "GPU check summary ($(cat "$out/preflight.txt"))"
failed=0
for i in "${!names[@]}"; do
    printf '  %-52s %s\n' "${names[$i]}" "${results[$i]}"
    case "${results[$i]}" in FAILED*) failed=1 ;; esac
done
if [ -f "$out/bench/bench.md" ]; then
    echo
    echo "Benchmark table ($out/bench/bench.md; its attention share is wall time around the"
    echo "backend's forward, i.e. kernel launches on CUDA, not kernel time):"
    sed -n '1,40p' "$out/bench/bench.md"
fi
exit "$failed"
