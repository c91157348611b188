"""The trainer and checkpoints: bitwise resume across processes, atomic files, corrupt or
truncated checkpoints, NaN losses, early stopping, metrics and plots."""
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tinyllm as tl
from tinyllm.autograd import functional as F
from tinyllm.nn import Module, Parameter
from tinyllm.train import (CheckpointError, TrainConfig, Trainer, TrainingError,
                           load_checkpoint)


class Tiny(Module):
    """A two-layer MLP language model over a 7-token vocabulary, with dropout."""

    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.emb = Parameter((rng.standard_normal((7, 8)) * 0.3).astype(np.float32))
        self.w1 = Parameter((rng.standard_normal((8, 16)) * 0.3).astype(np.float32))
        self.b1 = Parameter(np.zeros(16, np.float32))
        self.w2 = Parameter((rng.standard_normal((16, 7)) * 0.3).astype(np.float32))
        self.drop_rng = np.random.default_rng(seed + 5)

    def forward(self, x, y=None):
        h = F.embedding(x, self.emb)
        h = F.gelu(h @ self.w1 + self.b1)
        h = F.dropout(h, 0.1, self.training, self.drop_rng)
        logits = h @ self.w2
        loss = None if y is None else F.cross_entropy(logits.reshape((-1, 7)), y.reshape(-1))
        return logits, loss


DATA = (np.arange(500) % 7 + np.arange(500) // 13 % 2) % 7


def batch(rng):
    i = rng.integers(0, len(DATA) - 9, 4)
    x = np.stack([DATA[j:j + 8] for j in i])
    return x, np.stack([DATA[j + 1:j + 9] for j in i])


def weights_hash(model):
    h = hashlib.sha256()
    for name, a in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def run(out, steps, stop_at=0, resume=False, **kw):
    cfg = TrainConfig(max_steps=steps, lr=3e-2, warmup_steps=3, eval_every=5, log_every=1,
                      stop_at=stop_at, progress=False, **kw)
    t = Trainer(Tiny(), batch, batch, cfg, out_dir=out, meta={"model": {"type": "tiny"}},
                log=None)
    if resume:
        t.resume(out)
    r = t.fit()
    return t, r


def test_losses_fall_and_files_appear(tmp_path):
    t, r = run(str(tmp_path), 30)
    assert r.steps == 30 and r.stopped == "max_steps"
    assert np.mean([v for _, v in r.losses[-5:]]) < 0.8 * r.losses[0][1]
    for f in ("metrics.jsonl", "loss.png", "last/meta.json", "last/model.safetensors",
              "last/optim.safetensors", "best/meta.json"):
        assert (tmp_path / f).exists(), f
    recs = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [x["step"] for x in recs if "loss" in x] == list(range(1, 31))
    assert [x["step"] for x in recs if "val_loss" in x] == [5, 10, 15, 20, 25, 30]
    meta = json.loads((tmp_path / "last" / "meta.json").read_text())
    assert meta["step"] == 30 and meta["model"] == {"type": "tiny"}
    assert meta["rng"]["model"]["drop_rng"]["bit_generator"] == "PCG64"


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    from test_trainer import run, weights_hash
    t, r = run({out!r}, 20, resume=True)
    print(json.dumps({{"losses": r.losses, "hash": weights_hash(t.model)}}))
""")


def test_resume_in_a_new_process_is_bitwise_identical(tmp_path):
    straight, r1 = run(str(tmp_path / "a"), 20)
    # k = 7 steps (not at a validation step: the checkpoint comes from the stop itself)
    part, r2 = run(str(tmp_path / "b"), 20, stop_at=7)
    assert r2.stopped == "stop_at" and r2.steps == 7
    code = RESUME_SCRIPT.format(tests=os.path.dirname(__file__), out=str(tmp_path / "b"))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rest = json.loads(p.stdout.strip().splitlines()[-1])
    resumed = [tuple(x) for x in rest["losses"]]
    assert r2.losses + resumed == r1.losses              # exact float equality
    assert rest["hash"] == weights_hash(straight.model)
    steps = [json.loads(x)["step"] for x in open(tmp_path / "b" / "metrics.jsonl")
             if "loss" in json.loads(x)]
    assert steps == list(range(1, 21))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    t, _ = run(str(tmp_path), 10)
    before = {f: (tmp_path / "last" / f).read_bytes() for f in os.listdir(tmp_path / "last")}
    t.cfg.max_steps = 20
    t.model.w2.data[0, 0] = np.nan
    with pytest.raises(TrainingError, match=r"step 11: the loss is nan; the last good "
                                            r"checkpoint in .* is untouched"):
        t.fit()
    after = {f: (tmp_path / "last" / f).read_bytes() for f in os.listdir(tmp_path / "last")}
    assert before == after


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_damaged_checkpoints_are_refused(tmp_path, damage):
    run(str(tmp_path), 5)
    f = tmp_path / "last" / "model.safetensors"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:-10])
    elif damage == "flip":
        b = bytearray(f.read_bytes())
        b[-3] ^= 0xFF
        f.write_bytes(bytes(b))
    elif damage == "delete":
        f.unlink()
    else:
        (tmp_path / "last" / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="last"):
        load_checkpoint(str(tmp_path / "last"))


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(str(tmp_path))


def test_a_crash_mid_swap_falls_back_to_the_old_folder(tmp_path):
    run(str(tmp_path), 5)
    os.replace(tmp_path / "last", tmp_path / "last.old")       # as if killed mid-swap
    _, _, meta = load_checkpoint(str(tmp_path))
    assert meta["step"] == 5


def test_early_stopping_restores_the_best_weights(tmp_path):
    cfg = TrainConfig(max_steps=200, lr=0.5, warmup_steps=0, eval_every=2, patience=2,
                      progress=False, grad_clip=0.0)
    best = {}

    class Spy(Trainer):
        def _validate(self, res):
            stop = super()._validate(res)
            if self.best_step == self.step:
                best["hash"] = weights_hash(self.model)
            return stop
    t = Spy(Tiny(), batch, batch, cfg, out_dir=str(tmp_path), log=None)
    r = t.fit()
    assert r.stopped == "early_stopping" and r.steps < 200
    assert weights_hash(t.model) == best["hash"]
    assert r.best_val == min(v for _, v in r.val_losses)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="beta2"):
        TrainConfig(beta2=1.0)


def test_float32_model_stays_float32(tmp_path):
    t, _ = run(str(tmp_path), 3)
    assert all(p.dtype == np.float32 for p in t.model.parameters())
    arrays, _, _ = load_checkpoint(str(tmp_path))
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert tl.Tensor is not None
