#!/usr/bin/env bash
# The prepared device check of issue 17: on a machine with one CUDA GPU, from the repository
# root,
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# 1. checks there is a GPU (nvidia-smi) and stops at once, exit 2, where there is none;
# 2. makes sure CuPy, numba-cuda and tinyllm's own needs import: what is installed is used;
#    what is missing is installed from the package registries (the `gpu` and `test`
#    extras), or from wheels in .whl/ where the machine reaches no registry;
# 3. runs the GPU tests without the simulator: tests/test_kernels_cuda.py (the cuda kernels
#    against the references at the device's 64-wide tiles, CuPy in/out, PTX for sm_90) and
#    the kernel contract suite for the cuda implementation (tests/test_kernel_contract.py,
#    which lists cuda on a real GPU), and the device model with CuPy arrays
#    (tests/test_device.py: Tensors, ops, modules, optimisers and the Trainer on "cuda");
# 4. runs benchmarks/gpu_bench.py: the HBM and GEMM ceilings, each kernel against torch on
#    the same GPU, the softmax and flash-attention targets;
# 5. trains the issue's GPT (6 layers, 384 wide, block 256, batch 64) for 15 steps with
#    `tinyllm train --device cuda`: the whole model, its optimiser states and each step on
#    the GPU; the validation lines give ms/step per 5 steps (the first 5 include the
#    kernels' JIT compile), to set beside the same run on the 2-core CPU.
#
# Everything lands in $OUT (gpu_check.log, nvidia_smi.txt, pytest_*.log, gpu_bench.json,
# gpu_bench.md, train_cuda.log); each step has its own time limit so that the whole run stays
# under 8 minutes. Exit 0 when every step passed, 1 when one failed, 2 when there is no GPU.
set -uo pipefail

OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG="$OUT/gpu_check.log"
: >"$LOG"
log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
status=0
step() {   # step NAME SECONDS LOGFILE COMMAND...: run with a time limit, log the outcome
    local name=$1 secs=$2 file=$3
    shift 3
    log "$name: start (limit ${secs}s)"
    local t0=$SECONDS
    timeout "$secs" "$@" >"$OUT/$file" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$file" | sed 's/^/    /' | tee -a "$LOG" >/dev/null
    log "$name: rc=$rc in $((SECONDS - t0))s ($file)"
    [ $rc -eq 0 ] || status=1
}

# 1. a GPU, or stop
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >"$OUT/nvidia_smi.txt" 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or failing): run this on a GPU" \
         "machine" | tee -a "$LOG" >&2
    exit 2
fi
log "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"

# 2. packages
need='import numpy, scipy, numba, safetensors, tqdm, threadpoolctl, matplotlib, pytest, hypothesis, cupy
from numba import cuda
assert cuda.is_available(), "numba.cuda sees no GPU"'
if ! NUMBA_ENABLE_CUDASIM=0 "$PY" -c "$need" >>"$LOG" 2>&1; then
    log "packages missing: installing the gpu and test extras"
    if [ -d .whl ]; then
        "$PY" -m pip install -q --no-index --find-links .whl -e ".[gpu,test]" >>"$LOG" 2>&1
    else
        "$PY" -m pip install -q -e ".[gpu,test]" >>"$LOG" 2>&1
    fi
    if ! NUMBA_ENABLE_CUDASIM=0 "$PY" -c "$need" >>"$LOG" 2>&1; then
        log "gpu_check: CuPy / numba-cuda / tinyllm's dependencies still do not import"
        exit 2
    fi
fi
"$PY" -c 'import numpy, numba, cupy; from numba import cuda
print("numpy", numpy.__version__, "numba", numba.__version__, "cupy", cupy.__version__)
try:
    import torch; print("torch", torch.__version__, torch.cuda.is_available())
except ImportError: print("torch absent: the benchmarks skip their torch peers")' \
    2>&1 | tee -a "$LOG"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NUMBA_ENABLE_CUDASIM=0              # the real device, never the simulator
export NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0   # CuPy and Numba share the default stream
export NUMBA_CACHE_DIR=/tmp/tinyllm-numba-cache
export PYTHONUNBUFFERED=1
unset TINYLLM_CUDA_PTX TINYLLM_KERNELS

# 3. the GPU tests
step "cuda tests" 100 pytest_cuda.log \
    "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_kernels_cuda.py
step "contract tests (cuda)" 90 pytest_contract.log \
    "$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_kernel_contract.py
step "device model tests (CuPy)" 60 pytest_device.log \
    "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_device.py

# 4. the benchmarks
step "benchmarks" 160 gpu_bench.log "$PY" benchmarks/gpu_bench.py --out "$OUT"

# 5. the issue's GPT training step on the GPU (the device model: --device cuda)
step "GPT training (--device cuda, 6L/384, block 256, batch 64)" 60 train_cuda.log \
    "$PY" -m tinyllm train --model gpt --config small --device cuda --n_layer=6 \
    --n_head=6 --n_embd=384 --block_size=256 --batch_size=64 --max_steps=15 \
    --eval_every=5 --eval_batches=1 --warmup_steps=5 --sample_every=0 --progress=false \
    --out /tmp/tinyllm-gpt-cuda --overwrite

log "done: status $status"
exit $status
