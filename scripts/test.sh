#!/usr/bin/env bash
# Run the whole test suite (builds .venv first if needed). Extra arguments go to pytest.
#
# Without a test path among the arguments, the suite runs in several pytest processes: the engine
# tests keep their in-process vLLM engines until their process ends (tearing one down breaks the
# distributed state the others share), ~0.3 GiB each, so tests/engine runs in ENGINE_GROUPS
# processes (its files dealt out in name order; one process held 20 GiB of a 24 GiB machine), and
# the Ray tests, which start a cluster of their own, run in a process of their own.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
cd "$root"
for arg in "$@"; do
  if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then
    exec .venv/bin/python -m pytest "$@"
  fi
done
ENGINE_GROUPS="${PACKCACHE_ENGINE_TEST_GROUPS:-4}"
status=0
ran=0

run_group() {  # label, then pytest's paths and options
  local label="$1" rc=0
  shift
  echo "[test] $label"
  .venv/bin/python -m pytest "$@" || rc=$?
  case "$rc" in
    0) ran=1 ;;
    5) ;;  # no test of this group was selected (-k, -m)
    *) status=1 ;;
  esac
}

mapfile -t engine_files < <(ls tests/engine/test_*.py | sort)
run_group tests/unit tests/unit "$@"
for ((group = 0; group < ENGINE_GROUPS; group++)); do
  files=()
  for ((i = group; i < ${#engine_files[@]}; i += ENGINE_GROUPS)); do
    files+=("${engine_files[i]}")
  done
  if ((${#files[@]})); then
    run_group "tests/engine ($((group + 1))/$ENGINE_GROUPS)" "${files[@]}" "$@"
  fi
done
run_group tests/ray tests/ray "$@"
if [[ "$status" == 0 && "$ran" == 0 ]]; then
  echo "[test] no test was selected" >&2
  status=5
fi
exit "$status"
