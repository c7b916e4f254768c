#!/usr/bin/env bash
# Build the TorchServe archive of a pet_dl model: model_store/<name>.mar
#
#   scripts/build_mar.sh [CHECKPOINT] [MODEL_STORE] [NAME]
#
# CHECKPOINT  a pet_dl .safetensors checkpoint (default: the shipped 2D model)
# MODEL_STORE output folder (default: model_store)
# NAME        model name in the URL /predictions/<NAME> (default: pet_dl)
#
# Needs the serve extra (torch-model-archiver). pet_dl itself must be installed in the
# environment that runs torchserve: the archive holds only the handler and the weights.
set -euo pipefail
cd "$(dirname "$0")/.."
# Prefer the project's virtual environment when there is one (as the Makefile does).
if [ -x "${VENV:-.venv}/bin/python" ]; then
    PATH="$PWD/${VENV:-.venv}/bin:$PATH"
fi
PYTHON="${PYTHON:-python}"
CHECKPOINT="${1:-pet_dl/assets/pet_dl_2d.safetensors}"
STORE="${2:-model_store}"
NAME="${3:-pet_dl}"
if [ ! -f "$CHECKPOINT" ]; then
    echo "error: checkpoint $CHECKPOINT not found" >&2
    exit 2
fi
if ! command -v torch-model-archiver >/dev/null; then
    echo "error: torch-model-archiver not found; pip install 'pet_dl[serve]'" >&2
    exit 2
fi
# Load the checkpoint (as the server's handler will) before packing it: a file that does
# not load is refused here, not by a worker that would restart forever.
if ! "$PYTHON" - "$CHECKPOINT" <<'PY'
import sys

try:
    from pet_dl.io.checkpoint import load_checkpoint
    from pet_dl.models import build_model

    load_checkpoint(sys.argv[1], map_location="cpu", builder=build_model)
except Exception as exc:  # any failure: one line, exit 2
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"error: checkpoint {sys.argv[1]} does not load: {message}", file=sys.stderr)
    sys.exit(2)
PY
then
    exit 2
fi
VERSION="$("$PYTHON" -c 'import pet_dl; print(pet_dl.__version__)' 2>/dev/null || echo 0.0.0)"
mkdir -p "$STORE"
torch-model-archiver \
    --model-name "$NAME" \
    --version "$VERSION" \
    --serialized-file "$CHECKPOINT" \
    --handler pet_dl/serving/handler.py \
    --export-path "$STORE" \
    --force
echo "wrote $STORE/$NAME.mar"
