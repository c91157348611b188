"""Knowledge distillation: the loss (gradchecked, against PyTorch), the Distiller the Trainer
trains, and `tinyllm distill` (a run folder that eval and generate read, resume, bad input)."""
import json

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import cli
from tinyllm.autograd.distillation import DistillKL
from tinyllm.compress import Distiller, DistillConfig, distill, distill_trainer
from tinyllm.models import GPT, GPTConfig
from tinyllm.train.checkpoint import load_checkpoint
from tinyllm.train.runs import gpt_trainer, load_model, make_preset
from tinyllm.train.trainer import TrainConfig

from _tiny_runs import TINY, train_tiny_gpt  # noqa: E402  (tests/ is on sys.path)

F = tl.functional


def _logits(seed=0, N=9, V=7, scale=2.0):
    rng = np.random.default_rng(seed)
    zs = rng.standard_normal((N, V)) * scale
    zt = rng.standard_normal((N, V)) * scale
    y = rng.integers(0, V, N)
    y[2] = -100                                    # one ignored row
    return zs, zt, y


# ------------------------------------------------------------------ the loss

@pytest.mark.parametrize("kind", ["forward", "reverse"])
@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (0.5, 1.0), (2.0, 0.3), (4.0, 0.0),
                                     (3.0, 1.0)])
def test_distill_loss_gradcheck(kind, T, alpha):
    zs, zt, y = _logits()
    assert tl.gradcheck(lambda x: F.distill_loss(x, zt, y, T=T, alpha=alpha, kind=kind), [zs])


@pytest.mark.parametrize("kind", ["forward", "reverse"])
def test_kl_term_gradcheck_over_batch_and_time(kind):
    rng = np.random.default_rng(1)
    zs, zt = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5))
    assert tl.gradcheck(lambda x: F.distill_kl(x, zt, T=1.5, kind=kind), [zs])


class _NoTemperature(DistillKL):
    """A planted bug: the forward-KL gradient without its 1/T."""

    @staticmethod
    def backward(ctx, dout):
        p_s, w, d, kl, keep, n, t, kind = ctx.saved
        dz = (p_s - w) * (np.asarray(dout) / n)
        dz[~keep] = 0
        return dz, None, None


def test_gradcheck_catches_a_missing_temperature_factor():
    zs, zt, y = _logits()
    keep = y != -100
    fn = lambda x: _NoTemperature.apply(x, zt, keep, T=2.0, kind="forward")  # noqa: E731
    assert not tl.gradcheck(fn, [zs], raise_exception=False)
    fn = lambda x: DistillKL.apply(x, zt, keep, T=2.0, kind="forward")  # noqa: E731
    assert tl.gradcheck(fn, [zs])


@pytest.mark.parametrize("kind", ["forward", "reverse"])
@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (2.0, 0.25)])
def test_distill_loss_matches_torch(kind, T, alpha):
    torch = pytest.importorskip("torch")
    zs, zt, y = _logits(seed=3, N=12, V=11)
    x = tl.Tensor(zs, requires_grad=True)
    loss = F.distill_loss(x, zt, y, T=T, alpha=alpha, kind=kind)
    loss.backward()
    xt = torch.tensor(zs, requires_grad=True)
    keep = torch.tensor(y != -100)
    ls = torch.log_softmax(xt / T, -1)
    lt = torch.log_softmax(torch.tensor(zt) / T, -1)
    if kind == "forward":     # kl_div(input=log q, target=log p, log_target) = p (log p - log q)
        kl = torch.nn.functional.kl_div(ls, lt, log_target=True, reduction="none")
    else:
        kl = torch.nn.functional.kl_div(lt, ls, log_target=True, reduction="none")
    kl = kl.sum(-1)[keep].mean()
    ce = torch.nn.functional.cross_entropy(xt, torch.tensor(y), ignore_index=-100)
    ref = alpha * T * T * kl + (1 - alpha) * ce
    ref.backward()
    np.testing.assert_allclose(float(loss.data), ref.item(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad, xt.grad.numpy(), rtol=1e-10, atol=1e-13)


def test_kl_is_zero_for_the_same_logits_and_positive_otherwise():
    zs, zt, y = _logits()
    for kind in ("forward", "reverse"):
        assert float(F.distill_kl(zs, zs, T=2.0, kind=kind).data) == 0.0
        assert float(F.distill_kl(zs, zt, T=2.0, kind=kind).data) > 0.01
    # forward and reverse differ (KL is not symmetric)
    a = float(F.distill_kl(zs, zt, kind="forward").data)
    b = float(F.distill_kl(zs, zt, kind="reverse").data)
    assert abs(a - b) > 1e-3


def test_loss_is_stable_on_large_logits_and_keeps_float32():
    zs, zt, y = _logits(scale=1.0)
    x = tl.Tensor((zs * 1e4).astype(np.float32), requires_grad=True)
    for kind in ("forward", "reverse"):
        loss = F.distill_loss(x, (zt * 1e4).astype(np.float32), y, T=1.0, kind=kind)
        x.grad = None
        loss.backward()
        assert loss.dtype == np.float32 and x.grad.dtype == np.float32
        assert np.isfinite(float(loss.data)) and np.isfinite(x.grad).all()


def test_alpha_zero_is_cross_entropy_and_every_ignored_row_gives_zero():
    zs, zt, y = _logits()
    a = F.distill_loss(zs, zt, y, alpha=0.0)
    assert float(a.data) == float(F.cross_entropy(zs, y).data)
    assert float(F.distill_kl(zs, zt, targets=np.full(9, -100)).data) == 0.0


def test_loss_bad_input():
    zs, zt, y = _logits()
    with pytest.raises(ValueError, match="temperature T"):
        F.distill_loss(zs, zt, y, T=0.0)
    with pytest.raises(ValueError, match="alpha"):
        F.distill_loss(zs, zt, y, alpha=1.5)
    with pytest.raises(ValueError, match="kind"):
        F.distill_loss(zs, zt, y, kind="both")
    with pytest.raises(tl.ShapeError, match="teacher_logits"):
        F.distill_loss(zs, zt[:, :5], y)
    bad = zt.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="teacher_logits holds NaN"):
        F.distill_loss(zs, bad, y)


# ------------------------------------------------------------------ the Distiller

def _tiny(seed=0, **kw):
    cfg = dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg), seed=seed)


def _ids(n=400, V=11):
    return np.random.default_rng(5).integers(0, V, n)


def test_alpha_zero_trains_exactly_like_plain_training():
    p = make_preset("gpt", "tiny", ["--max_steps=4", "--progress=false", "--eval_every=2",
                                    "--n_layer=1", "--n_embd=16", "--block_size=16",
                                    "--batch_size=4"])
    plain, tok, train, val = gpt_trainer(p, None, None, log=None)
    r1 = plain.fit()
    teacher = GPT(p.model.config(tok.vocab_size), seed=7)
    dt = distill_trainer(teacher, p.model.config(tok.vocab_size), p.train, train, val,
                         batch_size=4, alpha=0.0, log=None)
    r2 = dt.fit()
    assert r1.losses == r2.losses and r1.val_losses == r2.val_losses
    a, b = plain.model.state_dict(), dt.model.state_dict()
    assert list(a) == list(b)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # and a real alpha changes the run (the check above could not pass by accident)
    dt2 = distill_trainer(teacher, p.model.config(tok.vocab_size), p.train, train, val,
                          batch_size=4, alpha=0.5, log=None)
    dt2.fit()
    assert not np.array_equal(dt2.model.state_dict()["transformer.wte.weight"],
                              a["transformer.wte.weight"])


def test_the_teacher_as_its_own_student_has_zero_kl():
    teacher = _tiny(seed=1)
    student = _tiny(seed=2)
    student.load_state_dict(teacher.state_dict())
    d = Distiller(student, teacher, DistillConfig(temperature=2.0, alpha=1.0))
    d.train()
    x = _ids(32).reshape(4, 8)
    _, loss = d(x, np.roll(x, -1, axis=1))
    assert float(loss.data) == 0.0
    loss.backward()
    assert max(np.abs(p.grad).max() for p in student.parameters()) < 1e-6


def test_teacher_is_frozen_unregistered_and_not_checkpointed(tmp_path):
    teacher = _tiny(seed=1, n_embd=16)
    before = {k: v.copy() for k, v in teacher.state_dict().items()}
    ids = _ids()
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    tc = TrainConfig(max_steps=3, eval_every=3, eval_batches=1, progress=False,
                     warmup_steps=1)
    student, res = distill(teacher, cfg, tc, T=2.0, alpha=0.7, train_ids=ids[:300],
                           val_ids=ids[300:], batch_size=2, out_dir=str(tmp_path), log=None)
    assert res.steps == 3
    assert all(np.array_equal(before[k], v) for k, v in teacher.state_dict().items())
    arrays, optim_arrays, meta = load_checkpoint(str(tmp_path))
    own = student.state_dict()
    assert set(arrays) == set(own)
    assert all(arrays[k].shape == own[k].shape for k in own)
    n_student = len(list(student.named_parameters()))
    assert {int(k.split(".")[1]) for k in optim_arrays} == set(range(n_student))
    d = Distiller(_tiny(), teacher, DistillConfig())
    assert len(d.parameters()) == len(_tiny().parameters())     # the teacher's are not there
    assert "teacher" not in dict(d.named_modules())


def test_distiller_refuses_a_mismatched_pair():
    with pytest.raises(ValueError, match="vocabulary"):
        Distiller(_tiny(vocab_size=12), _tiny(), DistillConfig())
    with pytest.raises(ValueError, match="block_size"):
        Distiller(_tiny(block_size=16), _tiny(), DistillConfig())
    with pytest.raises(ValueError, match="alpha"):
        DistillConfig(alpha=-0.1)


# ------------------------------------------------------------------ the command

@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    return train_tiny_gpt(tmp_path_factory.mktemp("distill"))


STEPS = ["--eval_every=2", "--eval_batches=2", "--progress=false", "--sample_every=0"]


def test_cli_distill_writes_a_run_that_eval_reads_and_resumes_bitwise(teacher_run, tmp_path,
                                                                       capsys):
    d, teacher = teacher_run
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = ["distill", "--teacher", str(teacher), "--temperature=2", "--kind=reverse"] + STEPS
    assert cli.main(args + ["--out", str(straight), "--max_steps=4"]) == 0
    out = capsys.readouterr().out
    assert "student GPT 1L/2H/8" in out and "KL_reverse" in out
    model, tok, meta = load_model(str(straight / "last"))
    assert meta["distill"]["kind"] == "reverse" and meta["distill"]["temperature"] == 2.0
    assert meta["settings"]["n_embd"] == 8 and meta["model"]["config"]["n_layer"] == 1
    assert sorted(p.name for p in straight.iterdir()) == ["best", "last", "loss.png",
                                                          "metrics.jsonl"]
    assert cli.main(["eval", "--checkpoint", str(straight), "--windows", "4",
                     "--decode-tokens", "0", "--reference", str(teacher)]) == 0
    assert "loss - reference" in capsys.readouterr().out
    assert cli.main(["generate", "--checkpoint", str(straight), "--prompt", "It was",
                     "--max-new-tokens", "5"]) == 0
    # stopped after 2 steps, then --resume: the same weights as 4 straight
    assert cli.main(args + ["--out", str(split), "--max_steps=4", "--stop_at=2"]) == 0
    assert cli.main(["distill", "--teacher", str(teacher), "--out", str(split), "--resume",
                     "--max_steps=4", "--progress=false"]) == 0
    assert "resuming from step 2 of 4" in capsys.readouterr().out
    a, _, ma = load_checkpoint(str(straight / "last"))
    b, _, mb = load_checkpoint(str(split / "last"))
    assert mb["step"] == 4 and all(np.array_equal(a[k], b[k]) for k in a)
    # a resume may not change the distillation settings
    assert cli.main(["distill", "--teacher", str(teacher), "--out", str(split), "--resume",
                     "--alpha=0.9"]) == 2
    assert "distillation settings" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--temperature=0"], "temperature T must be a finite number > 0"),
    (["--temperature=nan"], "temperature T"),
    (["--alpha=1.5"], "alpha must be a number in [0, 1]"),
    (["--kind=sideways"], "kind must be one of forward, reverse"),
    (["--colour=red"], "unknown setting 'colour'"),
    (["--n_head=3"], "divisible by n_head"),
    (["--block_size=64"], "cannot exceed the teacher's"),
    (["--tokenizer=bpe"], "the teacher's tokenizer"),
    (["stray"], "unrecognized argument 'stray'"),
])
def test_cli_distill_bad_settings_exit_2_and_touch_nothing(teacher_run, tmp_path, capsys,
                                                          extra, message):
    _, teacher = teacher_run
    out = tmp_path / "student"
    assert cli.main(["distill", "--teacher", str(teacher), "--out", str(out)] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_distill_bad_teacher_and_folders(teacher_run, tmp_path, capsys):
    d, teacher = teacher_run
    cases = [
        (["--teacher", str(tmp_path / "nope"), "--out", str(tmp_path / "s")],
         "--teacher: checkpoint"),
        (["--teacher", str(d / "text.txt"), "--out", str(tmp_path / "s")], "is a file"),
        (["--teacher", str(teacher), "--out", str(teacher)], "differ from the teacher"),
        (["--teacher", str(teacher), "--out", str(tmp_path / "s2"), "--resume"],
         "does not exist"),
    ]
    for argv, message in cases:
        assert cli.main(["distill"] + argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    # a plain run folder is not a distillation run to resume
    plain = tmp_path / "plain"
    assert cli.main(["train", "--model", "gpt", "--config", "tiny", "--data",
                     str(d / "text.txt"), "--out", str(plain), "--max_steps=1"] + TINY) == 0
    capsys.readouterr()
    assert cli.main(["distill", "--teacher", str(teacher), "--out", str(plain),
                     "--resume"]) == 2
    assert "not a distillation run" in capsys.readouterr().err
    meta = json.loads((plain / "last" / "meta.json").read_text())
    assert "distill" not in meta


def test_validation_scores_the_student_alone():
    teacher, student = _tiny(seed=1), _tiny(seed=2)
    d = Distiller(student, teacher, DistillConfig(temperature=2.0, alpha=0.5))
    x = _ids(32).reshape(4, 8)
    y = np.roll(x, -1, axis=1)
    d.eval()
    assert not student.training and not teacher.training
    assert float(d(x, y)[1].data) == float(student(x, y)[1].data)
    d.train()
    assert student.training and not teacher.training
    assert float(d(x, y)[1].data) != float(student(x, y)[1].data)
