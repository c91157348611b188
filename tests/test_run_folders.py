"""Run folders and what `tinyllm train` prints: the default --out in a fresh folder, a reused
folder refused unless --resume or --overwrite, a resume that keeps the run's settings, Ctrl-C
(a real SIGINT to a subprocess) leaving a checkpoint that resumes bitwise, file modes, the
evaluation log lines with bits per character/byte, and one rule for a bad lr."""
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tinyllm import cli
from tinyllm.data import BPETokenizer, encode_text
from tinyllm.train import TrainConfig, Trainer
from tinyllm.train.runs import SettingsError, make_preset, token_unit

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness. ") * 40
SMALL = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4",
         "--eval_batches=2", "--warmup_steps=2", "--progress=false", "--log_every=1"]


def train(out, *extra, data=None, config="tiny"):
    argv = ["train", "--model", "gpt", "--config", config, "--out", str(out)]
    if data is not None:
        argv += ["--data", str(data)]
    return cli.main(argv + SMALL + list(extra))


@pytest.fixture
def data(tmp_path):
    f = tmp_path / "text.txt"
    f.write_text(TEXT)
    return f


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _model_sha(out):
    return json.loads((out / "last" / "meta.json").read_text())["sha256"]


def _train_steps(out):
    return [json.loads(x)["step"] for x in open(out / "metrics.jsonl") if "loss" in json.loads(x)]


# ------------------------------------------------------------------ the default --out

def test_the_default_out_works_in_a_fresh_folder(tmp_path, monkeypatch, capsys, data):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--model", "gpt", "--config", "tiny", "--data", str(data),
                     "--max_steps=2", "--eval_every=2"] + SMALL) == 0
    assert (tmp_path / "runs" / "latest" / "last" / "meta.json").exists()


def test_a_bad_setting_lists_the_settings_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)                 # README: tinyllm train --model gpt --colour=red
    assert cli.main(["train", "--model", "gpt", "--colour=red"]) == 2
    err = _err(capsys)
    assert "unknown setting 'colour'; settings are" in err and "max_steps" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_out_in_missing_nested_folders_is_created(tmp_path, data):
    assert train(tmp_path / "a" / "b" / "run", "--max_steps=2", "--eval_every=2",
                 data=data) == 0
    assert (tmp_path / "a" / "b" / "run" / "last").is_dir()


# ------------------------------------------------------------------ reused folders

def test_a_reused_run_folder_is_refused_then_overwritten(tmp_path, capsys, data):
    out = tmp_path / "run"
    assert train(out, "--max_steps=4", "--eval_every=2", data=data) == 0
    before = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert train(out, "--max_steps=3", "--eval_every=3", data=data) == 2
    err = _err(capsys)
    assert "--resume" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "metrics.jsonl").read_text() == before        # untouched
    (out / ".hidden").write_text("kept")
    assert train(out, "--max_steps=3", "--eval_every=3", "--overwrite", data=data) == 0
    assert "--overwrite: removed the old run" in capsys.readouterr().out
    assert _train_steps(out) == [1, 2, 3]                       # one run, not two joined
    assert json.loads((out / "last" / "meta.json").read_text())["step"] == 3
    assert (out / ".hidden").read_text() == "kept"


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path, capsys, data):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert train(out, "--max_steps=2", "--overwrite", data=data) == 2
    assert "not a run folder" in _err(capsys)
    assert (out / "thesis.tex").read_text() == "precious" and os.listdir(out) == ["thesis.tex"]


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys, data):
    out = tmp_path / "run"
    assert train(out, "--max_steps=2", "--eval_every=2", data=data) == 0
    assert train(out, "--resume", "--overwrite", data=data) == 2
    assert "pass one of them" in _err(capsys)


# ------------------------------------------------------------------ resume keeps the run

def test_resume_continues_the_run_as_configured(tmp_path, capsys, data):
    # the case: --max_steps=300 --eval_every=25, stopped at 50, resumed plainly;
    # scaled down: 12 steps, validation every 3, stopped at 6
    straight, part = tmp_path / "straight", tmp_path / "part"
    assert train(straight, "--max_steps=12", "--eval_every=3", data=data) == 0
    assert train(part, "--max_steps=12", "--eval_every=3", "--stop_at=6", data=data) == 0
    capsys.readouterr()
    assert cli.main(["train", "--model", "gpt", "--data", str(data), "--out", str(part),
                     "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming from step 6 of 12" in out and "max_steps:" not in out
    assert re.search(r"^step 12/12: ", out, re.M) and "stopped (max_steps) at step 12" in out
    assert _train_steps(part) == list(range(1, 13))
    assert _model_sha(part) == _model_sha(straight)          # same schedule: same weights


def test_an_override_on_resume_is_explicit_and_printed(tmp_path, capsys, data):
    out = tmp_path / "run"
    assert train(out, "--max_steps=6", "--eval_every=3", data=data) == 0
    capsys.readouterr()
    assert cli.main(["train", "--model", "gpt", "--data", str(data), "--out", str(out),
                     "--resume", "--max_steps=8", "--eval_every=4"]) == 0
    text = capsys.readouterr().out
    assert "max_steps: 6 -> 8" in text and "eval_every: 3 -> 4" in text
    assert "resuming from step 6 of 8" in text
    meta = json.loads((out / "last" / "meta.json").read_text())
    assert meta["step"] == 8 and meta["settings"]["max_steps"] == 8


# ------------------------------------------------------------------ Ctrl-C

CHILD = textwrap.dedent("""
    import signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if the parent ignores it
    from tinyllm import cli
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_ctrl_c_saves_a_checkpoint_that_resumes_bitwise(tmp_path, capsys, data):
    steps = ["--max_steps=200", "--eval_every=5", "--sample_every=0"]
    out = tmp_path / "run"
    argv = ["train", "--model", "gpt", "--config", "tiny", "--data", str(data), "--out",
            str(out)] + SMALL + steps
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-c", CHILD] + argv, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    while p.poll() is None and not (out / "last" / "meta.json").exists():
        time.sleep(0.01)                      # training is under way at its first checkpoint
    p.send_signal(signal.SIGINT)
    text, err = p.communicate(timeout=120)
    assert p.returncode == 130, (text, err)
    assert "Traceback" not in err and "--resume" in err
    m = re.search(r"interrupted at step (\d+): saved checkpoint", text)
    assert m, text
    k = int(m.group(1))
    assert 5 <= k < 200
    assert json.loads((out / "last" / "meta.json").read_text())["step"] == k
    # resume (plainly: the run's own settings) and compare with a run never interrupted
    assert cli.main(["train", "--model", "gpt", "--data", str(data), "--out", str(out),
                     "--resume"]) == 0
    assert f"resuming from step {k} of 200" in capsys.readouterr().out
    straight = tmp_path / "straight"
    assert train(straight, *steps, data=data) == 0
    assert _model_sha(out) == _model_sha(straight)
    assert _train_steps(out) == list(range(1, 201))


class _Interrupting:
    """A batch function that raises KeyboardInterrupt (as a notebook's interrupt would) at
    its ``at``-th call, after drawing from the Generator."""

    def __init__(self, data, at):
        self.data, self.at, self.calls = data, at, 0

    def __call__(self, rng):
        self.calls += 1
        i = rng.integers(0, len(self.data) - 9, 4)
        if self.calls == self.at:
            raise KeyboardInterrupt
        x = np.stack([self.data[j:j + 8] for j in i])
        return x, np.stack([self.data[j + 1:j + 9] for j in i])


def test_a_keyboard_interrupt_inside_a_step_puts_the_step_back(tmp_path):
    from test_trainer import DATA, Tiny, weights_hash

    def make(out, batch, **kw):
        cfg = TrainConfig(max_steps=12, lr=3e-2, warmup_steps=3, eval_every=5, log_every=1,
                          progress=False, **kw)
        return Trainer(Tiny(), batch, _Interrupting(DATA, 0), cfg, out_dir=str(out),
                       log=None, meta={"model": {"type": "tiny"}})

    straight = make(tmp_path / "a", _Interrupting(DATA, 0))
    straight.fit()
    t = make(tmp_path / "b", _Interrupting(DATA, 8))
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert t.step == 7
    t2 = make(tmp_path / "b", _Interrupting(DATA, 0)).resume(str(tmp_path / "b"))
    assert t2.step == 7
    t2.fit()
    assert weights_hash(t2.model) == weights_hash(straight.model)


# ------------------------------------------------------------------ file modes

def test_files_get_the_umask_mode(tmp_path, data):
    from tinyllm.bench.report import write_json
    old = os.umask(0o022)
    try:
        write_json({"kernels": []}, str(tmp_path / "bench.json"))
        assert stat.S_IMODE(os.stat(tmp_path / "bench.json").st_mode) == 0o644
        out = tmp_path / "run"
        assert train(out, "--max_steps=2", "--eval_every=2", data=data) == 0
        for root, dirs, files in os.walk(out):
            for f in files:
                assert stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode) == 0o644, f
    finally:
        os.umask(old)


def test_gitignore_lists_the_default_output_folders():
    lines = open(os.path.join(os.path.dirname(__file__), "..", ".gitignore")).read().split()
    assert "/runs/" in lines and "/tinyllm-demo/" in lines


# ------------------------------------------------------------------ log lines

LINE = re.compile(r"^step (\d+)/6: train loss \d+\.\d{4}, val loss \d+\.\d{4} "
                  r"\((\d+\.\d{3}) bits/char\), [\d.]+ ms/step, [\d,]+ tokens/s, "
                  r"lr \d\.\d\de[-+]\d\d, saved checkpoint( \(new best\))?$", re.M)


def test_train_prints_a_line_at_each_evaluation_and_samples(tmp_path, capsys, data):
    assert train(tmp_path / "run", "--max_steps=6", "--eval_every=2", "--sample_every=2",
                 data=data) == 0
    out = capsys.readouterr().out
    lines = LINE.findall(out)
    assert [int(s) for s, _, _ in lines] == [2, 4, 6], out
    val = [json.loads(x)["val_loss"] for x in open(tmp_path / "run" / "metrics.jsonl")
           if "val_loss" in json.loads(x)]
    assert [float(b) for _, b, _ in lines] == pytest.approx([v / np.log(2) for v in val],
                                                            abs=1e-3)
    assert re.findall(r"^sample at step (\d+): '", out, re.M) == ["4", "6"]


def test_bits_per_byte_for_bpe():
    tok = BPETokenizer.train(TEXT, 300)
    ids = encode_text(TEXT, tok)
    name, per = token_unit(tok, ids)
    assert name == "byte" and per == pytest.approx(len(TEXT.encode()) / len(ids)) and per > 1


def test_fit_from_python_reports_progress(tmp_path):
    from test_trainer import DATA, Tiny
    lines = []
    batch = _Interrupting(DATA, 0)
    cfg = TrainConfig(max_steps=10, lr=3e-2, warmup_steps=3, eval_every=5, progress=False)
    Trainer(Tiny(), batch, batch, cfg, out_dir=str(tmp_path), log=lines.append,
            unit=("char", 1.0), sample=lambda model: "abc").fit()
    assert [ln.split(":")[0] for ln in lines if ln.startswith("step")] == ["step 5/10",
                                                                           "step 10/10"]
    assert "bits/char" in lines[0] and "saved checkpoint" in lines[0]
    assert "sample at step 10: 'abc'" in lines                   # sample_every=5: the end


def test_a_fresh_fit_does_not_join_an_old_metrics_file(tmp_path):
    from test_trainer import DATA, Tiny
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n')
    batch = _Interrupting(DATA, 0)
    cfg = TrainConfig(max_steps=3, lr=3e-2, warmup_steps=1, eval_every=3, log_every=1,
                      progress=False)
    Trainer(Tiny(), batch, batch, cfg, out_dir=str(tmp_path), log=None).fit()
    assert _train_steps(tmp_path) == [1, 2, 3]


def test_the_progress_bar_stays_on_screen():
    t = Trainer(__import__("test_trainer").Tiny(), None, None,
                TrainConfig(max_steps=3))
    bar = t._make_bar()
    try:
        assert bar.leave is True
    finally:
        bar.close()


# ------------------------------------------------------------------ lr

@pytest.mark.parametrize("lr", ["-1", "0", "inf", "nan"])
def test_one_rule_for_a_bad_lr(lr):
    with pytest.raises(SettingsError, match=r"^TrainConfig: lr must be a finite number > 0"):
        make_preset("gpt", "tiny", [f"--lr={lr}"])
