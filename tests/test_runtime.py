"""Process-wide settings: ``import tinyllm`` changes none of them, ``tinyllm.runtime`` sets
them when asked, and the plots draw without touching matplotlib's backend.

The import checks run in a fresh interpreter each (a test process has long since imported
everything), with NUMBA_THREADING_LAYER and MPLBACKEND removed from its environment.
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).parent.parent


def _run(code: str, **env) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned as a dict."""
    e = {k: v for k, v in os.environ.items()
         if k not in ("NUMBA_THREADING_LAYER", "MPLBACKEND")}
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH")
                                                     else []))
    e.update(env)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, env=e, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


# What the process-wide state looks like; the dependencies are imported first, so that what
# they do on their own import (SciPy adds a warning filter) is not counted against tinyllm.
STATE = """
import json, sys, warnings
import numpy as np, numba, threadpoolctl, matplotlib, scipy.special

def state():
    return {"layer": str(numba.config.THREADING_LAYER),
            "numba_threads": numba.get_num_threads(),
            "backend": repr(dict.__getitem__(matplotlib.rcParams, "backend")),
            "pyplot": "matplotlib.pyplot" in sys.modules,
            "filters": [repr(f) for f in warnings.filters],
            "blas": {p["filepath"]: p["num_threads"] for p in threadpoolctl.threadpool_info()
                     if p["user_api"] == "blas"},
            "errstate": np.geterr()}
"""


def test_import_and_a_forward_pass_change_no_global_state():
    out = _run(STATE + """
before = state()
import tinyllm as tl
from tinyllm.models import GPT, GPTConfig
model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))
logits, loss = model(np.zeros((2, 8), dtype=np.int64), np.ones((2, 8), dtype=np.int64))
loss.backward()
after = state()
after["blas"] = {k: v for k, v in after["blas"].items() if k in before["blas"]}
print(json.dumps({"before": before, "after": after}))
""")
    before, after = out["before"], out["after"]
    assert before["layer"] == "default"              # Numba's own default, untouched
    for key in before:
        assert after[key] == before[key], key
    assert not after["pyplot"]


def _default_layer() -> str:
    """omp where OpenMP loads (libgomp), else workqueue: what ``configure()`` picks."""
    try:
        from numba.np.ufunc import omppool  # noqa: F401
    except ImportError:
        return "workqueue"
    return "omp"


def test_configure_sets_the_layer_threads_and_malloc():
    out = _run(STATE + """
from tinyllm import runtime
import tinyllm as tl
done = runtime.configure(threads=1, keep_freed_memory=True)
from tinyllm.models import GPT, GPTConfig
model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))
model(np.zeros((2, 8), dtype=np.int64), np.ones((2, 8), dtype=np.int64))[1].backward()
s = state()
s["launched"] = numba.threading_layer()
s["done"] = done
print(json.dumps(s))
""")
    want = _default_layer()
    assert out["layer"] == want and out["launched"] == want
    assert out["numba_threads"] == 1
    assert out["blas"] and set(out["blas"].values()) == {1}
    assert out["done"]["numba_layer"] == want and out["done"]["threads"] == 1
    assert out["done"]["keep_freed_memory"] is sys.platform.startswith("linux")


def test_a_users_threading_layer_wins():
    out = _run("""
import json, numba
from tinyllm import runtime
print(json.dumps({"layer": runtime.configure()["numba_layer"],
                  "config": str(numba.config.THREADING_LAYER)}))
""", NUMBA_THREADING_LAYER="omp")
    assert out == {"layer": "omp", "config": "omp"}


def test_the_cli_configures_the_layer():
    out = _run("""
import json, sys, numba
from tinyllm import cli
code = cli.main(["train", "--model", "gpt", "--colour=red"])
print(json.dumps({"code": code, "layer": str(numba.config.THREADING_LAYER)}))
""")
    assert out == {"code": 2, "layer": _default_layer()}


@pytest.mark.parametrize("quantised", [True, False])
def test_generate_runs_on_cheap_launches(tmp_path, quantised):
    # a decoding step's ~50 small parallel calls need the layer whose launches cost
    # microseconds (omp where it loads), quantised or float: the float products run on
    # Numba's pool too (kernels.matmul), so nothing else spins beside omp's workers
    out = _run(f"""
import json, numba
import tinyllm as tl
from tinyllm import cli, runtime
from tinyllm.compress import save_compressed
from tinyllm.data import CharTokenizer
from tinyllm.models import GPT, GPTConfig
tok = CharTokenizer("abcdefgh")
gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16))
path = {str(tmp_path / "ckpt")!r}
if {quantised}:
    save_compressed(gpt, tok, path, "int8")
else:
    tl.save(gpt, path, tokenizer=tok)
before = runtime.cheap_launches()
code = cli.main(["generate", "--checkpoint", path, "--prompt", "ab", "--max-new-tokens", "3",
                 "--temperature", "0"])
print(json.dumps({{"code": code, "want": runtime.inference_layer(), "before": before,
                  "launched": numba.threading_layer(), "cheap": runtime.cheap_launches()}}))
""")
    assert out["code"] == 0
    assert out["launched"] == out["want"] == _default_layer()
    assert out["cheap"] is (out["want"] in ("omp", "tbb"))


def test_pinned_threads_restores_the_counts():
    import numba
    from threadpoolctl import threadpool_info

    from tinyllm import runtime
    blas = {p["filepath"]: p["num_threads"] for p in threadpool_info()}
    n = numba.get_num_threads()
    with runtime.pinned_threads(1) as p:
        assert p.n == 1 and numba.get_num_threads() == 1
        assert all(q["num_threads"] == 1 for q in threadpool_info()
                   if q["filepath"] in blas)
    assert numba.get_num_threads() == n
    assert {k: v for k, v in ((q["filepath"], q["num_threads"]) for q in threadpool_info())
            if k in blas} == blas
    with pytest.raises(ValueError, match="runtime.Pinned: the thread count"):
        runtime.Pinned(0)


def test_the_plots_write_pngs_and_leave_the_backend_alone(tmp_path):
    """Every plot of the package under a backend that is not Agg (svg here, as a notebook's
    inline backend would be): PNGs come out, the backend stays, pyplot is never imported."""
    out = _run(f"""
import json, os, sys
import matplotlib
matplotlib.use("svg")
import numpy as np
import tinyllm as tl
from tinyllm.bench import report
from tinyllm.train import plot_metrics
from tinyllm.train.demo import _plot_demo_curves, attention_heatmap
from tinyllm.train.runs import build_model, make_preset

d = {str(tmp_path)!r}
recs = [{{"step": 1, "loss": 2.0}}, {{"step": 2, "loss": 1.5}}, {{"step": 2, "val_loss": 1.7}}]
paths = [plot_metrics(recs, os.path.join(d, "loss.png"))]
for run in ("rnn_attention", "gpt"):
    os.makedirs(os.path.join(d, run))
    with open(os.path.join(d, run, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\\n" for r in recs)
_plot_demo_curves(d, os.path.join(d, "curves.png"))
paths.append(os.path.join(d, "curves.png"))
p = make_preset("rnn", "copy", {{"d_embed": 8, "d_hidden": 8, "d_attn": 8}})
model = build_model(p)
paths.append(attention_heatmap(model, p.data.make_task(), os.path.join(d, "attention.png")))
row = dict(name="softmax", impl="numba", size="x (2, 3)", x=6, x_name="elements",
           median_ms=1.0, min_ms=0.9, max_ms=1.2, intensity=0.5, gflops_per_s=2.0)
rows = [dict(row, **{{"pass": ps, "x": x}}) for ps in ("fwd", "fwd+bwd") for x in (6, 12)]
result = {{"kernels": rows, "machine": {{"threads_requested": 1, "cpu": "test"}},
          "ceilings": {{"sgemm_GFLOPs": 50.0, "dgemm_GFLOPs": 25.0, "copy_GBps": 10.0}}}}
paths += report.write_plots(result, os.path.join(d, "bench.png"))
sweep = tl.eps_sweep(lambda t: t.tanh(), [np.linspace(-1, 1, 5)], eps_values=[1e-2, 1e-4])
sweep.plot().savefig(os.path.join(d, "sweep.png"))
paths.append(os.path.join(d, "sweep.png"))
print(json.dumps({{"paths": paths, "backend": matplotlib.get_backend(),
                  "pyplot": "matplotlib.pyplot" in sys.modules}}))
""")
    assert out["backend"] == "svg" and not out["pyplot"]
    assert len(out["paths"]) == 6
    for p in out["paths"]:
        assert pathlib.Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
