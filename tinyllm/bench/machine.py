"""The machine a benchmark ran on, and the thread counts it ran with.

Pinning this process's pools (NumPy's and SciPy's BLAS through threadpoolctl, Numba's
parallel loops) is ``tinyllm.runtime.Pinned(n)``; ``child_env(n)`` gives child processes (the
torch peer, the end-to-end runs) the same count before they import anything. ``describe()`` is the
JSON ``machine`` block: CPU, cores, library versions, thread counts and pools, GPU.
"""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "BLIS_NUM_THREADS", "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                      # pragma: no cover - not Linux
        return os.cpu_count() or 1


def max_threads() -> int:
    """The most threads ``--threads`` may ask for (Numba's pool size, fixed at start)."""
    try:
        import numba
        return int(numba.config.NUMBA_NUM_THREADS)
    except ImportError:                         # pragma: no cover - numba is a dependency
        return cores()


def cpu_ticks() -> tuple | None:
    """(steal, total) CPU ticks since boot from /proc/stat, or None. Steal is time the
    hypervisor gave this guest's CPUs to someone else: on a shared host it is the noise
    that no thread pinning removes."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (vals[7] if len(vals) > 7 else 0), sum(vals[:8])


def load_report(start: tuple | None, load_start: tuple | None) -> dict:
    """Load average before and after, and the share of CPU time stolen in between."""
    out = {"loadavg_start": list(load_start) if load_start else None, "loadavg_end": None,
           "steal_fraction": None}
    try:
        out["loadavg_end"] = list(os.getloadavg())
    except OSError:
        pass
    end = cpu_ticks()
    if start and end and end[1] > start[1]:
        out["steal_fraction"] = (end[0] - start[0]) / (end[1] - start[1])
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def torch_installed() -> bool:
    """True when torch can be imported (found without importing it here)."""
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def gpu() -> str | None:
    """A CUDA device's name when CuPy and a GPU are both present, else None."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            name = props.get("name", b"GPU")
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001  (no CuPy, no driver, no device: all mean no GPU)
        return None
    return None


def child_env(n: int) -> dict:
    """os.environ with every thread-count variable set to ``n`` (for a child process)."""
    env = dict(os.environ)
    for k in _THREAD_ENV:
        env[k] = str(n)
    env["NUMBA_NUM_THREADS"] = str(max(n, 1))
    return env


def run_json_child(argv: list, spec: dict, threads: int, timeout: float, who: str,
                   error=RuntimeError) -> dict:
    """Run ``argv + [json.dumps(spec)]`` as a child process with ``child_env(threads)`` and
    return the JSON object on the last line of its stdout. A timeout, a failure or no JSON
    raises ``error`` naming ``who`` ("the torch peer") with the child's last line of stderr."""
    import json
    import subprocess
    try:
        r = subprocess.run(list(argv) + [json.dumps(spec)], capture_output=True, text=True,
                           timeout=timeout, env=child_env(threads))
    except subprocess.TimeoutExpired:
        raise error(f"{who} did not finish within {timeout:.0f} s") from None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise error(f"{who} exited with {r.returncode}: {last}")
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise error(f"{who} printed no JSON") from None


def child_main(child, argv=None) -> int:
    """The entry point of a JSON child process: ``child(json.loads(argv[0]))`` printed as one
    JSON line (``tinyllm.bench.e2e`` and ``tinyllm.bench.profile`` run as ``python -m``)."""
    import json
    import sys
    argv = sys.argv[1:] if argv is None else argv
    json.dump(child(json.loads(argv[0])), sys.stdout)
    sys.stdout.write("\n")
    return 0


def thread_info() -> dict:
    """Thread counts as this process sees them now."""
    out = {}
    try:
        from threadpoolctl import threadpool_info
        pools = threadpool_info()
        out["blas"] = [{"api": p.get("internal_api"), "threads": p.get("num_threads"),
                        "version": p.get("version"),
                        "library": os.path.basename(p.get("filepath", ""))} for p in pools]
    except ImportError:                         # pragma: no cover - a core dependency
        out["blas"] = []
    try:
        import numba
        out["numba"] = numba.get_num_threads()
        try:
            out["numba_layer"] = numba.threading_layer()
        except ValueError:                      # no parallel function has run yet
            out["numba_layer"] = str(numba.config.THREADING_LAYER)
    except ImportError:                         # pragma: no cover
        out["numba"] = None
    return out


def describe(threads: int) -> dict:
    import numpy as np
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for dist in ("scipy", "numba", "llvmlite", "threadpoolctl", "torch", "cupy", "tinyllm"):
        versions[dist] = _version(dist)
    blas = None
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {}).get("name")
    except Exception:  # noqa: BLE001  (older NumPy: no dict mode)
        pass
    return {"cpu": cpu_name(), "cores": cores(), "platform": platform.platform(),
            "python_executable": sys.executable, "threads_requested": threads,
            "threads": thread_info(), "numpy_blas": blas, "versions": versions,
            "gpu": gpu()}
