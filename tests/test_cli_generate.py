"""`tinyllm generate`: streamed output, several samples, a prompt from a file, beam search,
and checkpoint paths that hold no checkpoint as bad input (exit 2, one line)."""
import subprocess
import sys

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import cli
from tinyllm.data import BPETokenizer
from tinyllm.train.runs import load_model

from _tiny_runs import train_tiny_gpt  # noqa: E402  (tests/ is on sys.path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny_gpt(tmp_path_factory.mktemp("gen"))


class _Recorder:
    """A stdout that keeps each write: streaming means many writes, not one at the end."""

    def __init__(self):
        self.writes = []

    def write(self, s):
        self.writes.append(s)
        return len(s)

    def flush(self):
        pass

    @property
    def text(self):
        return "".join(self.writes)


def _generate(monkeypatch, *argv):
    rec = _Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    code = cli.main(["generate", *argv])
    monkeypatch.undo()
    return code, rec


def test_output_is_streamed_and_matches_tl_generate(run_dir, monkeypatch):
    _, out = run_dir
    code, rec = _generate(monkeypatch, "--checkpoint", str(out), "--prompt", "it was",
                          "--max-new-tokens", "20", "--seed", "3")
    assert code == 0
    assert len([w for w in rec.writes if w]) >= 20       # one write per token as it comes
    model, tok, _ = load_model(str(out / "last"))
    ids = tl.generate(model, np.array([tok.encode("it was")]), 20, temperature=0.8, seed=3)
    assert rec.text == tok.decode(ids[0].tolist()) + "\n"


def test_num_samples_are_separate_and_differ(run_dir, capsys):
    _, out = run_dir
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", "it", "--num-samples",
                     "3", "--max-new-tokens", "30", "--temperature", "1.5"]) == 0
    samples = capsys.readouterr().out.rstrip("\n").split(f"\n{cli.SAMPLE_SEPARATOR}\n")
    assert len(samples) == 3 and all(s.startswith("it") and len(s) == 32 for s in samples)
    assert len(set(samples)) == 3
    # sample 0 is what the same seed gave with one sample
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", "it",
                     "--max-new-tokens", "30", "--temperature", "1.5"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == samples[0]


def test_prompt_from_a_file(run_dir, capsys):
    d, out = run_dir
    (d / "prompt.txt").write_text("the age of")
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", f"@{d}/prompt.txt",
                     "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("the age of")
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", f"@{d}/none.txt"]) == 2
    err = capsys.readouterr().err
    assert "none.txt" in err and len(err.strip().splitlines()) == 1


def test_beam_search(run_dir, capsys):
    _, out = run_dir
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", "it was",
                     "--max-new-tokens", "8", "--beam", "3"]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    model, tok, _ = load_model(str(out / "last"))
    best = tl.beam_search(model, np.array([tok.encode("it was")]), 8, beam_width=3)
    assert text == tok.decode(best[0].tolist())
    for bad in (["--beam", "0"], ["--beam", "2", "--top-k", "3"],
                ["--beam", "2", "--num-samples", "2"], ["--num-samples", "0"]):
        assert cli.main(["generate", "--checkpoint", str(out), "--prompt", "it", *bad]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_text_stream_of_a_bpe_tokenizer_waits_for_whole_characters():
    text = "naïve café, déjà vu: ünïcödé " * 20
    tok = BPETokenizer.train(text, 270)
    ids = tok.encode(text)
    stream = cli._TextStream(tok)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces)


def _one_line(*args):
    r = subprocess.run([sys.executable, "-m", "tinyllm", *args], capture_output=True,
                       text=True, timeout=120)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "RuntimeError" not in r.stderr and "CheckpointError" not in r.stderr
    return r.returncode, r.stderr


def test_a_path_without_a_checkpoint_is_bad_input(run_dir):
    d, _ = run_dir
    for path, msg in ((d, "no checkpoint in"), (d / "text.txt", "is a file"),
                      (d / "nope", "does not exist")):
        code, err = _one_line("generate", "--checkpoint", str(path), "--prompt", "it")
        assert code == 2 and msg in err, err
        code, err = _one_line("eval", "--checkpoint", str(path))
        assert code == 2 and msg in err, err


def test_resume_of_a_missing_run_is_bad_input(tmp_path):
    code, err = _one_line("train", "--model", "gpt", "--resume", "--out",
                          str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in err


def test_a_text_of_one_repeated_character_is_refused(tmp_path):
    (tmp_path / "nul.txt").write_bytes(b"\0" * 5000)
    code, err = _one_line("train", "--model", "gpt", "--data", str(tmp_path / "nul.txt"),
                          "--out", str(tmp_path / "run"), "--max_steps=2")
    assert code == 2 and "vocabulary of 1" in err and "\\x00" in err
    assert not (tmp_path / "run" / "last").exists()
