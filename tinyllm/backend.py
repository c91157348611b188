"""Devices: where an array lives, and the array module (``xp``) that computes on it.

Two devices: ``"cpu"`` (NumPy arrays) and ``"cuda"``. On a machine with a GPU a cuda array
is a CuPy array: cuBLAS does its matrix products, CuPy's elementwise machinery its ufuncs,
and the numba.cuda kernels of ``tinyllm.kernels`` read it in place. Without a GPU, cuda
exists only when Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``, which
``tests/conftest.py`` sets): then a cuda array is a ``SimDeviceArray``, an ``np.ndarray``
subclass that plays CuPy's part strictly enough that the device rules are tested here:

- ufuncs and NumPy functions on it give ``SimDeviceArray`` results (as CuPy gives CuPy);
- a plain (host) ``np.ndarray`` operand next to it is refused with a TypeError, as CuPy
  refuses one (NumPy and Python scalars are fine, in both);
- ``ufunc.at`` (``np.add.at``) is refused: on a GPU it is a scatter with atomics, whose float
  sums change with the thread order, and tinyllm's device results are deterministic;
- ufuncs that NumPy itself does not export (``scipy.special.expit``, ``erf``) are refused:
  CuPy has no such method on its arrays; ops take them from ``special(a)`` instead;
- ``to_device`` / ``to_host`` copy, as transfers do; ``.get()`` gives a host copy (CuPy's
  name).

What it cannot catch: ``np.asarray(sim)`` silently gives a host view (on CuPy it raises).

    xp(a)              numpy, cupy, or the simulated device's stand-in for cupy
    device_of(a)       "cpu" | "cuda"
    to_device(a, dev)  a copy on dev (a itself if already there)
    require_cuda()     "sim" | "gpu", or DeviceError naming the fix

Rank 0: imports nothing from tinyllm but ``errors``; ``import tinyllm`` never imports CuPy.
"""
from __future__ import annotations

import functools
import os
import sys

import numpy as np

from .errors import DeviceError

DEVICES = ("cpu", "cuda")


# ---------------------------------------------------------------- the simulated device

def _is_host(a) -> bool:
    """A host array that a device op must not take: a plain ndarray (0-d included)."""
    return isinstance(a, np.ndarray) and not isinstance(a, SimDeviceArray)


def _refuse_host(what: str, items) -> None:
    for x in items:
        if _is_host(x):
            raise TypeError(f"{what}: a host (NumPy) array of shape {x.shape} met a cuda "
                            f"array; move it with tinyllm.backend.to_device(a, 'cuda') "
                            f"(CuPy refuses the mix the same way)")
        if isinstance(x, (list, tuple)):
            _refuse_host(what, x)


def _raw_all(x):
    if isinstance(x, SimDeviceArray):
        return x.view(np.ndarray)
    if isinstance(x, (list, tuple)):
        return type(x)(_raw_all(i) for i in x)
    return x


def _wrap_all(x):
    if type(x) is np.ndarray:
        return x.view(SimDeviceArray)
    if isinstance(x, np.generic):        # CuPy's reductions give 0-d device arrays
        return np.asarray(x).view(SimDeviceArray)
    if isinstance(x, (list, tuple)):
        return type(x)(_wrap_all(i) for i in x)
    return x


class SimDeviceArray(np.ndarray):
    """A cuda array on Numba's CUDA simulator: host memory that behaves like a CuPy array
    (module docstring). Make one with ``to_device(a, "cuda")``."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        name = getattr(ufunc, "__name__", str(ufunc))
        if method == "at":
            raise TypeError(f"{name}.at on a cuda array: a GPU scatter with atomics sums in "
                            f"thread order (not deterministic); use a sort and a segment sum")
        if getattr(np, name, None) is not ufunc:
            raise TypeError(f"{name}: not a NumPy ufunc, and CuPy has none of that name for "
                            f"cuda arrays; use tinyllm.backend.special(a).{name}")
        _refuse_host(name, inputs)
        if out is not None:
            _refuse_host(name, out)
            kwargs["out"] = tuple(_raw_all(o) for o in out)
        res = getattr(ufunc, method)(*_raw_all(inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap_all(res)

    def __array_function__(self, func, types, args, kwargs):
        name = getattr(func, "__name__", str(func))
        _refuse_host(name, args)
        _refuse_host(name, tuple(kwargs.values()))
        return _wrap_all(func(*_raw_all(args), **{k: _raw_all(v) for k, v in kwargs.items()}))

    def __getitem__(self, idx):
        _refuse_host("indexing", idx if isinstance(idx, tuple) else (idx,))
        return _wrap_all(np.ndarray.__getitem__(self.view(np.ndarray), _raw_all(idx)))

    def __setitem__(self, idx, value):
        _refuse_host("index assignment", (idx if isinstance(idx, tuple) else (idx,)))
        _refuse_host("index assignment", (value,))
        np.ndarray.__setitem__(self.view(np.ndarray), _raw_all(idx), _raw_all(value))

    def get(self) -> np.ndarray:
        """A host copy (CuPy's name for it)."""
        return np.array(self.view(np.ndarray), copy=True)

    def __repr__(self):
        return f"SimDeviceArray({np.array2string(self.view(np.ndarray))}, dtype={self.dtype})"


class _SimNumPy:
    """The simulated device's ``xp``: NumPy's names, with array results on the device.
    ``asarray``/``array`` copy a host array over, as ``cupy.asarray`` does."""

    __name__ = "tinyllm.backend.simnumpy"

    def asarray(self, a, dtype=None):
        if isinstance(a, SimDeviceArray):
            return a if dtype is None or a.dtype == dtype else a.astype(dtype)
        return np.array(a, dtype=dtype, copy=True).view(SimDeviceArray)

    array = asarray

    def ascontiguousarray(self, a, dtype=None):
        return _wrap_all(np.ascontiguousarray(_raw_all(self.asarray(a)), dtype=dtype))

    def __getattr__(self, name):
        obj = getattr(np, name)
        if isinstance(obj, np.ufunc) or not callable(obj) or isinstance(obj, type):
            return obj

        @functools.wraps(obj)
        def on_device(*args, **kwargs):
            _refuse_host(name, args)
            return _wrap_all(obj(*_raw_all(args), **kwargs))
        return on_device


class _SimSpecial:
    """scipy.special's functions on simulated cuda arrays (cupyx.scipy.special's part)."""

    def __getattr__(self, name):
        from scipy import special
        f = getattr(special, name)

        def on_device(*args, **kwargs):
            _refuse_host(name, args)
            return _wrap_all(f(*_raw_all(args), **kwargs))
        return on_device


simnumpy = _SimNumPy()
_simspecial = _SimSpecial()


# ---------------------------------------------------------------- what is here

def simulator() -> bool:
    """True when Numba's CUDA simulator is (or will be, at its import) on."""
    if "numba.cuda" in sys.modules:
        try:
            from numba.cuda.core import config        # numba-cuda
        except ImportError:
            from numba.core import config
        return bool(config.ENABLE_CUDASIM)
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")


@functools.cache
def _gpu_reason() -> str | None:
    """None when CuPy imports and sees a GPU, else why not (one line)."""
    try:
        import cupy
    except ImportError:
        return "CuPy does not import here (install the 'gpu' extra on a machine with a GPU)"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:                            # no driver, broken driver
        return f"CuPy finds no CUDA device ({type(e).__name__}: {str(e).splitlines()[0]})"
    return None if n > 0 else "CuPy finds no CUDA device"


def cuda_mode() -> str | None:
    """``"sim"`` (the simulator is on), ``"gpu"`` (CuPy and a device), or None."""
    if simulator():
        return "sim"
    return "gpu" if _gpu_reason() is None else None


def require_cuda(what: str = "device 'cuda'") -> str:
    """``"sim"`` or ``"gpu"``; DeviceError naming the fix when neither is here."""
    m = cuda_mode()
    if m is None:
        raise DeviceError(f"{what}: no CUDA GPU here ({_gpu_reason()}); train on cpu, or "
                          f"set NUMBA_ENABLE_CUDASIM=1 to run cuda on Numba's simulator")
    return m


def check_device(device, what: str = "device") -> str:
    """``device`` as "cpu" or "cuda" ("cuda:0" is "cuda"); DeviceError otherwise."""
    d = str(device).strip().lower() if isinstance(device, str) else device
    if d == "cuda:0":
        d = "cuda"
    if d not in DEVICES:
        raise DeviceError(f"{what}: unknown device {device!r}; choose 'cpu' or 'cuda'")
    return d


# ---------------------------------------------------------------- arrays

def _is_cupy(a) -> bool:
    return type(a).__module__.startswith("cupy") and hasattr(a, "__cuda_array_interface__")


def is_device(a) -> bool:
    """A cuda array (CuPy, or SimDeviceArray on the simulator)."""
    return isinstance(a, SimDeviceArray) or _is_cupy(a)


def is_array(a) -> bool:
    """A host or a device array."""
    return isinstance(a, np.ndarray) or _is_cupy(a)


def device_of(a) -> str:
    """``"cuda"`` for a device array, ``"cpu"`` for anything else."""
    if type(a) is np.ndarray:
        return "cpu"
    return "cuda" if is_device(a) else "cpu"


def xp(a):
    """The array module that computes on ``a``: numpy, cupy, or ``simnumpy``."""
    if type(a) is np.ndarray or not is_device(a):
        return np
    if isinstance(a, SimDeviceArray):
        return simnumpy
    import cupy
    return cupy


def special(a):
    """scipy.special for host arrays; its device counterpart for cuda ones."""
    if not is_device(a):
        from scipy import special as s
        return s
    if isinstance(a, SimDeviceArray):
        return _simspecial
    from cupyx.scipy import special as s
    return s


def to_device(a, device: str):
    """``a`` on ``device``: itself if it is there already, else a copy. Python numbers and
    NumPy scalars pass through (both sides take them)."""
    device = check_device(device)
    if not is_array(a):
        return a
    if device == "cpu":
        return a.get() if is_device(a) else a
    if is_device(a):
        return a
    if require_cuda() == "sim":
        return simnumpy.asarray(a)
    import cupy
    return cupy.asarray(a)


def to_host(a):
    """A NumPy array of ``a``'s values (a copy if it is on the device, else ``a``)."""
    return a.get() if is_device(a) else a


def raw(a):
    """What a numba.cuda kernel reads: a CuPy array as it is; on the simulator, the plain
    ndarray under a SimDeviceArray (no copy). Anything else passes through."""
    return a.view(np.ndarray) if isinstance(a, SimDeviceArray) else a


def host_view(a):
    """Host memory for a CPU kernel: the simulator's arrays as views (no copy: in-place
    updates stay on the device), a CuPy array copied. Anything else passes through."""
    if isinstance(a, SimDeviceArray):
        return a.view(np.ndarray)
    return a.get() if _is_cupy(a) else a


def adopt(a, device: str):
    """A kernel's result on ``device``: a plain ndarray becomes a device array (a view on
    the simulator, a copy on a GPU); device arrays and non-arrays pass through."""
    if device == "cpu" or type(a) is not np.ndarray:
        return a
    if cuda_mode() == "sim":
        return a.view(SimDeviceArray)
    import cupy
    return cupy.asarray(a)


def op_device(op: str, arrays, tensor: tuple) -> str:
    """The one device of an op's arrays (``tensor[i]``: whether arrays[i] came from a
    Tensor), or DeviceError naming the op and both devices. Non-Tensor device arrays count
    too; non-Tensor host arrays (indices, masks, constants) follow the Tensors."""
    seen = {}
    for i, (a, t) in enumerate(zip(arrays, tensor)):
        if t or is_device(a):
            seen.setdefault(device_of(a), i)
    if len(seen) > 1:
        raise DeviceError(f"{op}: its inputs are on different devices, cpu (input "
                          f"{seen['cpu']}) and cuda (input {seen['cuda']}); move them to one "
                          f"device with .to('cuda') or .to('cpu')")
    return next(iter(seen), "cpu")


def follow(a, device: str):
    """A non-Tensor argument of an op on ``device``: a host array is copied over (a 0-d
    one becomes a NumPy scalar, which both sides take without a transfer)."""
    if device == "cpu" or not _is_host(a):
        return a
    if a.ndim == 0:
        return a[()]
    return to_device(a, device)


__all__ = ["DEVICES", "SimDeviceArray", "simnumpy", "simulator", "cuda_mode", "require_cuda",
           "check_device", "is_device", "is_array", "device_of", "xp", "special", "to_device",
           "to_host", "raw", "host_view", "adopt", "op_device", "follow"]
