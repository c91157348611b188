"""The step profiler (``tinyllm bench --profile``): what the engine records while an
``OpProfile`` is active, and the breakdown the child process returns."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import cli
from tinyllm.autograd import functional as F
from tinyllm.bench import profile
from tinyllm.stopwatch import OpProfile, active_profile

SPEC = {"model": dict(n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=2),
        "vocab_size": 11, "threads": 1, "seed": 0, "warm_steps": 1, "steps": 2}


def test_nodes_are_recorded_forward_and_backward_only_while_active():
    rng = np.random.default_rng(0)
    x = tl.Tensor(rng.standard_normal((64, 64)), requires_grad=True)
    w = tl.Tensor(rng.standard_normal((64, 64)), requires_grad=True)
    (F.linear(x, w).sum()).backward()                   # not recorded: nothing active
    with OpProfile() as prof:
        assert active_profile() is prof
        with prof.phase("forward"):
            y = F.softmax(F.linear(x, w))
            loss = (y * y).sum()
        with prof.phase("backward"):
            loss.backward()
    assert active_profile() is None
    names = {k for k in prof.ops}
    for phase in ("forward", "backward"):
        for node in ("Linear", "softmax (kernel)", "Mul", "Sum"):
            assert (phase, node) in names, (phase, node)
    secs, calls, fresh = prof.ops["forward", "Linear"]
    assert calls == 1 and secs > 0 and fresh == 64 * 64 * 8   # one fresh float64 (64, 64)
    assert set(prof.phases) == {"forward", "backward"}
    # a product of 64^3 multiply-adds runs on the tiles, filed under the node that ran it
    assert ("forward", "Linear", "gemm tiles") in prof.nested
    assert ("backward", "Linear", "gemm tiles") in prof.nested


def test_child_breakdown_adds_up():
    res = profile.child(dict(SPEC))
    assert res["engine"] == "tinyllm" and len(res["step_ms_all"]) == 2
    assert set(res["phases"]) == set(profile.PHASES)
    names = {r["name"] for r in res["ops"]}
    assert {"Linear", "mlp (kernel)", "attention (kernel)", "layernorm (kernel)",
            "cross_entropy (kernel)", "Embedding"} <= names
    cat = profile.categorise(res)
    assert set(cat) == set(profile.CATEGORIES)
    assert sum(cat.values()) == pytest.approx(res["profiled_step_ms"], rel=1e-6)
    assert all(v >= 0 for v in cat.values())
    text = profile.table([{"config": "t", "label": "tiny", "tinyllm": res}])
    assert "| matrix products |" in text and "mlp (kernel)" in text


def test_torch_peer_profiles_the_same_step():
    pytest.importorskip("torch")
    from tinyllm.bench.kernels import run_peer
    res = run_peer(dict(SPEC, job="profile"), 1, 300)
    assert res["engine"] == "torch" and res["ops"]
    assert set(res["phases"]) == set(profile.PHASES)
    cat = profile.categorise(res)
    assert cat["matrix products"] > 0 and cat["attention"] > 0


def test_profile_flag_refuses_other_bench_options(capsys):
    assert cli.main(["bench", "--profile", "--only", "mlp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--profile" in err[0]
