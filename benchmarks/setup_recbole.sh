#!/usr/bin/env bash
# Create the isolated RecBole 1.2.1 environment used by benchmarks/run_peers.py.
#
# RecBole 1.2.1 cannot share the project venv: it needs numpy<2, pandas<3, scipy<1.12 and
# setuptools<81 (see the shared reference peer_protocol.md §1). torch goes in FIRST, pinned to
# the local CPU build; an unpinned resolve pulls a multi-GB CUDA build.
#
# Idempotent: a stamp file records a finished install; rerunning is a no-op unless this script
# changed (the stamp stores the script's checksum).
#
# Usage: benchmarks/setup_recbole.sh [VENV_DIR]   (default: <repo>/.venv-recbole)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venv-recbole}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.recbole-installed"
SUM="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$SUM" ]]; then
    echo "recbole venv up to date: $VENV"
    exit 0
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
"${PIP[@]}" torch==2.13.0
# Install recbole together with the pins so the resolver never pulls numpy 2 / pandas 3 first.
"${PIP[@]}" recbole==1.2.1 "torch==2.13.0" "numpy<2" "pandas<3" "scipy<1.12" "setuptools<81"
"$VENV/bin/pip" check
"$VENV/bin/python" - <<'PY'
import numpy, pandas, scipy, torch, recbole
print(f"recbole {recbole.__version__}  torch {torch.__version__}  numpy {numpy.__version__}  "
      f"pandas {pandas.__version__}  scipy {scipy.__version__}")
assert recbole.__version__ == "1.2.1"
assert int(numpy.__version__.split(".")[0]) < 2
assert int(pandas.__version__.split(".")[0]) < 3
PY
echo "$SUM" > "$STAMP"
echo "recbole venv ready: $VENV"
