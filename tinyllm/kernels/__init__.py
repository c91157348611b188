"""Hot kernels: plain array functions, one module per family, no Tensor in sight.

Each family module ``tinyllm/kernels/<name>.py`` (every module here without a leading
underscore is one; ``FAMILIES`` lists them from the package's files, nothing keeps a list by
hand) holds

1. the NumPy reference, the specification: readable, with the equation and shapes;
2. the Numba CPU version, compiled lazily on first call (``cache=True``), never at import;
3. ``FAMILY = Family(...)`` (``_family.py``): how to build its inputs at a size, the work a
   call does, its test / quick / full sizes, its tolerance and its PyTorch equivalent. The
   contract test, ``python -m tinyllm.kernels.<name>``, ``tinyllm bench`` and the torch peer
   all read it.

All of them keep one contract::

    out, cache = k.forward(*arrays, **options)
    grads      = k.backward(dout, cache)        # a tuple, one per differentiable input

(families without a backward, such as an optimiser update, set ``FAMILY.backward = False``
and ``Kernel.backward = None``). Pick an implementation with ``get``::

    k = tl.kernels.get("softmax")               # the current default
    k = tl.kernels.get("softmax", impl="numpy") # the reference
    tl.kernels.family("softmax").sizes("test")  # the declarative description

The default comes from, in order: ``with tl.kernels.use("numpy"):``, the ``TINYLLM_KERNELS``
environment variable (``numpy``, ``numba`` or ``cuda``), and otherwise ``numba`` when Numba
imports. ``tl.functional`` asks the registry on every call, so one setting switches the whole
engine.

``cuda`` (``CUDA`` in a family module, ``numba.cuda`` kernels, launched through ``_cuda.py``)
runs on a GPU, or on Numba's CUDA simulator when ``NUMBA_ENABLE_CUDASIM=1`` was set before
the first import of numba.cuda. ``available(name)`` lists it only on a real GPU (the simulator
is a test tool, reached by name). Under a *default* of ``cuda`` a family without a CUDA
version (an optimiser update, the additive attention) runs its Numba (or NumPy) version.

``python -m tinyllm.kernels.<family>`` checks every implementation against the reference and
then times it (``_harness.py``).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ._family import GBPS, GFLOPS, Family, Size, Work

# the family modules, from the package's files (importing none of them)
FAMILIES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                        if not m.name.startswith("_") and not m.ispkg))
IMPLS = ("numpy", "numba", "cuda")
_ATTR = {"numpy": "REFERENCE", "numba": "NUMBA", "cuda": "CUDA"}


@dataclass(frozen=True)
class Kernel:
    """One implementation of one kernel family: ``forward`` and ``backward`` under the
    contract above. ``inputs`` names the differentiable inputs, in the order ``backward``
    returns their gradients."""
    name: str
    impl: str
    forward: Callable
    backward: Callable | None       # None for a family without a backward (FAMILY.backward)
    inputs: tuple

    def __repr__(self):
        return f"<kernel {self.name}[{self.impl}]>"


_local = threading.local()


def _numba_available() -> bool:
    from ._nb import HAVE_NUMBA
    return HAVE_NUMBA


def _cuda_usable() -> bool:
    from ._cuda import usable
    return usable()


def _cuda_on_gpu() -> bool:
    from ._cuda import on_gpu
    return on_gpu()


def _ready(impl: str) -> bool:
    """Whether ``impl`` can run here at all (cuda: a GPU, the simulator or ptx mode)."""
    if impl == "numba":
        return _numba_available()
    if impl == "cuda":
        return _cuda_usable()
    return True


def _check_impl(impl: str, where: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"{where}: unknown kernel implementation {impl!r}; "
                         f"choose one of {', '.join(IMPLS)}")
    return impl


def default_impl() -> str:
    """The implementation ``get(name)`` returns now (see the module docstring for the order)."""
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    env = os.environ.get("TINYLLM_KERNELS", "").strip().lower()
    if env:
        return _check_impl(env, "TINYLLM_KERNELS")
    return "numba" if _numba_available() else "numpy"


@contextlib.contextmanager
def use(impl: str):
    """``with tl.kernels.use("numpy"):`` makes every kernel lookup inside the block (and so
    every ``tl.functional`` op) use ``impl``. Nested blocks restore the outer choice."""
    _check_impl(impl, "kernels.use")
    if impl == "numba" and not _numba_available():
        raise RuntimeError("kernels.use: Numba does not import here, so 'numba' is unavailable")
    if impl == "cuda" and cuda_unavailable():
        raise RuntimeError(f"kernels.use: 'cuda' is unavailable: {cuda_unavailable()}")
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(impl)
    try:
        yield
    finally:
        stack.pop()


def module(name: str):
    """The family module ``tinyllm.kernels.<name>``."""
    if name not in FAMILIES:
        raise KeyError(f"unknown kernel {name!r}; the kernels are "
                       f"{', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{name}")


def get(name: str, impl: str | None = None, device: str = "cpu") -> Kernel:
    """The ``impl`` implementation of kernel family ``name`` (default: ``default_impl()``).
    ``device="cuda"`` (inputs on the GPU) picks the family's ``cuda`` kernel, or, for a family
    without one, the default CPU kernel (the caller then hands it host arrays)."""
    explicit = impl is not None
    mod = module(name)
    if device == "cuda" and impl is None:
        has = getattr(mod, "CUDA", None) is not None
        impl = "cuda" if has else default_impl()
        if not has and impl == "cuda":
            impl = "numba" if _numba_available() else "numpy"
    impl = default_impl() if impl is None else _check_impl(impl, f"kernels.get({name!r})")
    if impl == "cuda" and not explicit and getattr(mod, "CUDA", None) is None:
        impl = "numba" if _numba_available() else "numpy"     # no GPU version: the CPU one
    k = getattr(mod, _ATTR[impl], None)
    if k is not None and impl == "cuda" and cuda_unavailable():
        raise RuntimeError(f"kernel {name!r}: 'cuda' is unavailable: {cuda_unavailable()}")
    if k is None or not _ready(impl):
        have = [i for i in IMPLS if getattr(mod, _ATTR[i], None) is not None and _ready(i)]
        raise RuntimeError(f"kernel {name!r} has no {impl!r} implementation here; "
                           f"available: {', '.join(have)}")
    return k


def family(name: str):
    """The declarative description ``Family`` of kernel family ``name`` (its ``FAMILY``)."""
    return module(name).FAMILY


def available(name: str) -> list[str]:
    """The implementations of ``name`` that can run on this machine (``cuda`` only on a real
    GPU: under the simulator it is reachable by name, ``get(name, "cuda")``)."""
    mod = module(name)
    return [i for i in IMPLS if getattr(mod, _ATTR[i], None) is not None
            and (_cuda_on_gpu() if i == "cuda" else _ready(i))]


def numba_available() -> bool:
    """True when Numba imports here (then ``"numba"`` is an implementation one can use)."""
    return _numba_available()


def cuda_unavailable() -> str | None:
    """None when the ``cuda`` kernels can run here (a GPU, the simulator or ptx mode), else
    the one-line reason (no numba-cuda, no GPU, no CuPy)."""
    from ._cuda import mode
    try:
        mode()
        return None
    except Exception as e:                     # CudaUnavailable, or a bad TINYLLM_CUDA_PTX
        return str(e)


def num_threads() -> int:
    """Threads Numba's parallel loops use now (1 without Numba). Nothing outside
    ``tinyllm/kernels`` imports the private ``_nb``; this is the public answer."""
    from ._nb import num_threads as _threads
    return _threads()


def matmul(a, b, bias=None):
    """``a @ b`` (``+ bias``) of 2-D arrays by the implementation in effect: with ``numba``,
    the tiled product on Numba's threads (``tinyllm.kernels._gemm``: one thread pool, BLAS
    single-threaded on each tile, the bias added in the tile); otherwise, and for any other
    array type, NumPy's (or the array's own) matmul. Returns a new array."""
    if (type(a) is np.ndarray and type(b) is np.ndarray and a.ndim == 2 and b.ndim == 2
            and default_impl() == "numba"):
        from ._gemm import gemm
        return gemm(a, b, bias=bias)
    out = a @ b
    if bias is not None:
        out += bias
    return out


def matmul_batch(products) -> list:
    """``[a @ b for a, b in products]``: independent 2-D products (a backward's dx and dW,
    say) in one parallel region with the ``numba`` implementation (``_gemm.gemm_batch``:
    whole products one per thread where there are enough of them); otherwise one by one."""
    products = list(products)
    if default_impl() == "numba" and all(type(a) is np.ndarray and type(b) is np.ndarray
                                         and a.ndim == 2 == b.ndim for a, b in products):
        from ._gemm import gemm_batch
        return gemm_batch(products)
    return [matmul(a, b) for a, b in products]


def split_heads(qkv, B: int, T: int, H: int, hs: int):
    """qkv (B T, 3 H hs) -> a new (3, B, H, T, hs) array: q, k, v cut into heads
    (``tinyllm.kernels._heads``; NumPy's strided copy for the ``numpy`` implementation and for
    other array types)."""
    if type(qkv) is np.ndarray and default_impl() == "numba":
        from ._heads import split_heads as _split
        return _split(qkv, B, T, H, hs)
    return qkv.reshape(B, T, 3, H, hs).transpose(2, 0, 3, 1, 4).copy()   # C-ordered


def merge_heads(dq, dk, dv, B: int, T: int, H: int, hs: int, dtype):
    """The gradient of ``split_heads``: dq, dk, dv (B, H, T, hs), None for a zero block ->
    (B T, 3 H hs)."""
    if default_impl() == "numba" and all(d is None or type(d) is np.ndarray
                                         for d in (dq, dk, dv)):
        from ._heads import merge_heads as _merge
        return _merge(dq, dk, dv, B, T, H, hs, dtype)
    from ..backend import xp                   # the gradients' array module (a device's)
    mod = xp(next(d for d in (dq, dk, dv) if d is not None))
    g = mod.zeros((B, T, 3, H, hs), dtype)
    for i, d in enumerate((dq, dk, dv)):
        if d is not None:
            g[:, :, i] = d.transpose(0, 2, 1, 3)
    return g.reshape(B * T, 3 * H * hs)


__all__ = ["FAMILIES", "IMPLS", "Kernel", "get", "use", "default_impl", "available", "module",
           "family", "Family", "Size", "Work", "GBPS", "GFLOPS", "numba_available",
           "num_threads", "cuda_unavailable", "matmul", "matmul_batch", "split_heads",
           "merge_heads"]
