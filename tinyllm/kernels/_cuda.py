"""The launcher layer of the ``cuda`` kernels (``numba.cuda``, the ``numba-cuda`` package).

Nothing here imports ``numba.cuda`` at import time: ``import tinyllm`` never needs it. The
family modules build their CUDA kernels on first use, through ``kernels(factory, *key)``.

Three modes, fixed for the process when ``numba.cuda`` is first imported (``mode()``):

- ``"sim"``: Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` set before the import). The
  very same kernel code runs on the CPU, one Python thread per CUDA thread; arrays are NumPy
  arrays in and out. Slow (tens of ms per block), so tiles and blocks are small (``tiles``,
  ``threads``).
- ``"gpu"``: a real device. Device arrays are CuPy arrays (cuBLAS for the matrix products);
  Numba's kernels take them directly (``__cuda_array_interface__``). NumPy inputs are copied to
  the device and the results back, so a ``cuda`` kernel keeps the contract of the CPU ones:
  NumPy in, NumPy out; CuPy in, CuPy out.
- ``"ptx"``: no device and no simulator, ``TINYLLM_CUDA_PTX=sm_XY`` set: every launch compiles
  the kernel to PTX for that compute capability (``compiled``) instead of running it, with
  NumPy arrays standing in for the device ones (the outputs are garbage). A machine without a
  GPU checks this way that each kernel compiles for the real target and stays in its dtype.

Kernels reduce with block-level trees in shared memory (``block_sum`` / ``block_max``), in a
fixed order, so their results are the same bits on every run. Warp shuffles would save the
last five tree levels, but the simulator has no ``shfl_*_sync`` and every kernel here must run
under it. No kernel uses atomics.

Block sizes are powers of two (the trees need it): ``threads(n)`` picks one for rows of
length n. Shared arrays have a constant size, ``MAX_THREADS``.
"""
from __future__ import annotations

import functools
import math
import os
import shutil
import sys

import numpy as np

MAX_THREADS = 1024
SIM_THREADS = 8          # under the simulator: a few threads per block keep the tests fast
SIM_TILE = 8             # attention tiles (queries and keys per block) under the simulator
GPU_TILE = 64


class CudaUnavailable(RuntimeError):
    """The ``cuda`` kernels cannot run here (no numba-cuda, no GPU and no simulator)."""


@functools.cache
def numba_cuda():
    """``numba.cuda``, imported on first use; CudaUnavailable naming the fix if it cannot."""
    try:
        from numba import cuda
    except ImportError as e:                          # numba-cuda missing or broken
        raise CudaUnavailable(f"cuda kernels: numba-cuda does not import here ({e}); "
                              f"install the 'gpu' extra (or 'test' for the simulator)") from None
    return cuda


def simulator() -> bool:
    """True when numba.cuda is (or will be, at its import) the CPU simulator."""
    if "numba.cuda" in sys.modules:                   # imported: its own reading counts
        try:
            from numba.cuda.core import config        # numba-cuda
        except ImportError:                           # older: numba's own config
            from numba.core import config
        return bool(config.ENABLE_CUDASIM)
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")


def gpu_visible() -> bool:
    """A cheap look for an NVIDIA driver (no import): /dev/nvidiactl or nvidia-smi."""
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


def ptx_target():
    """(major, minor) from TINYLLM_CUDA_PTX=sm_XY, or None."""
    v = os.environ.get("TINYLLM_CUDA_PTX", "").strip().lower()
    if not v:
        return None
    if not (v.startswith("sm_") and v[3:].isdigit() and len(v) >= 5):
        raise ValueError(f"TINYLLM_CUDA_PTX must look like sm_90, got {v!r}")
    return int(v[3:-1]), int(v[-1])


@functools.cache
def mode() -> str:
    """``"sim"``, ``"gpu"`` or ``"ptx"`` (module docstring); CudaUnavailable otherwise."""
    cuda = numba_cuda()
    if simulator():
        return "sim"
    if ptx_target() is not None:
        # a kernel calling a device function compiles it for the current device's compute
        # capability; with no device, that is the target's
        from types import SimpleNamespace

        import numba.cuda.dispatcher as dispatcher
        cc = ptx_target()
        dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
        return "ptx"
    try:
        ok = cuda.is_available()
    except Exception:                                 # a broken driver reads as no GPU
        ok = False
    if not ok:
        raise CudaUnavailable("cuda kernels: no CUDA GPU here (set NUMBA_ENABLE_CUDASIM=1 "
                              "before importing tinyllm to run them on the simulator)")
    try:
        import cupy  # noqa: F401
    except ImportError:
        raise CudaUnavailable("cuda kernels: a GPU is present but CuPy does not import; "
                              "install the 'gpu' extra") from None
    return "gpu"


def usable() -> bool:
    """True when the cuda kernels can run (or, in ptx mode, compile) here."""
    try:
        mode()
        return True
    except (CudaUnavailable, ValueError):
        return False


def on_gpu() -> bool:
    """True when a real device runs the kernels (not the simulator, not ptx). Without a
    visible driver this answers without importing numba.cuda (about a second)."""
    if simulator() or ptx_target() is not None or not gpu_visible():
        return False
    return usable() and mode() == "gpu"


# ---------------------------------------------------------------- arrays

def is_device(a) -> bool:
    """A device array (CuPy, or anything with ``__cuda_array_interface__``)."""
    return hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray)


def xp_for(*arrays):
    """The array module of a call: cupy when any input is on the device, else numpy."""
    if any(is_device(a) for a in arrays):
        import cupy
        return cupy
    return np


class Call:
    """One kernel call's arrays. ``dev(a)`` puts an input where the kernels read it (contiguous;
    on the device in gpu mode), ``empty``/``zeros`` allocate there, and ``out(a)`` hands a
    result back in the caller's kind (NumPy when the inputs were NumPy)."""

    def __init__(self, name, *inputs):
        self.name = name
        self.mode = mode()
        self.host = not any(is_device(a) for a in inputs)    # NumPy in -> NumPy out
        if self.mode == "gpu":
            import cupy
            self.xp = cupy
        else:
            if not self.host:
                raise TypeError(f"{name}: a device array reached the cuda kernel in "
                                f"{self.mode} mode, where arrays are NumPy")
            self.xp = np

    def dev(self, a, dtype=None):
        if a is None:
            return None
        if self.xp is np:
            return np.ascontiguousarray(a, dtype=dtype)
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype)

    def out(self, a):
        if a is None or self.xp is np or not self.host:
            return a
        return a.get()


def shadow(a):
    """A NumPy stand-in with a device array's shape and dtype, for the families' input checks
    (``np.empty``: its pages are never touched, so a large one costs nothing); a NumPy array
    (or anything else) passes through."""
    if is_device(a):
        return np.empty(a.shape, np.dtype(a.dtype))
    return a


def dout(call, kernel, d, shape, dtype, name="dout"):
    """An upstream gradient checked like the CPU kernels check it (``_check.dout_like``:
    the forward output's shape, cast to its dtype), where the kernels read it."""
    from ._check import dout_like
    ref = np.empty(shape, dtype)
    if call.host:
        return call.dev(dout_like(kernel, d, ref, name))
    dout_like(kernel, shadow(d), ref, name)
    return call.dev(d, dtype)


def host(a):
    """A device array copied to NumPy (small ones: targets, masks); others pass through."""
    return a.get() if is_device(a) else a


# ---------------------------------------------------------------- launch sizes

def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def threads(n: int, per_thread: int = 4) -> int:
    """A power-of-two block size for rows of n elements, about ``per_thread`` each:
    32..1024 on a device, 2..SIM_THREADS under the simulator."""
    want = _pow2_at_least(max(1, math.ceil(n / per_thread)))
    if mode() == "sim":
        return max(2, min(SIM_THREADS, want))
    return max(32, min(MAX_THREADS, want))


def tile() -> int:
    """Queries (and keys) per attention block: GPU_TILE on a device, SIM_TILE simulated."""
    return SIM_TILE if mode() == "sim" else GPU_TILE


# ---------------------------------------------------------------- kernels and launches

def shared_type(dtype):
    """The element type a kernel gives ``cuda.shared.array`` / ``cuda.local.array`` for a
    NumPy dtype: the NumPy type under the simulator, Numba's type otherwise."""
    dt = np.dtype(dtype)
    if mode() == "sim":
        return dt.type
    import numba
    return numba.from_dtype(dt)


_KERNELS: dict = {}


def kernels(factory, *key):
    """``factory(*key)``: the @cuda.jit kernels a family builds for ``key`` (a dtype, a head
    size, a tile), built once per key. The kernels must name numba.cuda through their
    module's global ``cuda`` (the simulator swaps that global for its fake module while a
    kernel runs; a closure variable would escape it), so it is set here first."""
    k = (factory, *key)
    if k not in _KERNELS:
        factory.__globals__["cuda"] = numba_cuda()
        _KERNELS[k] = factory(*key)
    return _KERNELS[k]


compiled: list = []       # ptx mode: (kernel name, argument types, PTX text) per launch


def launch(kernel, grid, block, *args):
    """``kernel[grid, block](*args)``; in ptx mode, compile it for TINYLLM_CUDA_PTX instead and
    append (name, argtypes, ptx) to ``compiled``. Empty grids launch nothing."""
    grid = tuple(int(g) for g in (grid if isinstance(grid, tuple) else (grid,)))
    if 0 in grid:
        return
    if mode() == "ptx":
        import numba
        cuda = numba_cuda()
        types = tuple(numba.typeof(a) for a in args)
        ptx, _ = cuda.compile_ptx(kernel.py_func, types, cc=ptx_target())
        compiled.append((kernel.py_func.__name__, types, ptx))
        return
    if mode() == "gpu":             # a NumPy argument would be copied in and back each launch
        import cupy
        args = tuple(cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args)
    kernel[grid, int(block)](*args)


_CONSTS: dict = {}


def consts(dtype, *values):
    """Constants typed like the kernel's data (a float64 literal in a float32 kernel makes the
    arithmetic float64): a small array in the call's dtype, kept on the device in gpu mode
    (made once per dtype and values)."""
    key = (np.dtype(dtype).name, values)
    if key not in _CONSTS:
        a = np.array(values, np.dtype(dtype))
        if mode() == "gpu":
            import cupy
            a = cupy.asarray(a)
        _CONSTS[key] = a
    return _CONSTS[key]


cuda = None               # numba.cuda once kernels() has run (see there)


def _reductions():
    @cuda.jit(device=True)
    def block_sum(sm, v, tid, nt):
        """The sum of v over the block's nt threads (a power of two), in a fixed tree order,
        returned to every thread. sm: shared scratch of >= nt entries."""
        cuda.syncthreads()                    # sm may still be read from the last call
        sm[tid] = v
        cuda.syncthreads()
        s = nt // 2
        while s > 0:
            if tid < s:
                sm[tid] = sm[tid] + sm[tid + s]
            cuda.syncthreads()
            s //= 2
        return sm[0]

    @cuda.jit(device=True)
    def block_max(sm, v, tid, nt):
        """The max of v over the block (NaN entries lose, as in the CPU kernels)."""
        cuda.syncthreads()
        sm[tid] = v
        cuda.syncthreads()
        s = nt // 2
        while s > 0:
            if tid < s:
                a = sm[tid]
                b = sm[tid + s]
                sm[tid] = b if b > a else a
            cuda.syncthreads()
            s //= 2
        return sm[0]

    return block_sum, block_max


def reductions():
    """(block_sum, block_max) device functions."""
    return kernels(_reductions)


def _colsum_factory(dtype):
    sum_, _ = reductions()

    @cuda.jit
    def colsum_partial(a, part, rows_per):
        # part[c, j] = sum of a[r, j] over chunk c's rows, in row order
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        c = cuda.blockIdx.y
        R, C = a.shape
        if j < C:
            r0 = c * rows_per
            r1 = min(R, r0 + rows_per)
            s = part[c, j]                    # 0, typed like a (part is zeroed)
            for r in range(r0, r1):
                s += a[r, j]
            part[c, j] = s

    @cuda.jit
    def colsum_final(part, out):
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if j < out.shape[0]:
            s = part[0, j]
            for c in range(1, part.shape[0]):
                s += part[c, j]
            out[j] = s

    @cuda.jit
    def total_f64(x, out):
        # one block: out[0] = sum of x (float64 accumulation), a fixed tree
        sm = cuda.shared.array(MAX_THREADS, np.float64)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        s = out[0]                            # 0.0 (out is zeroed), float64
        for i in range(tid, x.shape[0], nt):
            s += x[i]
        t = sum_(sm, s, tid, nt)
        if tid == 0:
            out[0] = t

    return colsum_partial, colsum_final, total_f64


CHUNKS = 64               # row chunks of a column sum: depends only on the row count


def column_sums(call: Call, a):
    """sum over rows of a (R, C) device/NumPy array -> (C,), deterministic: fixed row chunks
    summed in order, then the chunks in order. No atomics."""
    R, C = a.shape
    partial, final, _ = kernels(_colsum_factory, np.dtype(a.dtype).name)
    nch = max(1, min(R, CHUNKS))
    rows_per = -(-R // nch) if R else 1
    part = call.zeros((nch, C), a.dtype)
    out = call.empty((C,), a.dtype)
    nt = threads(C, 1)
    if R:
        launch(partial, (-(-C // nt), nch), nt, a, part, rows_per)
    launch(final, -(-C // nt), nt, part, out)
    return out


def total_f64(call: Call, x):
    """sum of a 1-d array, accumulated in float64 on the device: a (1,) float64 array."""
    _, _, tot = kernels(_colsum_factory, np.dtype(x.dtype).name)
    out = call.zeros((1,), np.float64)
    launch(tot, 1, threads(x.shape[0], 1), x, out)
    return out
