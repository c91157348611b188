"""Process-wide settings, in one place: Numba's threading layer, thread counts, malloc.

``import tinyllm`` changes nothing global. The settings below belong to the *process*, not to
a model, so the library leaves them alone until a program asks for them. The command line
(``tinyllm train | generate | demo | bench | ...``), the benchmark and the demo ask; a script
or a notebook opts in the same way, once, before it trains anything::

    import tinyllm as tl
    from tinyllm import runtime
    runtime.configure()                          # the CLI's settings: Numba on "omp"
    runtime.configure(threads=2, keep_freed_memory=True)   # also pin threads, tune malloc
    with runtime.pinned_threads(1):              # one thread for a block, restored after
        ...

What each setting does:

- ``numba_layer`` (default ``"omp"``, or ``"workqueue"`` where OpenMP does not load): the
  threading layer of Numba's parallel loops. Numba fixes its layer at its first parallel
  call, so ``configure`` must run before the first kernel; later it changes nothing
  (``configure`` returns the layer in effect). A user's own ``NUMBA_THREADING_LAYER``
  environment variable always wins; pass ``numba_layer=None`` to leave Numba's default.
  A launch on ``omp`` costs ~2 us (its workers spin a while before they sleep), on
  ``workqueue`` 50-105 us (its sleeping workers must be woken). A GPT step makes a hundred
  or more parallel calls, a decoding step ~50, so the layer matters. ``omp``'s spinning
  workers used to slow the BLAS calls between the kernels (NumPy's OpenBLAS runs a pool of
  its own: a float GPT decoded 2.5x slower on ``omp``); since the matrix products run on
  Numba's pool too (``tinyllm.kernels.matmul``: single-threaded BLAS on tiles, one pool for
  everything), nothing competes with them. Kernels ask ``cheap_launches()`` how small a
  product may still run in parallel. ``INFERENCE_NUMBA_LAYER`` / ``inference_layer()`` name
  the same choice for inference programs.
- ``threads``: BLAS (NumPy's and SciPy's, through threadpoolctl) and Numba's parallel loops
  limited to ``threads`` threads from now on (None: leave them). Results are bitwise
  reproducible at a fixed thread count, so pinning also fixes the numbers.
  ``pinned_threads(n)`` does the same for a ``with`` block and restores the counts after;
  ``Pinned(n)`` is the same object for code that restores it itself (``.restore()``).
- ``keep_freed_memory``: ask glibc's malloc to keep freed memory for reuse instead of
  returning it to the OS (Linux only; see ``keep_freed_memory``): about 10% per GPT
  training step here.

This module imports only the standard library at import time; numba, threadpoolctl and SciPy
are imported when a function needs them. It sits beside ``errors`` at the bottom of the
layers and imports nothing from tinyllm.
"""
from __future__ import annotations

import os

DEFAULT_NUMBA_LAYER = "omp"
FALLBACK_NUMBA_LAYER = "workqueue"               # where OpenMP (libgomp) does not load
INFERENCE_NUMBA_LAYER = DEFAULT_NUMBA_LAYER      # the same layer now (kept as a name)
_CHEAP = ("omp", "tbb")                          # layers whose workers spin between launches


def _numba():
    try:
        import numba
    except ImportError:                          # pragma: no cover - numba is a dependency
        return None
    return numba


def numba_layer_in_effect() -> str | None:
    """The layer Numba runs (or, before its first parallel call, will run) its parallel loops
    on; None without Numba."""
    numba = _numba()
    if numba is None:                            # pragma: no cover
        return None
    try:
        return str(numba.threading_layer())      # fixed once a parallel function ran
    except ValueError:                           # not launched yet: what it will choose
        return str(numba.config.THREADING_LAYER)


def numba_threads() -> int:
    """Threads Numba's parallel loops use now (1 without Numba)."""
    numba = _numba()
    return 1 if numba is None else int(numba.get_num_threads())


def _loadable(layer: str) -> str:
    """``layer``, or ``FALLBACK_NUMBA_LAYER`` when it is "omp" and OpenMP does not load."""
    if layer != "omp":
        return layer
    try:
        from numba.np.ufunc import omppool  # noqa: F401
    except ImportError:                          # pragma: no cover - no libgomp here
        return FALLBACK_NUMBA_LAYER
    return layer


def inference_layer() -> str:
    """The layer inference programs ask for: ``INFERENCE_NUMBA_LAYER`` where Numba can load
    it (OpenMP needs libgomp), else ``FALLBACK_NUMBA_LAYER``."""
    return _loadable(INFERENCE_NUMBA_LAYER)


_launched = None                                 # the layer, once Numba has fixed it


def cheap_launches() -> bool:
    """Whether a Numba parallel launch costs microseconds (``omp``, ``tbb``) rather than a
    wake-up of sleeping workers (``workqueue``): the layer in effect, or the one Numba will
    pick at its first parallel call."""
    global _launched
    if _launched is not None:
        return _launched in _CHEAP
    numba = _numba()
    if numba is None:                            # pragma: no cover
        return False
    try:
        _launched = str(numba.threading_layer())
        return _launched in _CHEAP
    except ValueError:                           # not launched yet
        return str(numba.config.THREADING_LAYER) in _CHEAP


def set_numba_layer(layer: str | None = DEFAULT_NUMBA_LAYER) -> str | None:
    """Choose Numba's threading layer unless ``NUMBA_THREADING_LAYER`` is set or ``layer`` is
    None. Effective only before Numba's first parallel call; returns the layer in effect."""
    numba = _numba()
    if numba is None:                            # pragma: no cover
        return None
    if layer is not None and "NUMBA_THREADING_LAYER" not in os.environ:
        try:
            numba.threading_layer()              # already launched: too late to change
        except ValueError:
            numba.config.THREADING_LAYER = _loadable(layer)
    return numba_layer_in_effect()


class Pinned:
    """BLAS and Numba limited to ``n`` threads until ``restore()`` (or the end of a ``with``
    block). ``scipy_blas`` first loads SciPy's BLAS (the one Numba's ``np.dot`` calls), so
    that it is limited too; threadpoolctl only limits libraries already loaded."""

    def __init__(self, n: int, scipy_blas: bool = True):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"runtime.Pinned: the thread count must be an int >= 1, "
                             f"got {n!r}")
        if scipy_blas:
            try:
                import scipy.linalg  # noqa: F401
            except ImportError:                  # pragma: no cover - numba brings scipy
                pass
        from threadpoolctl import threadpool_limits
        self.n = n
        self._limits = threadpool_limits(limits=n)
        self._numba = None
        numba = _numba()
        if numba is not None:
            self._numba = numba.get_num_threads()
            numba.set_num_threads(n)

    def restore(self) -> None:
        """Put the thread counts back as they were before."""
        self._limits.restore_original_limits()
        if self._numba is not None:
            _numba().set_num_threads(self._numba)
            self._numba = None

    def __enter__(self) -> "Pinned":
        return self

    def __exit__(self, *exc) -> bool:
        self.restore()
        return False


def pinned_threads(n: int, scipy_blas: bool = True) -> Pinned:
    """``with pinned_threads(n): ...``: BLAS and Numba on ``n`` threads inside the block."""
    return Pinned(n, scipy_blas=scipy_blas)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    A training step allocates and frees the same few-MB activation arrays every step. By
    default glibc serves each one with a fresh mmap, and first touching fresh pages costs more
    than many of the kernels that fill them. Raising the mmap and trim thresholds makes those
    arrays come back from the heap, already mapped (about 10% per GPT step measured here).
    Process-wide and permanent. Returns False where it does not apply (not Linux/glibc).
    """
    import ctypes
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 512 << 20) == 1
        ok &= libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
        ok &= libc.mallopt(M_TOP_PAD, 64 << 20) == 1
        return bool(ok)
    except (OSError, AttributeError):
        return False


def configure(threads: int | None = None, numba_layer: str | None = DEFAULT_NUMBA_LAYER,
              keep_freed_memory: bool = False) -> dict:
    """Apply the process-wide settings (see the module docstring); returns what is in effect:
    ``{"numba_layer": str | None, "threads": int | None, "keep_freed_memory": bool}``.

    Call it once, early: before the first kernel runs (Numba's layer is fixed then). Calling
    it again is harmless. ``threads`` pins BLAS and Numba for the rest of the process (use
    ``pinned_threads`` for a block)."""
    layer = set_numba_layer(numba_layer)
    if threads is not None:
        Pinned(threads)                          # not restored: pinned from now on
    kept = _keep_freed_memory() if keep_freed_memory else False
    return {"numba_layer": layer, "threads": threads, "keep_freed_memory": kept}


_keep_freed_memory = keep_freed_memory

__all__ = ["configure", "set_numba_layer", "numba_layer_in_effect", "numba_threads", "Pinned",
           "pinned_threads", "keep_freed_memory", "DEFAULT_NUMBA_LAYER",
           "INFERENCE_NUMBA_LAYER", "FALLBACK_NUMBA_LAYER", "inference_layer", "cheap_launches"]
