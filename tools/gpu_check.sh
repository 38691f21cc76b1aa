#!/usr/bin/env bash
# The CUDA path on a real GPU in one run (issue 21), prepared on the CPU.
#
#   bash tools/gpu_check.sh --prepare   # here, once: MNIST as gzipped IDX files in .gpu/mnist (11 MB,
#                                       # written from nbnet's own dataset cache), and the wheels of pytest
#                                       # and of the build backend in .gpu/wheels; .gpu/ is git-ignored
#   bash tools/gpu_check.sh             # on the GPU machine, e.g. through the device tool with
#                                       # carry [".gpu"]; logs and JSON go to $OUT (default ./gpu-out)
#
# The GPU machine has no network: nbnet is installed from this tree without dependencies
# (its image has numpy, numba, numba-cuda, onnx, onnxruntime, click, threadpoolctl and
# PyTorch), or, when pip cannot build it there, run from the tree through PYTHONPATH.
# Parts, each bounded so the whole fits in about 6 minutes (override in seconds):
#   1. setup.log       the GPU, versions, the install, which device --device auto picks
#   2. cuda-tests.log  every CUDA test on the GPU (NBNET_TEST_GPU=1)          TESTS_S=170
#   3. train.log       the MNIST CNN, EPOCHS=10 epochs with --device cuda,     TRAIN_S=150
#                      then evaluated on the CPU
#   4. bench.json      tools/bench_gpu.py beside PyTorch at batch 128 and 1024  BENCH_S=120
#      bench.log       (per-batch progress, errors)
#   summary.txt        each part's exit status and seconds
# A dry run without a GPU: NUMBA_ENABLE_CUDASIM=1 TESTS_S=60 TRAIN_S=10 BENCH_S=10 bash tools/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    # pytest, its dependencies and the build backend are pure Python: these wheels install
    # on any Python there.
    python -m pip download --quiet --only-binary=:all: --no-deps -d .gpu/wheels pytest iniconfig pluggy packaging \
        setuptools wheel || exit 1
    exec python - <<'EOF'
from pathlib import Path

from nbnet.datasets import idx, mnist

(x, y), (x_test, y_test) = mnist.load_data(verbose=True)
folder = Path(".gpu/mnist")
folder.mkdir(parents=True, exist_ok=True)
for stem, array in zip(idx.STANDARD_FILES, (x, y, x_test, y_test)):
    idx.write_idx(folder / f"{stem}.gz", array, compress=True)
print(f"wrote {folder}: {sum(f.stat().st_size for f in folder.iterdir()) / 1e6:.1f} MB")
EOF
fi

OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
WORK=$(mktemp -d)
export NBNET_HOME=$WORK/home NBNET_DATA_DIR=$PWD/.gpu/mnist PYTHONUNBUFFERED=1
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

part() {  # part NAME LOG SECONDS COMMAND...: run with a time limit, record status and duration
    local name=$1 log=$2 limit=$3 started=$SECONDS status
    shift 3
    timeout "$limit" "$@" >>"$log" 2>&1
    status=$?
    echo "$name: exit $status in $((SECONDS - started)) s (limit $limit s)" | tee -a "$SUMMARY"
}

SETUP=$OUT/setup.log
{
    date
    nvidia-smi || echo "nvidia-smi: not found"
    python -c "import sys, numpy, numba; print(sys.version); print('numpy', numpy.__version__, 'numba', numba.__version__)"
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || echo "no torch"
    [ -d "$NBNET_DATA_DIR" ] || echo "MISSING $NBNET_DATA_DIR: run bash tools/gpu_check.sh --prepare here and carry .gpu"
} >"$SETUP" 2>&1
python -c "import pytest" 2>/dev/null || python -m pip install --no-index --find-links .gpu/wheels pytest >>"$SETUP" 2>&1
if python -m pip install --no-index --find-links .gpu/wheels --no-deps -e . >>"$SETUP" 2>&1 \
        && command -v nbnet >/dev/null; then
    NBNET=(nbnet)
else
    echo "pip install failed: running from the tree" >>"$SETUP"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    NBNET=(python -m nbnet.cli)
fi
python -c "from nbnet.devices import resolve; print('--device auto:', resolve('auto')[1])" >>"$SETUP" 2>&1
echo "setup: done in $SECONDS s" | tee -a "$SUMMARY"

part cuda-tests "$OUT/cuda-tests.log" "${TESTS_S:-170}" env NBNET_TEST_GPU=1 python -m pytest -q -p no:cacheprovider \
    -rs tests/test_cuda_kernels.py tests/test_cuda_training.py tests/test_model_gradient.py \
    tests/test_grouped_conv.py tests/test_layers_merging.py tests/test_onnx_ops_kernels.py
part train "$OUT/train.log" "${TRAIN_S:-150}" "${NBNET[@]}" train --device cuda --epochs "${EPOCHS:-10}" \
    --output "$WORK/gpu.nbnet"
part evaluate-on-cpu "$OUT/train.log" 60 "${NBNET[@]}" evaluate "$WORK/gpu.nbnet"
part bench "$OUT/bench.log" "${BENCH_S:-120}" sh -c "python tools/bench_gpu.py --batches 128,1024 >'$OUT/bench.json'"
echo "total: $SECONDS s" | tee -a "$SUMMARY"
rm -rf "$WORK"
