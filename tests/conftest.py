"""Shared test settings.

Under CI (CI=true) hypothesis draws a fixed sequence of examples, so a run is reproducible;
locally it explores new examples each run and remembers failures in .hypothesis/.

The CUDA simulator: where no NVIDIA GPU is visible (no /dev/nvidiactl, no nvidia-smi) and
NUMBA_ENABLE_CUDASIM is unset, it is switched on here, before anything imports numba.cuda
(tinyllm imports it only when a cuda kernel is first used), so tests/test_kernels_cuda.py
runs the cuda kernels on the CPU. It changes nothing for the CPU kernels: the variable is
read by numba.cuda alone. On a GPU machine it stays off (benchmarks/gpu_check.sh sets it to
0 explicitly); set NUMBA_ENABLE_CUDASIM=1 there to test the simulator path.
"""
import os
import shutil


def _nvidia_gpu_visible() -> bool:
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _nvidia_gpu_visible():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import matplotlib
from hypothesis import settings

matplotlib.use("Agg")

from tinyllm import runtime  # noqa: E402

runtime.configure()      # as the command line runs: Numba on the workqueue threading layer

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
