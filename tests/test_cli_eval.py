"""`tinyllm eval`: loss, perplexity and bits per character of a GPT checkpoint on a fixed,
seeded set of windows; exact match of an RNN checkpoint on its task's held-out split."""
import math

import numpy as np
import pytest

from tinyllm import cli
from tinyllm.data import BPETokenizer, CharTokenizer, default_corpus, train_val_split
from tinyllm.train.evaluate import evaluate_gpt, sample_windows, units_per_token
from tinyllm.train.runs import load_model

from _tiny_runs import TEXT, TINY, train_tiny_gpt, train_tiny_rnn  # noqa: E402  (tests/ is on sys.path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny_gpt(tmp_path_factory.mktemp("eval"))


def _value(out: str, name: str) -> float:
    line = next(x for x in out.splitlines() if x.startswith(name + " "))
    return float(line[len(name):].split()[0].replace(",", ""))


def test_eval_of_a_gpt_checkpoint_on_a_text(run_dir, capsys):
    d, out = run_dir
    assert cli.main(["eval", "--checkpoint", str(out), "--data", str(d / "text.txt"),
                     "--windows", "8", "--seed", "1", "--decode-tokens", "0"]) == 0
    text = capsys.readouterr().out
    loss, ppl, bpc = (_value(text, n) for n in ("loss", "perplexity", "bits/char"))
    assert math.isclose(ppl, math.exp(loss), rel_tol=1e-3)
    assert math.isclose(bpc, loss / math.log(2), rel_tol=1e-3)   # one char per token
    # the same number by hand: the model's mean cross-entropy on the same seeded windows
    model, tok, _ = load_model(str(out / "last"))
    ids = np.array(tok.encode(TEXT))
    starts = sample_windows(len(ids), 16, 8, seed=1)
    x = ids[starts[:, None] + np.arange(16)]
    y = ids[starts[:, None] + np.arange(16) + 1]
    assert math.isclose(loss, float(model(x, y)[1].data), rel_tol=1e-4)
    # fixed windows: the same figures on every run (the decode speed is not timed here)
    assert cli.main(["eval", "--checkpoint", str(out), "--data", str(d / "text.txt"),
                     "--windows", "8", "--seed", "1", "--decode-tokens", "0"]) == 0
    assert capsys.readouterr().out == text


def test_eval_defaults_to_the_validation_split(run_dir, tmp_path, capsys):
    out = tmp_path / "embedded"          # a run on the embedded corpus
    assert cli.main(["train", "--model", "gpt", "--config", "tiny", "--out", str(out),
                     "--max_steps=1"] + TINY) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(out), "--windows", "4"]) == 0
    text = capsys.readouterr().out
    assert "on the validation split of the embedded corpus" in text
    model, tok, _ = load_model(str(out / "last"))
    val = train_val_split(np.array(tok.encode(default_corpus())), 0.9)[1]
    assert f", {len(val):,} tokens" in text
    assert math.isclose(_value(text, "loss"), evaluate_gpt(model, tok, val, 4)["loss"],
                        abs_tol=1e-4)          # printed to 4 decimals


def test_eval_defaults_to_the_text_the_run_recorded(run_dir, tmp_path, capsys):
    d, out = run_dir
    import json
    import shutil
    ck = tmp_path / "ck"
    shutil.copytree(out / "last", ck)
    meta = json.loads((ck / "meta.json").read_text())
    meta["text"] = str(d / "text.txt")
    (ck / "meta.json").write_text(json.dumps(meta))
    assert cli.main(["eval", "--checkpoint", str(ck), "--windows", "4"]) == 0
    assert f"the validation split of {d / 'text.txt'}" in capsys.readouterr().out


def test_bits_per_byte_for_bpe():
    tok = BPETokenizer.train("naïve café " * 30, 262)
    units, unit = units_per_token(tok)
    assert unit == "byte" and units[ord("a")] == 1 and units.max() >= 2
    units, unit = units_per_token(CharTokenizer("abcé"))
    assert unit == "char" and list(units) == [1, 1, 1, 1]


def test_evaluate_gpt_scores_a_text_shorter_than_the_block(run_dir):
    _, out = run_dir
    model, tok, _ = load_model(str(out / "last"))
    ev = evaluate_gpt(model, tok, np.array(tok.encode("it was the")), windows=2)
    assert set(ev.to_dict()) == {"loss", "perplexity", "bits/char"}
    assert np.isfinite(ev["loss"])


def test_eval_reports_size_speed_and_a_paired_difference(run_dir, tmp_path, capsys):
    import tinyllm as tl
    from tinyllm.train.evaluate import compare_gpt, window_losses
    d, out = run_dir
    args = ["eval", "--checkpoint", str(out), "--data", str(d / "text.txt"), "--windows", "8",
            "--decode-tokens", "8"]
    assert cli.main(args + ["--reference", str(out)]) == 0
    text = capsys.readouterr().out
    size = (out / "last" / "model.safetensors").stat().st_size
    assert _value(text, "size as stored") == size
    assert _value(text, "decode speed") > 0
    assert _value(text, "loss - reference") == 0.0            # itself: the same windows
    assert _value(text, "greedy agreement") == 100.0
    assert _value(text, "identical greedy prefix") == 200
    # the per-window losses average to the loss evaluate_gpt reports
    model, tok, _ = load_model(str(out / "last"))
    ids = np.array(tok.encode(TEXT))
    w = window_losses(model, ids, 8, seed=0)
    assert math.isclose(w.mean(), evaluate_gpt(model, tok, ids, 8)["loss"], rel_tol=1e-5)
    # a perturbed copy: a positive difference, measured pairwise
    noisy, _, _ = load_model(str(out / "last"))
    rng = np.random.default_rng(0)
    for p in noisy.parameters():
        p.data += rng.standard_normal(p.data.shape).astype(p.data.dtype) * 0.05
    c = compare_gpt(noisy, model, ids, 8, greedy_tokens=20)
    assert c["delta"] > 0 and c["delta_se"] > 0
    assert math.isclose(c["delta"], c["loss"] - c["reference_loss"], rel_tol=1e-9)
    assert 0 <= c["greedy_agreement"] <= 1 and c["greedy_prefix"] <= 20
    tl.save(noisy, str(tmp_path / "noisy"), tokenizer=tok)
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "noisy"), "--data",
                     str(d / "text.txt"), "--windows", "8", "--decode-tokens", "0",
                     "--reference", str(out)]) == 0
    assert _value(capsys.readouterr().out, "loss - reference") > 0


def test_eval_bad_input(run_dir, tmp_path, capsys):
    d, out = run_dir
    (tmp_path / "zebra.txt").write_text("Zebra")
    for argv, msg in ((["--windows", "0"], "--windows"),
                      (["--decode-tokens", "-1"], "--decode-tokens"),
                      (["--reference", str(tmp_path / "nothing")], "--reference"),
                      (["--data", str(tmp_path / "none.txt")], "not found"),
                      (["--data", str(tmp_path / "zebra.txt")], "unknown character")):
        assert cli.main(["eval", "--checkpoint", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err


def test_eval_of_an_rnn_checkpoint(tmp_path, capsys):
    out = tmp_path / "rnn"
    train_tiny_rnn(out, steps=2)
    trained = capsys.readouterr().out
    assert cli.main(["eval", "--checkpoint", str(out)]) == 0
    text = capsys.readouterr().out
    assert "500 held-out examples" in text
    # the same split and figure that `train` printed at its end
    said = float(trained.split("held-out exact match ")[1].split("%")[0])
    assert math.isclose(_value(text, "exact match"), said, abs_tol=0.05)
    assert cli.main(["eval", "--checkpoint", str(out), "--windows", "3"]) == 2
