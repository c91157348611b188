"""Matrix products on Numba's thread pool: single-threaded BLAS on independent tiles.

    C = A @ B (+ bias)        A (M, K), B (K, N), C (M, N), bias (N,)

NumPy's matmul calls OpenBLAS, which runs its own pool of threads beside Numba's. On two
cores the two pools fight: after each product OpenBLAS's workers spin for a while, so the
Numba kernel that follows (a layer norm, a GELU) finds its cores taken, and a product that
follows a Numba kernel waits for Numba's workers to sleep. Measured in one GPT training step
(config A, 2 cores), a (2048, 128) layer norm took 630 us between products against 71 us
alone, and the same (2048 x 128) . (128 x 512) product ran anywhere from 22 to 177 GFLOP/s.

``gemm`` owns the threading instead: C is cut into ``numba.get_num_threads()`` tiles (row
blocks when M >= N, else column blocks), and one Numba parallel loop has each thread call
BLAS's single-threaded ``sgemm`` / ``dgemm`` on its tile. There is then one pool, Numba's,
and BLAS never starts a thread. The BLAS is SciPy's (``scipy.linalg.cython_blas``, the one
Numba's own ``np.dot`` calls), reached through its function pointer; its thread count is
set to 1 for the duration of each product and put back after it (two ctypes calls), so no
thread count changes outside a product. NumPy's matmul has its own copy of OpenBLAS with
its own threads, untouched.

Row-major arrays are column-major arrays transposed, so C = A @ B in row-major is
C^T = B^T A^T in BLAS's column-major terms: ``?gemm(opB, opA, N, M, K, 1, B, ldb, A, lda,
beta, C, ldc)``. An operand with unit stride along its rows (C-ordered, or a row slice of
one) is passed as is ("N"); one with unit stride down its columns (a transpose such as
``W.T``) as "T" with its leading dimension: no operand is ever copied.

Each tile's bias add runs on the thread that computed the tile, while it is in cache (the
fused bias of ``linear``). ``accumulate=True`` computes C += A @ B (beta = 1).

``TINYLLM_MATMUL=numpy`` in the environment (read at import) sends every product to NumPy's
matmul instead: the A/B switch behind the "before" rows of ``benchmarks/PROFILE.md``.

Determinism: each element of C is one BLAS dot over the whole of K, computed by whichever
thread owns its tile, with the same tile boundaries on every call; the result is the same
bits on every run with the same thread count.
"""
from __future__ import annotations

import ctypes
import functools
import os
import time

import numpy as np

from .. import runtime
from ..stopwatch import active_profile
from ._nb import HAVE_NUMBA, njit, num_threads, prange

if HAVE_NUMBA:
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def _call13(typingctx, fn, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13):
        """Call the C function at address ``fn`` with 13 pointer arguments (addresses as
        integers): a Fortran ``?gemm``, whose every argument is a pointer."""
        sig = types.void(fn, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13)

        def codegen(context, builder, signature, args):
            vp = ir.IntType(8).as_pointer()
            fnty = ir.FunctionType(ir.VoidType(), [vp] * 13)
            f = builder.inttoptr(args[0], fnty.as_pointer())
            builder.call(f, [builder.inttoptr(a, vp) for a in args[1:]])
            return context.get_dummy_value()
        return sig, codegen
else:                                                # pragma: no cover - numba is a dependency
    def _call13(*args):
        raise RuntimeError("gemm: Numba is not installed")

# below this many multiply-adds NumPy's matmul does the product (OpenBLAS runs products under
# 2^18 multiply-adds on the calling thread, and its call costs less than the tiles' set-up);
# from there on the tiles, in parallel from PARALLEL_MACS_CHEAP where a launch costs
# microseconds (Numba's omp layer), else from SERIAL_MACS
NUMPY_MACS = 1 << 18
_NUMPY_ONLY = os.environ.get("TINYLLM_MATMUL", "").strip().lower() == "numpy"
PARALLEL_MACS_CHEAP = 1 << 18
SERIAL_MACS = 1 << 20
# a product with fewer rows than this (a decode step's one row) is left to NumPy's matmul:
# BLAS's gemm packs the whole weight for every call, so a matrix-vector product through the
# tiles ran ~1.5x slower than NumPy's (config B's decoding measured 149-166 against 248-305
# tokens/s); NumPy's OpenBLAS runs such products on 1-2 threads of its own
MIN_ROWS = 16


@functools.cache
def _blas() -> dict | None:
    """{"float32": address of sgemm, "float64": address of dgemm} from SciPy's cython_blas,
    with that BLAS pinned to one thread; None where it cannot be had (then ``gemm`` falls
    back to NumPy's matmul)."""
    try:
        from scipy.linalg import cython_blas
        import threadpoolctl  # noqa: F401
    except ImportError:                              # pragma: no cover - scipy is a dependency
        return None
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    out = {}
    for dt, name in (("float32", "sgemm"), ("float64", "dgemm")):
        cap = cython_blas.__pyx_capi__[name]
        out[dt] = int(get_ptr(cap, get_name(cap)))
    # SciPy's own BLAS (a library file in SciPy's folders, not NumPy's copy): one thread, so
    # that each tile's call runs on the thread that makes it
    import scipy
    from threadpoolctl import ThreadpoolController
    site = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
    mine = (os.path.join(site, "scipy"), os.path.join(site, "scipy.libs"))
    libs = [lib for lib in ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and os.path.abspath(lib.filepath).startswith(mine)]
    if not libs:                                     # its threads cannot be pinned: not used
        return None
    out["libs"] = libs
    return out


def _one_thread(blas: dict) -> list:
    """SciPy's BLAS on one thread for the products about to run; returns what to restore
    (``_restore``), so that no thread count changes outside a product: one ctypes call per
    library when it is already 1, three when it is not."""
    changed = []
    for lib in blas["libs"]:
        n = lib.get_num_threads()
        if n != 1:
            lib.set_num_threads(1)
            changed.append((lib, n))
    return changed


def _restore(changed: list) -> None:
    for lib, n in changed:
        lib.set_num_threads(n)


@njit(parallel=True)
def _gemm_par(fn, dims, ops, alpha_beta, iw, out, bias, has_bias):
    for t in prange(iw.shape[0]):
        _tile(fn, dims, t, iw.shape[0], ops, alpha_beta, iw[t], out, bias, has_bias)


@njit
def _gemm_serial(fn, dims, ops, alpha_beta, iw, out, bias, has_bias):
    _tile(fn, dims, 0, 1, ops, alpha_beta, iw[0], out, bias, has_bias)


@njit(parallel=True)
def _gemm_batch(fn, rows, ops, alpha_beta, iw, nthreads):
    """Several independent products in one parallel region. Row i of ``rows`` is a task:
    the 13 ``dims`` of its product (see ``_tile``), then which tile [13] of how many [14].
    The tasks are ordered thread by thread, ``nthreads`` equal runs: thread j takes run j."""
    none = np.empty((1, 0), alpha_beta.dtype)
    per = rows.shape[0] // nthreads
    for j in prange(nthreads):
        for i in range(j * per, (j + 1) * per):
            _tile(fn, rows[i], rows[i, 13], rows[i, 14], ops[i], alpha_beta, iw[i], none,
                  none[0], False)


@njit(inline="always")
def _tile(fn, dims, t, nt, ops, alpha_beta, iv, out, bias, has_bias):
    """Tile t of nt of C = A @ B (+ bias). ``dims`` (int64): [M, N, K, address of A, bytes
    to A's next row, lda, address of B, bytes to B's next column, ldb, address of C, ldc,
    itemsize, split rows (1) or columns (0)]. In BLAS's column-major terms the tile is
    C^T[c0:c1, r0:r1] = op(B)[c0:c1] op(A)[:, r0:r1]: m = its columns, n = its rows."""
    M, N = dims[0], dims[1]
    if dims[12]:
        r0, r1, c0, c1 = t * M // nt, (t + 1) * M // nt, 0, N
    else:
        r0, r1, c0, c1 = 0, M, t * N // nt, (t + 1) * N // nt
    if r1 > r0 and c1 > c0:
        it = dims[11]
        iv[0] = c1 - c0                                  # m
        iv[1] = r1 - r0                                  # n
        iv[2] = dims[2]                                  # k
        iv[3] = dims[8]                                  # ldb (B is BLAS's first operand)
        iv[4] = dims[5]                                  # lda
        iv[5] = dims[10]                                 # ldc
        base = iv.ctypes.data
        w = iv.itemsize
        opd = ops.ctypes.data
        ab = alpha_beta.ctypes.data
        pa = dims[3] + r0 * dims[4]
        pb = dims[6] + c0 * dims[7]
        pc = dims[9] + (r0 * dims[10] + c0) * it
        _call13(fn, opd, opd + 1, base, base + w, base + 2 * w, ab, pb, base + 3 * w,
                pa, base + 4 * w, ab + alpha_beta.itemsize, pc, base + 5 * w)
        if has_bias:
            for r in range(r0, r1):
                row = out[r]
                for j in range(c0, c1):
                    row[j] += bias[j]


_OPS = {k: np.frombuffer(k.encode(), np.uint8).copy() for k in ("NN", "NT", "TN", "TT")}
_AB = {(dt, acc): np.array([1.0, 1.0 if acc else 0.0], dt)
       for dt in (np.dtype(np.float32), np.dtype(np.float64)) for acc in (False, True)}


def _operand(x: np.ndarray):
    """(op, ld) of a row-major 2-D array for BLAS's column-major view of its transpose, or
    None when neither axis has unit stride."""
    it = x.itemsize
    r, c = x.shape
    s0, s1 = x.strides
    if c == 1 or s1 == it:                           # unit stride along rows: "N"
        ld = s0 // it if r > 1 else c
        if s0 % it == 0 and ld >= max(1, c):
            return "N", ld
    if r == 1 or s0 == it:                           # unit stride down columns: "T"
        ld = s1 // it if c > 1 else r
        if s1 % it == 0 and ld >= max(1, r):
            return "T", ld
    return None


def _numpy(a, b, out, bias, accumulate):
    """The same product by NumPy's matmul (the fallback)."""
    if out.size:
        prod = a @ b
        if accumulate:
            out += prod
        else:
            out[...] = prod
    if bias is not None:
        out += bias
    return out


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None,
         bias: np.ndarray | None = None, accumulate: bool = False) -> np.ndarray:
    """``a @ b (+ bias)`` for 2-D float32/float64 arrays of one dtype (see the module
    docstring); into ``out`` when given (rows with unit stride; ``accumulate`` adds to it).
    NumPy's matmul does what the tiles would not do better: under ``NUMPY_MACS``
    multiply-adds, fewer than ``MIN_ROWS`` rows, other or mixed dtypes, an operand without a
    unit stride, no SciPy BLAS (and everything under ``TINYLLM_MATMUL=numpy``)."""
    M, K = a.shape
    K2, N = b.shape
    if K != K2:
        raise ValueError(f"gemm: shapes {a.shape} and {b.shape} do not chain")
    dt = a.dtype
    if out is None:
        out = np.zeros((M, N), dt) if accumulate else np.empty((M, N), dt)
    if bias is not None and (bias.dtype != dt or bias.shape != (N,)):
        raise ValueError(f"gemm: bias must be ({N},) {dt}, got {bias.dtype} {bias.shape}")
    macs = M * N * K
    if macs < NUMPY_MACS or M < MIN_ROWS or _NUMPY_ONLY:
        return _numpy(a, b, out, bias, accumulate)
    blas = _blas() if dt == b.dtype and dt.name in ("float32", "float64") else None
    opa, opb = _operand(a), _operand(b)
    it = dt.itemsize
    if (blas is None or opa is None or opb is None or out.dtype != dt or out.shape != (M, N)
            or out.strides[1] != it or out.strides[0] % it):
        return _numpy(a, b, out, bias, accumulate)
    cheap = runtime.cheap_launches()
    nt = num_threads() if macs >= (PARALLEL_MACS_CHEAP if cheap else SERIAL_MACS) else 1
    nt = max(1, min(nt, M if M >= N else N))
    dims = _dims(a, b, out, opa, opb)
    has_bias = bias is not None
    _run(_gemm_par if nt > 1 else _gemm_serial, blas, dt, dims, _OPS[opb[0] + opa[0]],
         _AB[dt, bool(accumulate)], np.empty((nt, 8), np.int32), out,
         bias if has_bias else out[0, :0], has_bias)
    return out


def _run(kernel, blas: dict, dt, *args) -> None:
    """``kernel(address of the dtype's ?gemm, *args)`` with SciPy's BLAS on one thread
    meanwhile, timed as "gemm tiles" when a profile is recording (``bench --profile``)."""
    prof = active_profile()
    t0 = time.perf_counter() if prof is not None else 0.0
    changed = _one_thread(blas)
    try:
        kernel(blas[dt.name], *args)
    finally:
        _restore(changed)
    if prof is not None:
        prof.add_nested("gemm tiles", time.perf_counter() - t0)


def _dims(a, b, out, opa, opb) -> np.ndarray:
    """The 13 ``dims`` of ``_tile`` for out = a @ b (operands already checked)."""
    M, K = a.shape
    N = b.shape[1]
    it = a.itemsize
    ldc = out.strides[0] // it if M > 1 else N
    return np.array([M, N, K, a.ctypes.data, a.strides[0], opa[1], b.ctypes.data,
                     b.strides[1], opb[1], out.ctypes.data, ldc, it, M >= N], np.int64)


def gemm_batch(products) -> list:
    """``[a @ b for a, b in products]`` (fresh arrays), the independent products sharing one
    parallel region. With at least as many products as threads, whole products go one per
    thread (each a full single-threaded BLAS call: no two threads pack the same operand,
    which is what a tile split costs; a (2048, 128) @ (128, 128) pair ran 157-171 GFLOP/s
    this way against 66-119 as two tiled products); the rest are cut into one tile per
    thread. Products ``gemm`` would give to NumPy are done by NumPy first."""
    nt = num_threads()
    batch = [i for i, (a, b) in enumerate(products) if _batchable(a, b, nt)]
    batch = [i for i in batch if products[i][0].dtype == products[batch[0]][0].dtype]
    if len(batch) < 2:                                  # nothing to share a region with
        return [gemm(a, b) for a, b in products]
    outs = [None if i in batch else gemm(a, b) for i, (a, b) in enumerate(products)]
    whole = len(batch) - len(batch) % nt                # the first ones whole, one per thread
    runs = [[] for _ in range(nt)]
    for k, i in enumerate(batch):
        a, b = products[i]
        outs[i] = np.empty((a.shape[0], b.shape[1]), a.dtype)
        opa, opb = _operand(a), _operand(b)
        d, op = _dims(a, b, outs[i], opa, opb), _OPS[opb[0] + opa[0]]
        for j in ([k % nt] if k < whole else range(nt)):
            runs[j].append((np.concatenate([d, [0, 1] if k < whole else [j, nt]]), op))
    tasks = [t for run in runs for t in run]            # thread by thread, equal runs
    dt = products[batch[0]][0].dtype
    _run(_gemm_batch, _blas(), dt, np.stack([t[0] for t in tasks]),
         np.stack([t[1] for t in tasks]), _AB[dt, False], np.empty((len(tasks), 8), np.int32),
         nt)
    return outs


def _batchable(a, b, nt: int) -> bool:
    """Whether a @ b goes to the tiles at all (what ``gemm`` would not give to NumPy)."""
    M, K = a.shape
    N = b.shape[1]
    dt = a.dtype
    return (nt >= 2 and not _NUMPY_ONLY and M * N * K >= NUMPY_MACS and M >= MIN_ROWS
            and dt == b.dtype and dt.name in ("float32", "float64") and _blas() is not None
            and _operand(a) is not None and _operand(b) is not None)


__all__ = ["gemm", "gemm_batch", "NUMPY_MACS", "PARALLEL_MACS_CHEAP", "SERIAL_MACS", "MIN_ROWS"]
