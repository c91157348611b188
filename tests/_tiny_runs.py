"""A tiny GPT run folder that several command-line test files train once per module."""
from tinyllm import cli

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness. ") * 40
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4",
        "--eval_every=3", "--eval_batches=2", "--warmup_steps=2", "--progress=false"]


def train_tiny_gpt(d):
    """Train 3 steps of a 1-layer GPT on TEXT in ``d/run``; returns (d, d / "run")."""
    (d / "text.txt").write_text(TEXT)
    out = d / "run"
    assert cli.main(["train", "--model", "gpt", "--config", "tiny", "--data",
                     str(d / "text.txt"), "--out", str(out), "--max_steps=3"] + TINY) == 0
    return d, out


def train_tiny_rnn(out, steps: int) -> None:
    """Train ``steps`` steps of a small attention RNN on the copy task into run folder ``out``."""
    assert cli.main(["train", "--model", "rnn", "--config", "copy", "--out", str(out),
                     f"--max_steps={steps}", "--d_embed=8", "--d_hidden=16", "--d_attn=8",
                     "--n_train=64", "--batch_size=8", "--eval_every=2",
                     "--progress=false"]) == 0
