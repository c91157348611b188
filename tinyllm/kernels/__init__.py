"""Hot kernels: plain array functions, one module per family, no Tensor in sight.

Each family module (``softmax``, ``cross_entropy``, ``layernorm``, ``mlp``, ``attention``,
``additive_attention``, ``decode_attention``) holds

1. the NumPy reference, the specification: readable, with the equation and shapes;
2. the Numba CPU version, compiled lazily on first call (``cache=True``), never at import;
3. a slot for the CuPy GPU version (``CUPY = None`` until it exists).

All of them keep one contract::

    out, cache = k.forward(*arrays, **options)
    grads      = k.backward(dout, cache)        # a tuple, one per differentiable input

Pick an implementation with ``get``::

    k = tl.kernels.get("softmax")               # the current default
    k = tl.kernels.get("softmax", impl="numpy") # the reference

The default comes from, in order: ``with tl.kernels.use("numpy"):``, the ``TINYLLM_KERNELS``
environment variable (``numpy`` or ``numba``), and otherwise ``numba`` when Numba imports.
``tl.functional`` asks the registry on every call, so one setting switches the whole engine.

``python -m tinyllm.kernels.<family>`` checks every implementation against the reference and
then times it.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
from dataclasses import dataclass
from typing import Callable

FAMILIES = ("softmax", "cross_entropy", "layernorm", "mlp", "attention", "additive_attention",
            "decode_attention")
IMPLS = ("numpy", "numba", "cupy")
_ATTR = {"numpy": "REFERENCE", "numba": "NUMBA", "cupy": "CUPY"}


@dataclass(frozen=True)
class Kernel:
    """One implementation of one kernel family: ``forward`` and ``backward`` under the
    contract above. ``inputs`` names the differentiable inputs, in the order ``backward``
    returns their gradients."""
    name: str
    impl: str
    forward: Callable
    backward: Callable
    inputs: tuple

    def __repr__(self):
        return f"<kernel {self.name}[{self.impl}]>"


_local = threading.local()


def _numba_available() -> bool:
    from ._nb import HAVE_NUMBA
    return HAVE_NUMBA


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
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(impl)
    try:
        yield
    finally:
        stack.pop()


def module(name: str):
    """The family module ``tinyllm.kernels.<name>``."""
    if name not in FAMILIES + UPDATE_FAMILIES:
        raise KeyError(f"unknown kernel {name!r}; the kernels are "
                       f"{', '.join(FAMILIES + UPDATE_FAMILIES)}")
    return importlib.import_module(f"{__name__}.{name}")


def get(name: str, impl: str | None = None) -> Kernel:
    """The ``impl`` implementation of kernel family ``name`` (default: ``default_impl()``)."""
    impl = default_impl() if impl is None else _check_impl(impl, f"kernels.get({name!r})")
    mod = module(name)
    k = getattr(mod, _ATTR[impl], None)
    if k is None or (impl == "numba" and not _numba_available()):
        have = [i for i in IMPLS if getattr(mod, _ATTR[i], None) is not None
                and (i != "numba" or _numba_available())]
        raise RuntimeError(f"kernel {name!r} has no {impl!r} implementation here; "
                           f"available: {', '.join(have)}")
    return k


def available(name: str) -> list[str]:
    """The implementations of ``name`` that can run on this machine."""
    mod = module(name)
    return [i for i in IMPLS if getattr(mod, _ATTR[i], None) is not None
            and (i != "numba" or _numba_available())]


__all__ = ["FAMILIES", "IMPLS", "Kernel", "get", "use", "default_impl", "available", "module"]


# ==================================================================== branch optk (issue 9)
# The lead merges this block with the registry rewrite (families derived from the modules).
#
# The optimiser families: forward-only updates in place (no backward). Listed here so the
# registry finds them until the family list is derived from the modules; they are not in
# FAMILIES because the bench and the layout test of this branch still read that tuple.
UPDATE_FAMILIES = ("sgd", "adam", "grad_norm")


# Public answers about Numba, so that nothing outside kernels/ imports the private _nb.
def numba_available() -> bool:
    """True when Numba imports here (then ``"numba"`` is an implementation one can use)."""
    return _numba_available()


def num_threads() -> int:
    """Threads Numba's parallel loops use now (1 without Numba)."""
    from ._nb import num_threads as _threads
    return _threads()


__all__ += ["UPDATE_FAMILIES", "numba_available", "num_threads"]
