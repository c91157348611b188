"""Gradient accumulation (``TrainConfig.grad_accum``, issue 18): K micro-batches of B are one
batch of K·B, in loss, gradient norm (before and after clipping) and weights, to summation-order
rounding; a resume (or an interrupt inside any micro-batch) in a run with accumulation is
bitwise identical to an uninterrupted run; ``--grad_accum`` on the command line.

Tolerances. In float64 only the summation order differs (one matmul over K·B rows against K
matmuls over B rows added into .grad; the K losses' mean against one mean), so everything
agrees to ~1e-14 relative; the test allows 1e-10. In float32 the same reorderings cost ~1e-7
relative on the losses and up to ~2e-6 on the gradient norm (measured); the test allows rtol
1e-5. The weights after 3 Adam steps (lr 1e-2) differ by up to 3e-5 (measured): Adam divides
by sqrt(v), so a gradient element near zero, where the rounding is a large share of it, moves
its weight by a full ~lr either way; the test allows atol 1e-4 (1% of the 3-step movement).
The float64 case is the tight one.
"""
import numpy as np
import pytest

from tinyllm import cli
from tinyllm.data import get_batch
from tinyllm.models import GPT, GPTConfig
from tinyllm.optim import grad_norm
from tinyllm.train import TrainConfig, Trainer

B, T, V = 2, 8, 11
DATA = ((np.arange(3000) * 7) % V + (np.arange(3000) // 17) % 3) % V


def micro(rng):
    return get_batch(DATA, B, T, rng)


def joined(K):
    """One batch of K·B: the same K draws as K micro-batches, concatenated."""
    def batch(rng):
        xs, ys = zip(*[micro(rng) for _ in range(K)])
        return np.concatenate(xs), np.concatenate(ys)
    return batch


def train(batch, K, dtype, clip, steps=3, out=None, stop_at=0, resume=False):
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=2, n_head=2, n_embd=16), seed=3,
                dtype=dtype)
    cfg = TrainConfig(max_steps=steps, lr=1e-2, warmup_steps=1, grad_clip=clip, eval_every=3,
                      eval_batches=1, log_every=1, progress=False, grad_accum=K,
                      stop_at=stop_at)
    t = Trainer(model, batch, micro if out else None, cfg, out_dir=out, log=None)
    if resume:
        t.resume(out)
    after = []                           # the norm the optimiser sees (after clipping)
    step = t.opt.step

    def spy(*a, **k):
        after.append(grad_norm([p for p in model.parameters() if p.requires_grad]))
        return step(*a, **k)
    t.opt.step = spy
    return t, t.fit(), after


def weights(t):
    return {k: v.copy() for k, v in t.model.state_dict().items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("clip", [0.0, 0.05])          # 0.05: clipping active at every step
@pytest.mark.parametrize("K", [1, 2, 4])
def test_k_micro_batches_equal_one_batch_of_k_b(K, clip, dtype):
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (1e-5, 1e-4)
    acc, ra, after_a = train(micro, K, dtype, clip)
    one, r1, after_1 = train(joined(K), 1, dtype, clip)
    la, l1 = [v for _, v in ra.losses], [v for _, v in r1.losses]
    na, n1 = [v for _, v in ra.grad_norms], [v for _, v in r1.grad_norms]
    np.testing.assert_allclose(la, l1, rtol=rtol)
    np.testing.assert_allclose(na, n1, rtol=rtol)
    np.testing.assert_allclose(after_a, after_1, rtol=rtol)
    if clip:
        assert min(n1) > 2 * clip                      # clipping did act ...
        np.testing.assert_allclose(after_1, clip, rtol=1e-5)   # ... down to the threshold
    else:
        np.testing.assert_allclose(after_1, n1, rtol=1e-12)
    wa, w1 = weights(acc), weights(one)
    for k in w1:
        np.testing.assert_allclose(wa[k], w1[k], rtol=0, atol=atol, err_msg=k)
    assert ra.tokens == r1.tokens == 3 * K * B * T     # tokens count every micro-batch
    assert ra.steps == acc.sched.last_step == 3        # schedule steps = optimiser steps


def test_resume_and_interrupt_inside_a_micro_batch_are_bitwise(tmp_path):
    K = 3
    straight, rs, _ = train(micro, K, np.float32, 0.05, steps=6, out=str(tmp_path / "a"))
    # stop after step 2, resume in a fresh trainer
    _, r1, _ = train(micro, K, np.float32, 0.05, steps=6, out=str(tmp_path / "b"), stop_at=2)
    t2, r2, _ = train(micro, K, np.float32, 0.05, steps=6, out=str(tmp_path / "b"),
                      resume=True)
    assert r1.losses + r2.losses == rs.losses          # exact float equality
    w, ws = weights(t2), weights(straight)
    assert all(np.array_equal(w[k], ws[k]) for k in ws)
    # Ctrl-C inside the 2nd micro-batch of step 4: the whole step is put back
    calls = {"n": 0}

    def flaky(rng):
        calls["n"] += 1
        if calls["n"] == 3 * K + 2:
            raise KeyboardInterrupt
        return micro(rng)
    with pytest.raises(KeyboardInterrupt):
        train(flaky, K, np.float32, 0.05, steps=6, out=str(tmp_path / "c"))
    t3, r3, _ = train(micro, K, np.float32, 0.05, steps=6, out=str(tmp_path / "c"),
                      resume=True)
    assert r3.losses == rs.losses[3:]
    w = weights(t3)
    assert all(np.array_equal(w[k], ws[k]) for k in ws)


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "two"])
def test_bad_grad_accum_is_one_line_exit_2(tmp_path, capsys, value):
    assert cli.main(["train", "--model", "gpt", "--config", "tiny", "--out",
                     str(tmp_path / "r"), f"--grad_accum={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "grad_accum" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()               # refused before any folder is made


def test_bad_grad_accum_in_python_is_named():
    for v in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="grad_accum"):
            TrainConfig(grad_accum=v)
