"""`tinyllm train`, `generate` and `demo` on tiny settings: files, resume, and bad input as
one line with the right exit status (2 = usage, 1 = runtime), never a traceback."""
import json
import os
import subprocess
import sys

import pytest

from tinyllm import cli

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness. ") * 40
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4",
        "--eval_every=3", "--eval_batches=2", "--warmup_steps=2", "--progress=false",
        "--log_every=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    data = d / "text.txt"
    data.write_text(TEXT)
    out = d / "run"
    assert cli.main(["train", "--model", "gpt", "--config", "tiny", "--data", str(data),
                     "--out", str(out), "--max_steps=6"] + TINY) == 0
    return d, data, out


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_train_writes_checkpoints_metrics_and_plot(run_dir):
    _, _, out = run_dir
    for f in ("last/meta.json", "best/meta.json", "metrics.jsonl", "loss.png"):
        assert (out / f).exists(), f
    meta = json.loads((out / "last" / "meta.json").read_text())
    assert meta["step"] == 6 and meta["model"]["type"] == "gpt"
    assert meta["settings"]["n_embd"] == 16 and meta["tokenizer"]["type"] == "char"


def test_resume_continues_the_run(run_dir, capsys):
    d, data, out = run_dir
    assert cli.main(["train", "--model", "gpt", "--config", "tiny", "--data", str(data),
                     "--out", str(out), "--resume", "--max_steps=9"] + TINY) == 0
    assert "resuming from step 6" in capsys.readouterr().out
    steps = [json.loads(x)["step"] for x in open(out / "metrics.jsonl")
             if "loss" in json.loads(x)]
    assert steps == list(range(1, 10))


def test_resume_refuses_a_changed_model(run_dir, capsys):
    d, data, out = run_dir
    assert cli.main(["train", "--model", "gpt", "--config", "tiny", "--data", str(data),
                     "--out", str(out), "--resume", "--n_embd=32"] + TINY[:2] + TINY[3:]) == 2
    assert "n_embd differ from the checkpoint" in _err(capsys)


def test_generate_continues_the_prompt(run_dir, capsys):
    _, _, out = run_dir
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", "it was",
                     "--max-new-tokens", "12", "--temperature", "0"]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert text.startswith("it was") and len(text) == len("it was") + 12


@pytest.mark.parametrize("argv, code, msg", [
    (["generate", "--prompt", "it", "--checkpoint", "{d}/nope"], 2, "does not exist"),
    (["generate", "--checkpoint", "{out}", "--prompt", "Zebra"], 2, "unknown character"),
    (["generate", "--checkpoint", "{out}", "--prompt", "it", "--top-p", "1.5"], 2, "--top-p"),
    (["generate", "--checkpoint", "{out}", "--prompt", "it", "--temperature", "-1"], 2,
     "--temperature"),
    (["train", "--model", "gpt", "--data", "{d}/missing.txt", "--out", "{d}/r"], 2,
     "not found"),
    (["train", "--model", "gpt", "--data", "{d}/empty.txt", "--out", "{d}/r"], 2, "empty"),
    (["train", "--model", "gpt", "--data", "{d}/short.txt", "--out", "{d}/r"], 2,
     "too short for block_size"),
    (["train", "--model", "gpt", "--max_steps=ten", "--out", "{d}/r"], 2, "max_steps='ten'"),
    (["train", "--model", "gpt", "--lr=-1", "--out", "{d}/r"], 2, "lr"),
    (["train", "--model", "gpt", "--n_head=3", "--out", "{d}/r"], 2, "divisible"),
    (["train", "--model", "gpt", "--colour=red", "--out", "{d}/r"], 2, "unknown setting"),
    (["train", "--model", "gpt", "--config", "huge", "--out", "{d}/r"], 2, "unknown --config"),
    (["train", "--model", "lstm"], 2, "invalid choice"),
    (["train", "--model", "gpt", "stray", "--out", "{d}/r"], 2, "unrecognized argument"),
    (["train", "--model", "gpt", "--resume", "--out", "{d}/fresh"], 1, "does not exist"),
    (["generate", "--checkpoint", "{d}/broken", "--prompt", "it"], 1, "truncated or corrupt"),
    (["demo", "--out", "{d}/text.txt"], 2, "not a folder"),
    (["frobnicate"], 2, "invalid choice"),
])
def test_bad_input_is_one_line(run_dir, capsys, argv, code, msg):
    d, _, out = run_dir
    (d / "empty.txt").write_text("")
    (d / "short.txt").write_text("just a few words")
    broken = d / "broken"
    if not broken.exists():
        import shutil
        shutil.copytree(out / "last", broken)
        f = broken / "model.safetensors"
        f.write_bytes(f.read_bytes()[:-7])
    argv = [a.format(d=d, out=out) for a in argv]
    assert cli.main(argv) == code
    err = _err(capsys)
    assert msg in err and len(err.strip().splitlines()) == 1, err


def test_rnn_train_and_answer(tmp_path, capsys):
    out = tmp_path / "rnn"
    assert cli.main(["train", "--model", "rnn", "--config", "copy", "--out", str(out),
                     "--max_steps=4", "--d_embed=8", "--d_hidden=16", "--d_attn=8",
                     "--n_train=64", "--batch_size=8", "--eval_every=2",
                     "--progress=false"]) == 0
    assert "held-out exact match" in capsys.readouterr().out
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", "b c d e f",
                     "--temperature", "0"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("<bos> b c d e f <sep>") and len(line.split()) == 13
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", "1 2 x"]) == 2
    assert "--prompt for a copy model" in _err(capsys)


def test_console_script_never_prints_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tinyllm", "train", "--model", "gpt",
                        "--data", str(tmp_path / "none.txt")], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("tinyllm: error:")


@pytest.mark.slow
def test_demo_quick(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "held-out exact match" in out and "unigram baseline" in out
    for f in ("attention.png", "loss_curves.png", "gpt/loss.png", "rnn_attention/last"):
        assert os.path.exists(tmp_path / "demo" / f), f
