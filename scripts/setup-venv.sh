#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install wdbound into it.
#
# torch is a range in pyproject.toml (torch>=2.4) so users keep their own CUDA
# builds. On this project's machines (x86_64, Python 3.11) a matching
# torch 2.14.1 + torchvision 0.29.1 pair lies on local disk; PyPI's torchvision
# does not import beside the local torch 2.13.0 CPU file, so we pin that pair
# first when it is installable and let pip resolve the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.wdbound-installed"

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && "$VENV/bin/python" -c "import wdbound, torch, torchvision" 2>/dev/null; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
start=$(date +%s)
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    if [ "$(uname -m)" = "x86_64" ] && $PIP install --quiet "torch==2.14.1" "torchvision==0.29.1" 2>/dev/null; then
        echo "setup-venv: installed the local torch 2.14.1 + torchvision 0.29.1 pair"
    else
        $PIP install --quiet "torch>=2.4" torchvision
    fi
fi
$PIP install --quiet -e ".[test]"
touch "$STAMP"
echo "setup-venv: environment ready in $VENV ($(( $(date +%s) - start )) s)"
