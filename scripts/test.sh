#!/usr/bin/env bash
# Run the whole test suite (builds .venv first if needed). Extra arguments go to pytest.
#
# Without a test path among the arguments, each folder of tests/ runs in a pytest process of its
# own: the engine tests keep their in-process vLLM engines until their process ends (tearing one
# down breaks the distributed state the others share), so the Ray tests, which start a cluster
# of their own, must not run beside them in one process.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
cd "$root"
for arg in "$@"; do
  if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then
    exec .venv/bin/python -m pytest "$@"
  fi
done
status=0
ran=0
for folder in tests/unit tests/engine tests/ray; do
  echo "[test] $folder"
  rc=0
  .venv/bin/python -m pytest "$folder" "$@" || rc=$?
  case "$rc" in
    0) ran=1 ;;
    5) ;;  # no test of this folder was selected (-k, -m)
    *) status=1 ;;
  esac
done
if [[ "$status" == 0 && "$ran" == 0 ]]; then
  echo "[test] no test was selected" >&2
  status=5
fi
exit "$status"
