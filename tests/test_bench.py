"""``tinyllm bench``: the JSON's structure (not the speed), the plots, and bad input."""
import importlib.util
import json
import subprocess
import sys

import pytest

from tinyllm import cli
from tinyllm.bench import NAMES
from tinyllm.bench.specs import PASSES, ModelSpec, kernel_specs

HAVE_TORCH = importlib.util.find_spec("torch") is not None

KERNEL_KEYS = {"name": str, "impl": str, "size": str, "pass": str, "median_ms": float,
               "min_ms": float, "max_ms": float, "repeats": int, "work": (int, float),
               "unit": str, "rate": float, "fraction_of_ceiling": float,
               "flops": (int, float), "bytes": (int, float), "intensity": float,
               "x": int, "x_name": str}


def run(*args):
    return subprocess.run([sys.executable, "-m", "tinyllm", "bench", *args],
                          capture_output=True, text=True, timeout=120)


def one_line_exit_2(r):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("tinyllm: error: ")


def test_quick_softmax_json_structure(tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "times.png"
    rc = cli.main(["bench", "--quick", "--only", "softmax", "--repeats", "2", "--json",
                   str(out), "--plot", str(png)])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "softmax" in stdout and "ceilings: copy" in stdout
    d = json.loads(out.read_text())
    assert set(d) >= {"machine", "ceilings", "kernels", "e2e", "quick", "notes", "plots"}
    assert d["quick"] is True and d["e2e"] == []
    m = d["machine"]
    assert isinstance(m["cpu"], str) and m["cores"] >= 1 and m["threads_requested"] >= 1
    assert m["threads"]["numba"] == m["threads_requested"]
    assert all(p["threads"] == m["threads_requested"] for p in m["threads"]["blas"])
    assert m["versions"]["numpy"] and m["versions"]["numba"]
    for k in ("copy_GBps", "sgemm_GFLOPs", "dgemm_GFLOPs"):
        assert isinstance(d["ceilings"][k], float) and d["ceilings"][k] > 0

    impls = ["numpy", "numba"] + (["torch"] if HAVE_TORCH else [])
    specs = kernel_specs(quick=True)["softmax"]
    sizes = [s.label for s in specs]
    # softmax is timed allocating its output ("fwd") and into a buffer ("fwd out=")
    assert specs[0].passes == ("fwd", "fwd out=", "fwd+bwd")
    want = {(i, s, p) for i in impls for s in sizes for p in specs[0].passes}
    got = [(r["impl"], r["size"], r["pass"]) for r in d["kernels"]]
    assert sorted(got) == sorted(want)            # one record per impl x size x pass
    for r in d["kernels"]:
        for key, typ in KERNEL_KEYS.items():
            assert isinstance(r[key], typ), (key, r[key])
        assert r["name"] == "softmax" and r["unit"] == "GB/s" and r["repeats"] == 2
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["rate"] > 0 and r["fraction_of_ceiling"] > 0
        assert r["rate"] == pytest.approx(r["bytes"] / (r["median_ms"] / 1e3) / 1e9)
        assert r["fraction_of_ceiling"] == pytest.approx(r["rate"] / d["ceilings"]["copy_GBps"])
        if HAVE_TORCH:
            assert r["ratio_to_torch"] > 0
            if r["impl"] == "torch":
                assert r["ratio_to_torch"] == 1.0
        else:
            assert r["ratio_to_torch"] is None
    if HAVE_TORCH:
        assert m["torch_threads"] == m["threads_requested"]
    assert png.stat().st_size > 0 and (tmp_path / "times_roofline.png").stat().st_size > 0
    assert d["plots"] == [str(png), str(tmp_path / "times_roofline.png")]


def test_unknown_only_name_is_one_line_exit_2(tmp_path):
    r = run("--quick", "--only", "sofmax", "--json", str(tmp_path / "x.json"))
    one_line_exit_2(r)
    assert "sofmax" in r.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("bad", ["missing-dir/out.json", "."])
def test_unwritable_json_path_is_one_line_exit_2(tmp_path, bad):
    r = run("--quick", "--only", "softmax", "--json", str(tmp_path / bad))
    one_line_exit_2(r)
    assert "--json" in r.stderr


def test_bad_plot_and_threads_are_one_line_exit_2(tmp_path):
    for args in (["--plot", str(tmp_path / "p.txt")],
                 ["--plot", str(tmp_path / "nope" / "p.png")],
                 ["--threads", "0"], ["--threads", "100000"], ["--repeats", "0"]):
        one_line_exit_2(run("--quick", "--only", "softmax", *args))


def test_only_names_cover_every_family_and_e2e():
    specs = kernel_specs(quick=True)
    assert set(specs) | {"e2e"} == set(NAMES)
    full = kernel_specs(quick=False)
    assert all(len(s) == 2 for s in specs.values())
    assert all(len(s) >= 4 for s in full.values())
    labels = {s.label for sweep in full.values() for s in sweep}
    for ref in ("x (8, 1024, 1024)", "B1 H8 T2048 hs64 causal", "N=2048 C=768 H=3072",
                "x (8192, 768)", "logits (8192, 8192)"):
        assert ref in labels                      # the reference sizes


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
def test_torch_peer_has_every_family():
    import numpy as np
    import torch

    from tinyllm.bench.specs import make_inputs
    from tinyllm.bench.torch_peer import kernel_callables
    for fam, sweep in kernel_specs(quick=True).items():
        spec = sweep[0]
        if spec.torch is None:
            continue
        arrays, opts = make_inputs(spec, np.random.default_rng(0))
        fns = kernel_callables(torch, spec.torch, list(arrays), opts)
        for p in spec.passes:
            fns[p]()


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
def test_torch_peer_script_times_the_inputs_it_is_handed(tmp_path):
    """The peer, run as a plain script, loads the inputs the parent wrote (no tinyllm, no
    Numba in its process) and times each pass."""
    import numpy as np

    from tinyllm.bench.kernels import peer_case, run_peer
    specs = kernel_specs(quick=True)
    cases = [peer_case(specs[f][0], i, str(tmp_path))
             for i, f in enumerate(("cross_entropy", "decode_attention"))]
    assert any("npy" in a for a in cases[0]["args"]) and cases[1]["args"][-1] == {
        "value": specs["decode_attention"][0].params["L"]}
    z = np.load(cases[0]["args"][0]["npy"])
    assert z.dtype == np.float32 and z.shape == (256, 1024)
    timing = {"warmup": 0, "min_repeats": 1, "max_repeats": 1, "budget_s": 0.0}
    res = run_peer({"job": "kernels", "timing": timing, "cases": cases}, threads=1,
                   timeout=120)
    assert res["errors"] == []
    assert sorted((r["id"], r["pass"]) for r in res["results"]) == [
        (i, p) for i in (0, 1) for p in PASSES]
    assert res["modules"] == {"tinyllm": False, "numba": False}


def test_e2e_entries_structure():
    from tinyllm.bench.e2e import METRICS, run_e2e
    tiny = ModelSpec("T", 1, 2, 32, 32, 2, train_steps=1, warm_steps=1, new_tokens=4,
                     gen_repeats=1)
    entries, notes = run_e2e([tiny], threads=1, torch=HAVE_TORCH, log=lambda m: None,
                             timeout=120)
    assert not notes, notes
    assert [e["impl"] for e in entries] == ["tinyllm"] + (["torch"] if HAVE_TORCH else [])
    for e in entries:
        assert e["config"] == "T" and e["params"] > 0
        assert e["train"]["tokens_per_step"] == 2 * 32 and e["train"]["tokens_per_s"] > 0
        for k in ("generate_cache", "generate_nocache"):
            assert e[k]["tokens"] == 4 and e[k]["tokens_per_s"] > 0
        mem = e["memory_MiB"]
        assert 0 < mem["base"] <= mem["peak_train"]
        if HAVE_TORCH:
            assert set(e["ratio_to_torch"]) == set(METRICS)
        else:
            assert e["ratio_to_torch"] is None


def test_without_torch_the_torch_slots_stay_empty(tmp_path, monkeypatch, capsys):
    from tinyllm.bench import machine
    monkeypatch.setattr(machine, "torch_installed", lambda: False)
    out = tmp_path / "b.json"
    assert cli.main(["bench", "--quick", "--only", "layernorm", "--repeats", "1", "--json",
                     str(out)]) == 0
    d = json.loads(out.read_text())
    assert {r["impl"] for r in d["kernels"]} == {"numpy", "numba"}
    assert all(r["ratio_to_torch"] is None for r in d["kernels"])
    assert d["machine"]["torch_threads"] is None
    assert any("torch is not installed" in n for n in d["notes"])
    assert "layernorm" in capsys.readouterr().out
