#!/usr/bin/env bash
# One prepared run for the first machine with a CUDA GPU: the GPU tests (projector kernels
# against the numba ones; the shipped model's inference and data check against the CPU
# path), then the GPU benchmarks (projector 3D non-TOF and TOF, OSEM 2D and 3D mMR span 11,
# infer.py on a 2D and a 3D scan): at most 555 s, the sum of the steps' limits, under a
# 600 s device call. Run from the repository root:
#
#     bash bench/gpu_check.sh                 # uses `python` (override: PYTHON=...)
#     OUT=/some/folder bash bench/gpu_check.sh   # also keeps each step's log there
#
# Needs a Python environment with pet_dl's dependencies and Triton
# (`pip install -e '.[gpu]'`). Each step has its own time limit; a failed or timed-out
# step is reported and the script goes on, so one run gives every number it can. The
# exit status is the number of failed steps. Paste the logs into docs/performance.md.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT="${OUT:-}"
export OMP_WAIT_POLICY=PASSIVE
failed=0
start_all=$(date +%s)

step() {  # step NAME SECONDS COMMAND...
    local name="$1" limit="$2"
    shift 2
    echo "=== ${name} (limit ${limit} s): $*"
    local t0 rc
    t0=$(date +%s)
    if [ -n "${OUT}" ]; then
        mkdir -p "${OUT}"
        timeout "${limit}" "$@" 2>&1 | tee "${OUT}/${name}.log"
        rc=${PIPESTATUS[0]}
    else
        timeout "${limit}" "$@" 2>&1
        rc=$?
    fi
    echo "=== ${name}: exit ${rc}, $(( $(date +%s) - t0 )) s"
    if [ "${rc}" -ne 0 ]; then
        failed=$((failed + 1))
    fi
}

step environment 30 "${PY}" -c "
import torch, triton
assert torch.cuda.is_available(), 'no CUDA device visible to torch'
print('torch', torch.__version__, 'triton', triton.__version__, 'GPU', torch.cuda.get_device_name(0))
"
# CUDA against the numba kernels, adjointness, gradients, the factored sinogram path
step gpu-tests 90 "${PY}" -m pytest tests/test_projector_gpu.py -m gpu -q -p no:cacheprovider
# the shipped model on CUDA (float32 and bf16 autocast) against the CPU: a brain on its
# layout, NEMA on the native layout (grown grid), a 17-ring 3D scan (the CPU half: 1-2 min)
step inference-tests 150 "${PY}" -m pytest tests/test_inference_gpu.py -m gpu -q -p no:cacheprovider
# full mMR span-11 sinogram (72.6 M LORs), forward + back, all views
step projector-3d 45 "${PY}" bench/projector.py --device cuda --cases b --repeats 2
# Vision span 19 TOF (33 bins) beside the same LORs non-TOF: 38 of 380 views (the full
# TOF sinogram is 5.5 G values, 22 GB in float32), extrapolated
step projector-tof 45 "${PY}" bench/projector.py --device cuda --cases c --views 76 --repeats 2
# OSEM 21 subsets: 2D mMR and the full 3D mMR span 11 at the native grid, setup included
step recon 90 "${PY}" bench/recon.py --device cuda --iterations 1
# infer.py's path (network + data check) on a 2D scan and on the full 3D mMR span 11
step infer-2d 45 "${PY}" bench/infer.py --device cuda --repeats 2
step infer-3d 60 "${PY}" bench/infer.py --device cuda --3d --repeats 1

echo "=== all steps: $(( $(date +%s) - start_all )) s, ${failed} failed"
exit "${failed}"
