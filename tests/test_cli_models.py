"""`tinyllm train`, `generate` and `demo` on tiny settings: files, resume, and bad input as
one line with the right exit status (2 = usage, 1 = runtime), never a traceback; presets as
dataclasses, their overrides and what a resume may change."""
import json
import os
import subprocess
import sys

import pytest

import tinyllm as tl
from tinyllm import cli
from tinyllm.train import runs
from tinyllm.train.runs import (GPT_PRESETS, RNN_PRESETS, Preset, SettingsError, make_preset,
                                resume_preset)

from _tiny_runs import TEXT, train_tiny_rnn  # noqa: E402  (tests/ is on sys.path)
from _tiny_runs import TINY as _TINY  # noqa: E402

TINY = _TINY + ["--log_every=1"]


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
    (["train", "--model", "gpt", "--resume", "--out", "{d}/fresh"], 2, "does not exist"),
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
    train_tiny_rnn(out, steps=4)
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


# ------------------------------------------------------------------ presets as data

# the settings of each kind of run, as `tinyllm train` has always named them
GPT_SETTINGS = {"n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "batch_size",
                "tokenizer", "bpe_vocab", "dtype"}
RNN_SETTINGS = {"task", "n_symbols", "min_len", "max_len", "d_embed", "d_hidden", "d_attn",
                "score", "attention", "batch_size", "n_train", "dtype"}
TRAIN_SETTINGS = {"max_steps", "lr", "min_lr", "warmup_steps", "weight_decay", "beta1",
                  "beta2", "grad_clip", "eval_every", "eval_batches", "patience", "seed",
                  "log_every", "time_limit", "stop_at", "progress", "sample_every", "grad_accum",
                  "distributed", "bucket_mb", "device"}
RESUMABLE = ["max_steps", "eval_every", "eval_batches", "patience", "log_every",
             "time_limit", "stop_at", "progress", "sample_every", "distributed", "bucket_mb",
             "device"]


def test_presets_are_three_dataclasses_with_the_usual_settings():
    assert set(Preset.setting_fields("gpt")) == GPT_SETTINGS | TRAIN_SETTINGS
    assert set(Preset.setting_fields("rnn")) == RNN_SETTINGS | TRAIN_SETTINGS
    for kind, table in (("gpt", GPT_PRESETS), ("rnn", RNN_PRESETS)):
        for name, p in table.items():
            assert p.kind == kind and isinstance(p.train, tl.train.TrainConfig)
            assert Preset.from_settings(kind, p.settings()) == p, name
            assert make_preset(kind, name) == p
    small = GPT_PRESETS["small"]
    assert (small.model.n_layer, small.model.n_head, small.model.n_embd,
            small.model.block_size, small.data.batch_size) == (4, 4, 128, 128, 16)
    assert (small.train.max_steps, small.train.lr, small.train.min_lr) == (2000, 2e-3, 2e-3)
    rev = RNN_PRESETS["reversal-long"]
    assert (rev.data.min_len, rev.data.max_len, rev.model.d_hidden, rev.train.beta2,
            rev.train.eval_every) == (10, 20, 128, 0.999, 500)


def test_model_parts_follow_the_model_configs():
    from dataclasses import fields
    names = [f.name for f in fields(tl.models.GPTConfig)]
    # a pruned GPT's per-layer widths are not settings (meta.json's model.config has them)
    assert [f.name for f in fields(runs.GPTModel)] == [
        n for n in names if n not in ("vocab_size", "mlp_hidden", "layer_heads")]
    rnn = [f.name for f in fields(runs.RNNConfig)]
    assert rnn == ["vocab_size", "max_len", "d_embed", "d_hidden", "d_attn", "score",
                   "attention", "d_mlp", "d_ff"]                 # COMMON interface 2
    assert {f.name for f in fields(runs.RNNModel)} < set(rnn)
    cfg = GPT_PRESETS["tiny"].model.config(50)
    assert cfg == tl.models.GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2,
                                      n_embd=32)


def test_overrides_are_parsed_by_the_field_types():
    p = make_preset("gpt", "tiny", ["--bias=false", "--n_layer=3", "--lr=1e-2",
                                    "--min-lr=1e-4", "--tokenizer=bpe", "--progress=0"])
    assert p.model.bias is False and p.model.n_layer == 3 and p.train.progress is False
    assert p.train.lr == 1e-2 and p.train.min_lr == 1e-4 and p.data.tokenizer == "bpe"
    assert make_preset("gpt", "tiny", {"n_embd": 64}).model.n_embd == 64
    for bad, msg in ((["--n_layer=2.5"], "n_layer='2.5': expected int"),
                     (["--bias=maybe"], "bias='maybe': expected true/false"),
                     (["--min_lr=low"], "min_lr='low': expected float"),
                     (["--colour=red"], "unknown setting 'colour'; settings are batch_size"),
                     (["--tokenizer=word"], "tokenizer must be char or bpe"),
                     (["--bpe_vocab=100", "--tokenizer=bpe"], "bpe_vocab must be >= 256"),
                     (["--dtype=float16"], "dtype must be float32 or float64"),
                     (["--batch_size=0"], "batch_size must be >= 1"),
                     (["--n_head=3"], "divisible"),
                     (["--eval_every=0"], "eval_every must be a positive integer")):
        with pytest.raises(SettingsError, match=msg.replace("(", r"\(")):
            make_preset("gpt", "tiny", bad)
    with pytest.raises(SettingsError, match="task must be reversal or copy"):
        make_preset("rnn", "copy", ["--task=sort"])
    with pytest.raises(SettingsError, match="unknown --config 'huge'"):
        make_preset("gpt", "huge")


def test_what_a_resume_may_change_is_declared_on_the_fields():
    assert Preset.resumable_names("gpt") == RESUMABLE == Preset.resumable_names("rnn")
    assert tl.train.TrainConfig.resumable_names() == RESUMABLE
    saved = GPT_PRESETS["tiny"].settings()
    asked = make_preset("gpt", "small", ["--max_steps=7"])
    # not named explicitly, no --config: the checkpoint's model and data win silently
    p = resume_preset(asked, saved, explicit={"max_steps"})
    assert p.model == GPT_PRESETS["tiny"].model and p.data == GPT_PRESETS["tiny"].data
    assert p.train.max_steps == 7 and p.train.lr == GPT_PRESETS["tiny"].train.lr
    with pytest.raises(SettingsError, match="^n_embd differ from the checkpoint's"):
        resume_preset(asked, saved, explicit={"n_embd"})
    with pytest.raises(SettingsError, match="^block_size, n_layer, n_head, n_embd, lr, min_lr, "
                                            "warmup_steps, batch_size, bpe_vocab differ"):
        resume_preset(asked, saved, strict=True)
    # a setting an older checkpoint lacks takes the value asked for
    older = {k: v for k, v in saved.items() if k != "beta1"}
    assert resume_preset(make_preset("gpt", "tiny", ["--beta1=0.8"]), older,
                         {"beta1"}).train.beta1 == 0.8
    with pytest.raises(SettingsError, match="unknown settings colour"):
        Preset.from_settings("gpt", dict(saved, colour="red"))


def test_a_checkpoint_of_the_flat_settings_era_still_loads(run_dir, tmp_path, capsys):
    """Checkpoints written before presets were dataclasses store only the preset's keys,
    seed, patience and the overrides: generate and resume must still work from them."""
    import shutil
    d, data, out = run_dir
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for ck in ("last", "best"):
        path = old / ck / "meta.json"
        meta = json.loads(path.read_text())
        keep = (GPT_SETTINGS | {"max_steps", "lr", "min_lr", "warmup_steps", "weight_decay",
                                "beta2", "eval_every", "eval_batches", "grad_clip", "seed",
                                "patience", "progress", "log_every"})
        meta["settings"] = {k: v for k, v in meta["settings"].items() if k in keep}
        path.write_text(json.dumps(meta, indent=1))
    capsys.readouterr()
    assert cli.main(["generate", "--checkpoint", str(old), "--prompt", "it was",
                     "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("it was")
    assert cli.main(["train", "--model", "gpt", "--config", "tiny", "--data", str(data),
                     "--out", str(old), "--resume", "--max_steps=11"] + TINY) == 0
    assert "resuming from step" in capsys.readouterr().out


def test_bench_configs_are_the_presets():
    from tinyllm.bench.specs import ModelSpec, model_specs
    for quick in (True, False):
        a, b = model_specs(quick)
        for spec, name in ((a, "small"), (b, "medium")):
            p = GPT_PRESETS[name]
            assert (spec.n_layer, spec.n_head, spec.n_embd, spec.block_size,
                    spec.batch_size) == (p.model.n_layer, p.model.n_head, p.model.n_embd,
                                         p.model.block_size, p.data.batch_size)
    assert model_specs(False) == [ModelSpec("A", 4, 4, 128, 128, 16),
                                  ModelSpec("B", 6, 6, 384, 256, 8, train_steps=8,
                                            warm_steps=5)]
    assert model_specs(True)[1] == ModelSpec("B", 6, 6, 384, 256, 8, train_steps=1,
                                             warm_steps=1, new_tokens=12, gen_repeats=1)
