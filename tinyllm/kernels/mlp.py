"""mlp: linear -> GELU -> linear, the transformer's feed-forward block.

x (N, C) (or any (..., C), flattened to rows), W1 (C, H), b1 (H,), W2 (H, C_out),
b2 (C_out,). GELU is the tanh approximation (GPT-2's):

    a    = x W1 + b1                                   (N, H)  pre-activation
    h    = gelu(a) = 0.5 a (1 + tanh(s (a + k a^3))),  s = sqrt(2/pi), k = 0.044715
    y    = h W2 + b2                                   (N, C_out)                (forward)

Backward, with T = tanh(s (a + k a^3)):

    gelu'(a) = 0.5 (1 + T) + 0.5 a (1 - T^2) s (1 + 3 k a^2)
    dW2 = h^T dy,   db2 = sum_rows dy,   dh = dy W2^T
    da  = dh * gelu'(a)
    dW1 = x^T da,   db1 = sum_rows da,   dx = da W1^T                            (backward)

The Numba version evaluates the same function through 0.5 (1 + tanh y) = sigmoid(2y):

    q = 1 / (1 + exp(-2 s (a + k a^3))),   gelu(a) = a q,
    gelu'(a) = q + 2 a q (1 - q) s (1 + 3 k a^2)

(one exp and one division per element, where tanh costs an exp, a division and a sign
select; exp(..) = inf for very negative a gives q = 0, gelu = -0, gelu' = 0, as tanh does).

Only x and a are saved; h = gelu(a) is recomputed in the backward, fused with gelu'(a), so
no (N, H) activation besides a outlives the forward. The six matrix products are BLAS
calls; the elementwise work around them is one fused pass each way. ``b1`` or ``b2`` may be
None (no bias); its gradient is then None.

forward(x, W1, b1, W2, b2) -> (y, cache)      cache = (x, W1, b1, W2, b2, a)
backward(dy, cache) -> (dx, dW1, db1, dW2, db2)

The backward pass is derived step by step in docs/derivations/gelu-mlp.md.
"""
from __future__ import annotations

import math

import numpy as np

from . import Kernel
from ._check import contiguous, dout_like, floats, ndim, shape
from ._family import GFLOPS, Family, Size, Work
from ._gemm import gemm, gemm_batch
from ._nb import SERIAL_WORK, chunk, chunks, fexp, njit, prange
from ..errors import ShapeError

NAME = "mlp"

_S = math.sqrt(2.0 / math.pi)
_K = 0.044715


def _check(x, W1, b1, W2, b2):
    floats(NAME, x=x, W1=W1, b1=b1, W2=W2, b2=b2)
    if x.ndim == 0:
        raise ShapeError(f"{NAME}: x must be (N, C), got a 0-d array")
    ndim(NAME, "W1", W1, 2, "(C, H)")
    ndim(NAME, "W2", W2, 2, "(H, C_out)")
    C, H = W1.shape
    if x.shape[-1] != C:
        raise ShapeError(f"{NAME}: x {x.shape} does not match W1 {W1.shape}: x's last "
                         f"dimension must equal W1's first (C = {C})")
    if W2.shape[0] != H:
        raise ShapeError(f"{NAME}: W2 {W2.shape} does not match W1 {W1.shape}: W2 must be "
                         f"(H, C_out) with H = {H}")
    if b1 is not None:
        shape(NAME, "b1", b1, (H,), "(H,)")
    if b2 is not None:
        shape(NAME, "b2", b2, (W2.shape[1],), "(C_out,)")
    return contiguous(x, W1, b1, W2, b2)


# ---------------------------------------------------------------- NumPy reference

def _gelu_ref(a):
    dt = a.dtype.type
    return dt(0.5) * a * (dt(1) + np.tanh(dt(_S) * (a + dt(_K) * a * a * a)))


def _gelu_grad_ref(a):
    dt = a.dtype.type
    T = np.tanh(dt(_S) * (a + dt(_K) * a * a * a))
    return (dt(0.5) * (dt(1) + T)
            + dt(0.5) * a * (dt(1) - T * T) * dt(_S) * (dt(1) + dt(3 * _K) * a * a))


def forward_ref(x, W1, b1, W2, b2):
    x, W1, b1, W2, b2 = _check(x, W1, b1, W2, b2)
    x2 = x.reshape(-1, x.shape[-1])                           # (N, C)
    a = x2 @ W1                                               # (N, H)
    if b1 is not None:
        a = a + b1
    h = _gelu_ref(a)                                          # (N, H)
    y = h @ W2                                                # (N, C_out)
    if b2 is not None:
        y = y + b2
    return y.reshape(x.shape[:-1] + (W2.shape[1],)), (x, W1, b1, W2, b2, a)


def backward_ref(dy, cache):
    x, W1, b1, W2, b2, a = cache
    dy = dout_like(NAME, dy, np.empty(x.shape[:-1] + (W2.shape[1],), x.dtype), "dy")
    x2 = x.reshape(-1, x.shape[-1])                           # (N, C)
    dy2 = dy.reshape(-1, W2.shape[1])                         # (N, C_out)
    h = _gelu_ref(a)                                          # (N, H) recomputed
    dW2 = h.T @ dy2                                           # (H, C_out)
    db2 = dy2.sum(axis=0) if b2 is not None else None         # (C_out,)
    dh = dy2 @ W2.T                                           # (N, H)
    da = dh * _gelu_grad_ref(a)                               # (N, H)
    dW1 = x2.T @ da                                           # (C, H)
    db1 = da.sum(axis=0) if b1 is not None else None          # (H,)
    dx = (da @ W1.T).reshape(x.shape)                         # (N, C)
    return dx, dW1, db1, dW2, db2


REFERENCE = Kernel(NAME, "numpy", forward_ref, backward_ref, ("x", "W1", "b1", "W2", "b2"))


# ---------------------------------------------------------------- Numba CPU
# The matrix products go to NumPy's BLAS, writing into buffers with out=. Numba does the
# elementwise work in one parallel pass each way: forward a += b1, h = gelu(a); backward
# h = gelu(a) and da = dh * gelu'(a) from one exp, plus db1 as per-chunk column partials
# added in a fixed order (the chunking depends only on N, so the result is deterministic).
# exp is _nb.fexp: a vectorisable polynomial for float32, math.exp for float64. The sigmoid
# form (module docstring) measured 14.0 ms forward / 17.2 ms backward against 16.4 / 23.5 ms
# for the same loops with _nb.ftanh (N=2048, H=3072, float32, one thread), about 2% of the
# whole MLP's fwd+bwd.
# error_model="numpy": under Numba's default (Python) error model a float division carries
# a ZeroDivisionError branch; in a plain njit loop that branch stopped vectorisation (~4x
# slower, measured). prange bodies vectorised either way, but the flag keeps the loops
# branch-free whatever Numba decides.

_BWD_CHUNKS = 64


def _consts(dtype):
    """s, k, 3k, 0.5, 1, 0 in the kernel's dtype (a float64 literal in a float32 loop would
    silently make it float64)."""
    return np.array([_S, _K, 3 * _K, 0.5, 1.0, 0.0], dtype)


@njit(inline="always", error_model="numpy")
def _bias_gelu_row(ar, b1, hr, s, k, onev):
    m2s = -(onev + onev) * s                                  # -2 s
    for j in range(ar.shape[0]):
        u = ar[j] + b1[j]
        ar[j] = u
        hr[j] = u / (onev + fexp(m2s * (u + k * u * u * u)))      # u sigmoid(2y)


@njit(parallel=True, error_model="numpy")
def _bias_gelu_fwd(a, b1, h, cst, nchunks):
    N = a.shape[0]
    for c in prange(nchunks):
        for r in range(*chunk(c, nchunks, N)):
            _bias_gelu_row(a[r], b1, h[r], cst[0], cst[1], cst[4])


@njit(error_model="numpy")
def _bias_gelu_fwd_serial(a, b1, h, cst):
    """The same rows on this thread (a few rows: a parallel launch would cost more)."""
    for r in range(a.shape[0]):
        _bias_gelu_row(a[r], b1, h[r], cst[0], cst[1], cst[4])


@njit(parallel=True, error_model="numpy")
def _gelu_bwd(a, dh, h, dbp, cst, nchunks):
    """h <- gelu(a); dh <- dh * gelu'(a) (in place, becomes da); dbp[c] <- chunk c's column
    sums of da."""
    N, H = a.shape
    s, k, k3, onev, zerov = cst[0], cst[1], cst[2], cst[4], cst[5]
    m2s = -(onev + onev) * s                                  # -2 s
    two_s = (onev + onev) * s                                 # 2 s
    for c in prange(nchunks):
        pb = dbp[c]
        for j in range(H):
            pb[j] = zerov
        for r in range(*chunk(c, nchunks, N)):
            ar = a[r]
            gr = dh[r]
            hr = h[r]
            for j in range(H):
                u = ar[j]
                u2 = u * u
                q = onev / (onev + fexp(m2s * (u + k * u2 * u)))  # sigmoid(2y) = (1 + T) / 2
                hr[j] = u * q
                d = gr[j] * (q + two_s * u * q * (onev - q) * (onev + k3 * u2))
                gr[j] = d
                pb[j] += d


def forward_numba(x, W1, b1, W2, b2):
    x, W1, b1, W2, b2 = _check(x, W1, b1, W2, b2)
    x2 = x.reshape(-1, x.shape[-1])
    N, H, Co = x2.shape[0], W1.shape[1], W2.shape[1]
    a = np.empty((N, H), x.dtype)
    h = np.empty((N, H), x.dtype)
    y = np.empty((N, Co), x.dtype)
    gemm(x2, W1, out=a)                                       # (N, C) @ (C, H)
    if N:
        args = (a, b1 if b1 is not None else np.zeros(H, x.dtype), h, _consts(x.dtype))
        if a.size < SERIAL_WORK:
            _bias_gelu_fwd_serial(*args)
        else:
            _bias_gelu_fwd(*args, chunks(N))
    gemm(h, W2, out=y, bias=b2)                               # (N, H) @ (H, C_out) + b2
    return y.reshape(x.shape[:-1] + (Co,)), (x, W1, b1, W2, b2, a)


def backward_numba(dy, cache):
    x, W1, b1, W2, b2, a = cache
    Co = W2.shape[1]
    dy = dout_like(NAME, dy, np.empty(x.shape[:-1] + (Co,), x.dtype), "dy")
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, Co)
    N, H = a.shape
    da = np.empty((N, H), x.dtype)
    h = np.empty((N, H), x.dtype)
    gemm(dy2, W2.T, out=da)                                   # dh, becomes da in place
    nch = max(1, min(N, _BWD_CHUNKS))
    dbp = np.zeros((nch, H), x.dtype)
    if N:
        _gelu_bwd(a, da, h, dbp, _consts(x.dtype), nch)
    # three independent products in one parallel region (two whole, one in tiles)
    dW2, dW1, dx = gemm_batch([(h.T, dy2),                   # (H, N) @ (N, C_out)
                               (x2.T, da),                   # (C, N) @ (N, H)
                               (da, W1.T)])                  # (N, H) @ (H, C)
    dx = dx.reshape(x.shape)
    db2 = dy2.sum(axis=0) if b2 is not None else None
    db1 = dbp.sum(axis=0) if b1 is not None else None
    return dx, dW1, db1, dW2, db2


NUMBA = Kernel(NAME, "numba", forward_numba, backward_numba, ("x", "W1", "b1", "W2", "b2"))


# ---------------------------------------------------------------- CUDA (numba.cuda)
# The matrix products are the array module's matmul (cuBLAS through CuPy on a device, NumPy
# under the simulator). The elementwise work is one fused numba.cuda kernel each way, one
# thread per element of the (N, H) pre-activation, in the sigmoid form of the Numba CPU
# version: forward a += b1, h = gelu(a); backward h = gelu(a), da = dh * gelu'(a). db1 and
# db2 are column sums without atomics (_cuda.column_sums: fixed row chunks, in order).

cuda = None          # numba.cuda, set by _cuda.kernels before a factory runs


def _cuda_factory(dtype):
    @cuda.jit
    def bias_gelu_fwd(a, b1, h, cst):
        j = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        r = cuda.blockIdx.x
        if j < a.shape[1]:
            s, k, one = cst[0], cst[1], cst[4]
            u = a[r, j] + b1[j]
            a[r, j] = u
            h[r, j] = u / (one + math.exp(-(one + one) * s * (u + k * u * u * u)))

    @cuda.jit
    def gelu_bwd(a, dh, h, cst):
        j = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        r = cuda.blockIdx.x
        if j < a.shape[1]:
            s, k, k3, one = cst[0], cst[1], cst[2], cst[4]
            u = a[r, j]
            u2 = u * u
            q = one / (one + math.exp(-(one + one) * s * (u + k * u2 * u)))   # sigmoid(2y)
            h[r, j] = u * q
            dh[r, j] = dh[r, j] * (q + (one + one) * s * u * q * (one - q) * (one + k3 * u2))

    return bias_gelu_fwd, gelu_bwd


def _rows_grid(N, H):
    """(grid, block) for one thread per element of an (N, H) array: rows on the grid's x
    (up to 2^31 - 1; y stops at 65535), column blocks on its y."""
    from . import _cuda
    nt = _cuda.threads(H, 1)
    return (N, -(-H // nt)), nt


def forward_cuda(x, W1, b1, W2, b2):
    from . import _cuda
    _check(*map(_cuda.shadow, (x, W1, b1, W2, b2)))
    call = _cuda.Call(NAME, x, W1, b1, W2, b2)
    xd, W1d, b1d, W2d, b2d = map(call.dev, (x, W1, b1, W2, b2))
    dt, xp = xd.dtype, call.xp
    x2 = xd.reshape(-1, x.shape[-1])
    N, H, Co = x2.shape[0], W1.shape[1], W2.shape[1]
    a = xp.matmul(x2, W1d)                                    # (N, H)
    h = call.empty((N, H), dt)
    fwd, _ = _cuda.kernels(_cuda_factory, dt.name)
    grid, nt = _rows_grid(N, H)
    _cuda.launch(fwd, grid, nt, a, b1d if b1d is not None else xp.zeros(H, dt), h, _consts(dt))
    y = xp.matmul(h, W2d)                                     # (N, C_out)
    if b2d is not None:
        y += b2d
    cache = (call, x2, W1d, b1d is not None, W2d, b2d is not None, a, x.shape)
    return call.out(y.reshape(x.shape[:-1] + (Co,))), cache


def backward_cuda(dy, cache):
    from . import _cuda
    call, x2, W1, has_b1, W2, has_b2, a, xshape = cache
    dt, xp = x2.dtype, call.xp
    Co = W2.shape[1]
    dy = _cuda.dout(call, NAME, dy, xshape[:-1] + (Co,), dt, "dy")
    dy2 = dy.reshape(-1, Co)
    N, H = a.shape
    da = xp.matmul(dy2, W2.T)                                 # dh, becomes da in place
    h = call.empty((N, H), dt)
    _, bwd = _cuda.kernels(_cuda_factory, dt.name)
    grid, nt = _rows_grid(N, H)
    _cuda.launch(bwd, grid, nt, a, da, h, _consts(dt))
    dW2 = xp.matmul(h.T, dy2)
    db2 = _cuda.column_sums(call, dy2) if has_b2 else None
    dW1 = xp.matmul(x2.T, da)
    db1 = _cuda.column_sums(call, da) if has_b1 else None
    dx = xp.matmul(da, W1.T).reshape(xshape)
    return tuple(call.out(g) for g in (dx, dW1, db1, dW2, db2))


CUDA = Kernel(NAME, "cuda", forward_cuda, backward_cuda, ("x", "W1", "b1", "W2", "b2"))

# ---------------------------------------------------------------- the family

def _inputs(p, dtype, rng):
    N, C, H = p["N"], p["C"], p["H"]
    Co = p.get("Co", C)                                   # C_out, C unless given
    shapes = [(N, C), (C, H), (H,), (H, Co), (Co,)]
    scale = [1.0, C ** -0.5, 0.1, H ** -0.5, 0.1]
    return tuple((rng.standard_normal(s) * f).astype(dtype) for s, f in zip(shapes, scale)), {}


def _work(p, it):
    N, C, H = p["N"], p["C"], p["H"]
    # FLOPs: forward two (N, C, H) products, backward four (+ GELU, ignored)
    f = 2 * N * C * H
    # bytes: forward reads x, W1, W2, writes the pre-activation and y; backward reads dy,
    # the pre-activation, x, W1, W2, writes dx, dW1, dW2
    fb = (2 * N * C + 2 * C * H + N * H) * it
    bb = (3 * N * C + N * H + 4 * C * H) * it
    return Work((2 * f, 4 * f), (fb, bb))


def _size(N, C, H, Co=None):
    return Size({"N": N, "C": C, "H": H} if Co is None else {"N": N, "C": C, "H": H, "Co": Co})


def _label(p):
    return f"N={p['N']} C={p['C']} H={p['H']}" + (f" Co={p['Co']}" if "Co" in p else "")


FAMILY = Family(
    NAME, _inputs, _work, label=_label, unit=GFLOPS, sweep="N",
    test_sizes=(_size(1, 1, 1, 1), _size(1, 3, 5, 2), _size(4, 5, 7, 3), _size(7, 13, 37, 11),
                _size(65, 32, 96, 16)),
    quick_sizes=(_size(128, 128, 512), _size(256, 256, 1024)),
    full_sizes=tuple(_size(N, 768, 3072) for N in (256, 512, 1024, 2048)),
    torch="mlp")


if __name__ == "__main__":
    from ._harness import run
    run(NAME)
