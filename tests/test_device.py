"""The device model end to end: Tensors, ops, modules, optimisers and the Trainer on "cuda".

Without a GPU, tests/conftest.py switches Numba's CUDA simulator on, and cuda arrays are
``tinyllm.backend.SimDeviceArray``: host memory that refuses what CuPy refuses (a host array
in a device op, ``np.add.at``, scipy's ufuncs), so every device rule is exercised here; the
kernels on cuda Tensors are the families' ``cuda`` kernels, run by the simulator. The models
are tiny (T <= 8, C = 8, 1-2 layers): the simulator runs one Python thread per CUDA thread.
Tests that need CuPy skip with the reason. On a GPU machine (benchmarks/gpu_check.sh, the
simulator off) the same tests run with CuPy arrays.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend
from tinyllm.autograd import masked_fill
from tinyllm.errors import DeviceError
from tinyllm.models.gpt import GPT, GPTConfig
from tinyllm.optim import SGD, AdamW, clip_grad_norm_

MODE = backend.cuda_mode()                     # "sim", "gpu" or None
needs_cuda = pytest.mark.skipif(MODE is None, reason="no cuda here: no GPU with CuPy and "
                                "the CUDA simulator is off")
needs_cupy = pytest.mark.skipif(MODE != "gpu", reason="needs a real GPU with CuPy (the "
                                "simulator stands in with SimDeviceArray here)")
pytestmark = needs_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def host(a):
    return backend.to_host(a)


def cuda(a):
    return backend.to_device(np.asarray(a), "cuda")


# ---------------------------------------------------------------- Tensors and ops

def test_tensor_device_and_round_trip():
    x = tl.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), device="cuda")
    assert x.device == "cuda" and backend.is_device(x.data)
    assert "device='cuda'" in repr(x)
    with pytest.raises(DeviceError, match=r"\.cpu\(\)"):
        x.numpy()
    back = x.cpu()
    assert back.device == "cpu" and type(back.data) is np.ndarray
    np.testing.assert_array_equal(back.numpy(), np.arange(6).reshape(2, 3))
    assert x.to("cuda") is x and back.to("cpu") is back
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        x.to("tpu")


def test_to_is_a_differentiable_copy():
    a = tl.Tensor(np.array([1.0, 2.0, 3.0], np.float32), requires_grad=True)
    d = a.to("cuda")                              # not a leaf: the gradient flows back
    assert not d.is_leaf and d.requires_grad
    ((d * d).sum()).backward()
    assert type(a.grad) is np.ndarray             # a's gradient lands on a's device
    np.testing.assert_array_equal(a.grad, [2.0, 4.0, 6.0])


def test_mixing_devices_names_both_and_the_op():
    a = tl.Tensor(np.ones(3, np.float32), device="cuda")
    b = tl.Tensor(np.ones(3, np.float32))
    with pytest.raises(DeviceError, match=r"Add: .*cpu \(input 1\) and cuda \(input 0\)"):
        a + b
    with pytest.raises(DeviceError, match=r"MatMul: .*cpu .* and cuda "):
        b.reshape((1, 3)) @ a.reshape((3, 1))


def _both(fn, *arrays, seed=0):
    """fn on cpu Tensors and on cuda Tensors (same data): (out, grads) for each."""
    res = []
    for dev in ("cpu", "cuda"):
        ts = [tl.Tensor(a, requires_grad=True, device=dev) for a in arrays]
        out = fn(*ts)
        rng = np.random.default_rng(seed)
        g = rng.standard_normal(out.shape).astype(out.dtype)
        out.backward(g)                           # a host gradient: moved to out's device
        assert out.device == dev and all(t.grad is not None for t in ts)
        assert all(backend.device_of(t.grad) == dev for t in ts)
        res.append((host(out.data), [host(t.grad) for t in ts]))
    return res


OPS = {
    "arith": lambda a, b: (a * b + a / (b * b + 1.0) - 2.0 * a) ** 2,
    "matmul": lambda a, b: a @ b.T,
    "elementwise": lambda a, b: a.exp().log() + a.tanh() + a.sigmoid() + a.relu()
    + tl.functional.gelu(b) + tl.functional.gelu(b, approximate="none") + (b * b).sqrt(),
    "reduce": lambda a, b: a.sum(axis=0) + a.mean(axis=0) + a.max(axis=0) + b.var(axis=0),
    "shape": lambda a, b: tl.concat([a, b], axis=0).sum(0) * tl.stack([a, b], axis=1).sum(1)
    + a.transpose().reshape((3, 4)),
    "select": lambda a, b: tl.where(a.data > 0, a, b) + masked_fill(a, b.data > 0, 0.0),
    "getitem": lambda a, b: a[np.array([0, 2, 0, 0])] + b[1:3].sum() + a[a.data > 0].sum(),
    "split": lambda a, b: sum(p.sum() for p in tl.split(a, 2, axis=1)) * b,
}


@pytest.mark.parametrize("name", OPS)
def test_ops_on_cuda_match_cpu(name):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    (oc, gc), (od, gd) = _both(OPS[name], a, b)
    np.testing.assert_allclose(od, oc, rtol=1e-6, atol=1e-6)
    for x, y in zip(gd, gc):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_embedding_backward_on_cuda_is_a_deterministic_segment_sum():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((5, 3)).astype(np.float32)
    idx = np.array([[4, 1, 4], [0, 4, 1]])        # repeats, and rows 2, 3 unused
    g = rng.standard_normal((2, 3, 3)).astype(np.float32)
    grads = []
    for dev in ("cpu", "cuda"):
        w = tl.Tensor(W, requires_grad=True, device=dev)
        tl.functional.embedding(idx, w).backward(g)     # host indices follow the weight
        grads.append(host(w.grad))
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-6, atol=1e-7)
    assert not grads[1][2].any() and not grads[1][3].any()


def test_dropout_on_cuda_draws_the_cpu_mask():
    x = np.ones((4, 5), np.float32)
    outs = [host(tl.functional.dropout(tl.Tensor(x, device=d), 0.5, True,
                                       np.random.default_rng(7)).data)
            for d in ("cpu", "cuda")]
    np.testing.assert_array_equal(outs[0], outs[1])


def test_kernel_op_without_a_cuda_kernel_runs_on_host_and_returns_to_cuda():
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(s).astype(np.float32)
              for s in ((2, 3), (2, 4, 5), (3, 6), (5, 6), (6,))]
    res = []
    for dev in ("cpu", "cuda"):
        ts = [tl.Tensor(a, requires_grad=True, device=dev) for a in arrays]
        c, alpha = tl.functional.additive_attention(*ts)
        assert c.device == dev and alpha.device == dev
        (c.sum() + alpha.sum()).backward()
        res.append([host(c.data)] + [host(t.grad) for t in ts])
    for x, y in zip(*res):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the simulated device

@pytest.mark.skipif(MODE != "sim", reason="the simulator's stand-in device array")
def test_sim_device_array_refuses_what_cupy_refuses():
    a = cuda(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="host .* array"):
        a + np.ones(3, np.float32)
    with pytest.raises(TypeError, match="atomics"):
        np.add.at(a, np.array([0]), 1.0)
    from scipy import special
    with pytest.raises(TypeError, match="backend.special"):
        special.expit(a)
    assert isinstance(a + 1.0, backend.SimDeviceArray)
    assert isinstance(backend.xp(a).zeros(2), backend.SimDeviceArray)
    b = backend.to_device(a, "cpu")               # a copy: the device array is untouched
    b[0] = 5.0
    assert host(a)[0] == 1.0


def test_an_op_that_allocates_on_the_host_is_caught():
    class Bad(tl.Function):
        @staticmethod
        def forward(ctx, x):
            return np.zeros(x.shape, x.dtype)      # a bare np.zeros: host memory
    with pytest.raises(DeviceError, match="Bad.forward returned a host array"):
        Bad.apply(tl.Tensor(np.ones(2, np.float32), device="cuda"))


# ---------------------------------------------------------------- modules and optimisers

def _lin():
    return tl.nn.Linear(4, 3, rng=0)


def test_module_to_moves_parameters_in_place():
    m = _lin()
    ps = m.parameters()
    opt = SGD(m.parameters(), lr=0.1, momentum=0.9)
    assert m.to("cuda") is m and m.device == "cuda"
    assert [id(p) for p in m.parameters()] == [id(p) for p in ps]
    assert all(p.device == "cuda" for p in opt.params())
    sd = m.state_dict()                           # host copies for checkpoints
    assert all(type(v) is np.ndarray for v in sd.values())
    m2 = _lin().to("cuda")
    m2.load_state_dict({k: v * 2 for k, v in sd.items()})
    assert all(p.device == "cuda" for p in m2.parameters())
    np.testing.assert_array_equal(host(m2.weight.data), sd["weight"] * 2)
    m.to("cpu")
    assert all(type(p.data) is np.ndarray for p in m.parameters())


def _step_pair(make_opt, steps=3):
    """The same Linear trained by make_opt on cpu and on cuda: (cpu, cuda) modules and
    optimisers after ``steps`` steps."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    out = []
    for dev in ("cpu", "cuda"):
        m = _lin().to(dev)
        opt = make_opt(m.parameters())
        for _ in range(steps):
            opt.zero_grad()
            ((m(tl.Tensor(x, device=dev)) ** 2).mean()).backward()
            clip_grad_norm_(m.parameters(), 0.05)
            opt.step()
        out.append((m, opt))
    return out


@pytest.mark.parametrize("make", [
    lambda ps: AdamW(ps, lr=1e-2, weight_decay=0.1, fused=False),
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True, fused=False),
    lambda ps: SGD(ps, lr=0.1, momentum=0.5, dampening=0.1, fused=False),
], ids=["adamw", "sgd-nesterov", "sgd-momentum"])
def test_optimiser_states_live_on_the_device_and_updates_agree(make):
    (mc, oc), (md, od) = _step_pair(make)
    for pc, pd in zip(mc.parameters(), md.parameters()):
        np.testing.assert_allclose(host(pd.data), pc.data, rtol=1e-6, atol=1e-7)
        for k, v in od.state[id(pd)].items():
            if backend.is_array(v):
                assert backend.device_of(v) == "cuda", k
    sd = od.state_dict()
    assert all(type(v) is np.ndarray for v in sd["arrays"].values())
    m3 = _lin().to("cuda")
    o3 = make(m3.parameters())
    o3.load_state_dict(sd)
    assert all(backend.device_of(v) == "cuda" for st in o3.state.values()
               for v in st.values() if backend.is_array(v))


@pytest.mark.parametrize("decoupled", [True, False])
def test_device_adam_update_is_the_reference_bit_for_bit(decoupled):
    from tinyllm import kernels
    from tinyllm.optim.adam import _adam_device
    rng = np.random.default_rng(9)
    p, g, m = (rng.standard_normal(50).astype(np.float32) for _ in range(3))
    v = rng.random(50).astype(np.float32)
    group = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ref = [a.copy() for a in (p, m, v)]
    kernels.get("adam", "numpy").forward(*ref[:1], g, *ref[1:], lr=1e-2, step=3, beta1=0.9,
                                         beta2=0.95, eps=1e-8, weight_decay=0.1,
                                         decoupled=decoupled)
    dp, dm, dv = (cuda(a) for a in (p, m, v))
    _adam_device(dp, cuda(g), {"step": 3, "exp_avg": dm, "exp_avg_sq": dv}, group, decoupled)
    for a, b in zip((dp, dm, dv), ref):
        np.testing.assert_array_equal(host(a), b)


def test_optimiser_states_follow_a_moved_model():
    m = _lin()
    opt = AdamW(m.parameters(), lr=1e-2)
    x = np.ones((2, 4), np.float32)
    for dev in ("cpu", "cuda"):
        m.to(dev)
        opt.zero_grad()
        (m(tl.Tensor(x, device=dev)).sum()).backward()
        opt.step()
    st = opt.state[id(m.weight)]
    assert st["step"] == 2 and backend.device_of(st["exp_avg"]) == "cuda"


def test_clip_grad_norm_on_cuda_matches_cpu():
    rng = np.random.default_rng(5)
    gs = [rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (7,))]
    norms, clipped = [], []
    for dev in ("cpu", "cuda"):
        ps = [tl.Tensor(np.zeros_like(g), requires_grad=True, device=dev) for g in gs]
        for p, g in zip(ps, gs):
            p.grad = backend.to_device(g.copy(), dev)
        norms.append(clip_grad_norm_(ps, 1.0))
        clipped.append([host(p.grad) for p in ps])
    assert norms[0] == pytest.approx(norms[1], rel=1e-12)
    for a, b in zip(*clipped):
        np.testing.assert_allclose(b, a, rtol=1e-6)


# ---------------------------------------------------------------- a GPT on cuda

CFG = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


@pytest.fixture(scope="module")
def gpt_pair():
    """The same 2-layer GPT on cpu and on cuda after one forward and backward of one batch
    (B=1, T=4): (cpu model, cuda model, cpu loss, cuda loss, the batch, the loss's kernel)."""
    rng = np.random.default_rng(6)
    x, y = rng.integers(0, 11, (1, 4)), rng.integers(0, 11, (1, 4))
    mc, md = GPT(CFG, seed=0), GPT(CFG, seed=0).to("cuda")
    _, lc = mc(x, y)
    _, ld = md(x, y)
    impl = (ld._ctx.kernel.name, ld._ctx.kernel.impl)     # before backward frees the graph
    lc.backward()
    ld.backward()
    return mc, md, lc, ld, (x, y), impl


def test_gpt_on_cuda_gives_the_cpu_loss_and_gradients(gpt_pair):
    mc, md, lc, ld, _, _ = gpt_pair
    assert ld.device == "cuda"
    assert float(ld) == pytest.approx(float(lc), rel=1e-6)
    for (name, pc), (_, pd) in zip(mc.named_parameters(), md.named_parameters()):
        assert backend.device_of(pd.grad) == "cuda", name
        np.testing.assert_allclose(host(pd.grad), pc.grad, rtol=1e-4, atol=1e-6,
                                   err_msg=name)


def test_gpt_on_cuda_ran_the_cuda_kernels(gpt_pair):
    assert gpt_pair[-1] == ("cross_entropy", "cuda")


def test_adamw_steps_on_cuda_agree_with_cpu(gpt_pair):
    mc, md, _, _, (x, y), _ = gpt_pair
    oc, od = (AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in (mc, md))
    for step in range(2):
        if step:
            for m in (mc, md):
                m.zero_grad()
                m(x, y)[1].backward()
        assert clip_grad_norm_(md.parameters(), 1.0) == pytest.approx(
            clip_grad_norm_(mc.parameters(), 1.0), rel=1e-5)
        oc.step()
        od.step()
    for (name, pc), (_, pd) in zip(mc.named_parameters(), md.named_parameters()):
        np.testing.assert_allclose(host(pd.data), pc.data, rtol=1e-4, atol=1e-5,
                                   err_msg=name)
        assert backend.device_of(od.state[id(pd)]["exp_avg"]) == "cuda"


def test_trainer_on_cuda_saves_host_checkpoints_that_load_on_cpu(tmp_path):
    from tinyllm.train.checkpoint import load_checkpoint
    from tinyllm.train.trainer import TrainConfig, Trainer
    cfg = GPTConfig(vocab_size=11, block_size=4, n_layer=1, n_head=2, n_embd=8)
    data = np.random.default_rng(8).integers(0, 11, 64)

    def batch(rng):
        i = rng.integers(0, len(data) - 5, 1)
        return np.stack([data[j:j + 4] for j in i]), np.stack([data[j + 1:j + 5] for j in i])
    model = GPT(cfg, seed=0)
    tc = TrainConfig(max_steps=1, eval_every=1, eval_batches=1, warmup_steps=0,
                     progress=False, sample_every=0, device="cuda")
    tr = Trainer(model, batch, batch, tc, out_dir=str(tmp_path), log=None)
    assert model.device == "cuda"
    res = tr.fit()
    assert res.steps == 1 and np.isfinite(res.best_val)
    arrays, optim_arrays, meta = load_checkpoint(str(tmp_path / "last"))
    cpu = GPT(cfg, seed=1)
    cpu.load_state_dict(arrays)
    for (name, p), (_, q) in zip(cpu.named_parameters(), model.named_parameters()):
        assert type(p.data) is np.ndarray
        np.testing.assert_array_equal(p.data, host(q.data), err_msg=name)
    assert optim_arrays and all(type(v) is np.ndarray for v in optim_arrays.values())
    assert meta["train_config"]["device"] == "cuda"


def test_train_config_device_is_checked():
    from tinyllm.train.trainer import TrainConfig
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        TrainConfig(device="gpu")
    with pytest.raises(ValueError, match="distributed training runs on cpu"):
        TrainConfig(device="cuda", distributed=True)


# ---------------------------------------------------------------- without a GPU

@pytest.mark.skipif(backend._gpu_reason() is None, reason="a GPU is here")
def test_cli_device_cuda_without_a_gpu_is_one_line_exit_2(tmp_path):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", PYTHONPATH=ROOT)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "tinyllm", "train", "--model", "gpt",
                        "--device", "cuda", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device cuda: no CUDA GPU here" in lines[0], r.stderr
    assert "NUMBA_ENABLE_CUDASIM=1" in lines[0] and not out.exists()


@pytest.mark.skipif(backend._gpu_reason() is None, reason="a GPU is here")
def test_require_cuda_without_a_gpu_or_the_simulator(monkeypatch):
    monkeypatch.setattr(backend, "simulator", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU here"):
        tl.Tensor([1.0], device="cuda")
    with pytest.raises(DeviceError, match=r"Linear.to\('cuda'\)"):
        _lin().to("cuda")


# ---------------------------------------------------------------- a real GPU

@needs_cupy
def test_cuda_tensors_are_cupy_arrays_on_a_gpu():
    import cupy
    x = tl.Tensor(np.arange(4, dtype=np.float32), requires_grad=True, device="cuda")
    assert isinstance(x.data, cupy.ndarray)
    (x * x).sum().backward()
    assert isinstance(x.grad, cupy.ndarray)
    np.testing.assert_array_equal(x.grad.get(), 2 * np.arange(4))
