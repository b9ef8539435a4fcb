#!/usr/bin/env bash
# Run the whole test suite (builds .venv first if needed). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
cd "$root"
exec .venv/bin/python -m pytest tests "$@"
