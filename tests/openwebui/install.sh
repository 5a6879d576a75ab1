#!/usr/bin/env bash
# Installs the real Open WebUI (PyPI open-webui, pinned) into .venv-openwebui at the repository root, for the opt-in
# Open WebUI tests. Open WebUI pins its own versions of fastapi, pydantic, transformers, ... so it gets its own venv.
# It depends on torch (sentence-transformers, accelerate); the CUDA build on PyPI pulls GBs of nvidia-* wheels, so a
# local CPU wheel in /opt/wheels is used where there is one, else uv takes torch's CPU build (--torch-backend cpu).
# Idempotent: a stamp file records a finished install of this version.
set -euo pipefail

VERSION="${OPENWEBUI_VERSION:-0.12.4}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${OPENWEBUI_VENV:-$ROOT/.venv-openwebui}"
STAMP="$VENV/.open-webui-$VERSION.installed"
WHEELS="${OPENWEBUI_TORCH_WHEELS:-/opt/wheels}"

if [[ -f "$STAMP" ]]; then
    echo "open-webui $VERSION already installed in $VENV"
    exit 0
fi

start=$(date +%s)
args=()
torch_wheel="$(ls "$WHEELS"/torch-*.whl 2>/dev/null | head -n1 || true)"
if [[ -n "$torch_wheel" ]]; then
    # torch-2.13.0+cpu-cp311-... -> torch==2.13.0+cpu: the constraint makes the resolver take exactly the local wheel.
    torch_version="$(basename "$torch_wheel" | cut -d- -f2)"
    constraints="$(mktemp)"
    trap 'rm -f "$constraints"' EXIT
    echo "torch==$torch_version" >"$constraints"
    args+=(--find-links "$WHEELS" --constraint "$constraints")
    echo "using $torch_wheel"
fi

if command -v uv >/dev/null 2>&1; then
    [[ -x "$VENV/bin/python" ]] || uv venv --python 3.11 "$VENV"
    [[ -n "$torch_wheel" ]] || args+=(--torch-backend cpu)
    uv pip install --python "$VENV/bin/python" "${args[@]}" "open-webui==$VERSION"
else
    [[ -x "$VENV/bin/python" ]] || python3.11 -m venv "$VENV"
    [[ -n "$torch_wheel" ]] || args+=(--extra-index-url https://download.pytorch.org/whl/cpu)
    "$VENV/bin/python" -m pip install --upgrade pip
    "$VENV/bin/python" -m pip install "${args[@]}" "open-webui==$VERSION"
fi

"$VENV/bin/python" -c "import torch; assert not torch.version.cuda, 'a CUDA torch was installed'"
touch "$STAMP"
echo "open-webui $VERSION installed in $VENV in $(($(date +%s) - start))s ($(du -sh "$VENV" | cut -f1))"
