"""``tl.save`` and ``tl.load``: a trained model (and what reads its input) to a folder and
back, in the checkpoint format that ``tinyllm train`` writes and ``tinyllm generate
--checkpoint`` reads (``tinyllm.train.checkpoint``: safetensors arrays plus ``meta.json``,
written atomically, never pickle).

    model, tok = tl.load("runs/latest")          # a run folder (its last/ or best/) ...
    model, tok = tl.load("runs/latest/best")     # ... or a checkpoint folder
    tl.save(model, "my-gpt", tokenizer=tok)      # then: tinyllm generate --checkpoint my-gpt

``tl.load`` returns ``(model, tokenizer)`` for a GPT (a ``CharTokenizer`` or
``BPETokenizer``: ``tok.encode(text)``, ``tok.decode(ids)``) and ``(model, task)`` for the
attention RNN (the ``SeqTask`` it was trained on: ``task.prompt(symbols)``,
``task.decode(ids)``). The model is in eval mode, in the dtype it was trained in.

``tl.save`` takes a ``tl.models.GPT`` with its tokenizer, or an ``AttentionRNN`` with its
task (``tokenizer=task``); both are needed to use the model, so both are stored. It writes the
folder ``path`` itself (``path/meta.json``, ``path/model.safetensors`` and an empty
``path/optim.safetensors``), replacing an earlier checkpoint there but refusing any other
non-empty folder. A checkpoint written by ``tl.save`` holds no optimiser state or step: it is
for generating, evaluating or fine-tuning from, not for ``tinyllm train --resume``. Its
``settings`` (what ``tinyllm generate`` rebuilds the model from) are the model's shape and
dtype and the tokenizer or task; the training settings are a preset's, marked
``"saved_by": "tl.save"`` in ``meta.json``.
"""
from __future__ import annotations

import os

import numpy as np

from ..data import BPETokenizer, CharTokenizer, GPT2Tokenizer, SeqTask
from ..models import GPT, AttentionRNN
from ..models.hf_gpt2 import is_hf_gpt2_dir
from . import runs
from .checkpoint import CheckpointError, save_checkpoint

__all__ = ["load", "save", "load_hf_gpt2"]


def load(path: str):
    """(model, tokenizer) of a GPT checkpoint or (model, task) of an RNN one, from a
    checkpoint folder or a run folder (its ``last/``, else ``best/``). The model is in eval
    mode. Raises ``CheckpointError`` for a missing, truncated or corrupt checkpoint. A Hugging
    Face GPT-2 folder gives (GPT, GPT2Tokenizer): ``load_hf_gpt2``."""
    if is_hf_gpt2_dir(path):
        return load_hf_gpt2(path)
    model, extra, _meta = runs.load_model(os.fspath(path))
    return model, extra


def load_hf_gpt2(path, dtype=np.float32):
    """(GPT, GPT2Tokenizer) of a Hugging Face GPT-2 folder: ``GPT.from_pretrained(path)``
    and ``GPT2Tokenizer.from_dir(path)``. Raises ``CheckpointError`` naming the file, setting
    or tensor that is missing or wrong."""
    path = os.fspath(path)
    for name in ("vocab.json", "merges.txt"):
        if not os.path.isfile(os.path.join(path, name)):
            raise CheckpointError(f"Hugging Face GPT-2 folder {path!r} has no {name} (the "
                                  f"tokenizer needs vocab.json and merges.txt)")
    try:
        model = GPT.from_pretrained(path, dtype)
        tok = GPT2Tokenizer.from_dir(path)
    except ValueError as e:                 # HFCheckpointError, or the tokenizer's files
        raise CheckpointError(str(e)) from None
    if tok.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {tok.vocab_size} tokens but the "
                              f"model's vocab_size is {model.config.vocab_size}")
    return model, tok


def _dtype_of(model) -> str:
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) != 1:
        raise ValueError(f"tl.save: the model's parameters mix dtypes {sorted(map(str, dtypes))}")
    dt = str(dtypes.pop())
    if dt not in ("float32", "float64"):
        raise ValueError(f"tl.save: parameters must be float32 or float64, got {dt}")
    return dt


def _gpt_meta(model: GPT, tokenizer) -> dict:
    cfg = model.config
    if tokenizer is None:
        raise ValueError("tl.save: a GPT is saved with its tokenizer (tokenizer=tok), so "
                         "that tl.load and `tinyllm generate` can encode a prompt")
    if not isinstance(tokenizer, (CharTokenizer, BPETokenizer)):
        raise TypeError(f"tl.save: tokenizer must be a CharTokenizer or BPETokenizer for a "
                        f"GPT, got {type(tokenizer).__name__}")
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(f"tl.save: the tokenizer has {tokenizer.vocab_size} tokens but the "
                         f"GPT's vocab_size is {cfg.vocab_size}")
    kind = "char" if isinstance(tokenizer, CharTokenizer) else "bpe"
    shape = {f: getattr(cfg, f) for f in ("block_size", "n_layer", "n_head", "n_embd",
                                          "dropout", "bias")}
    extra = {"bpe_vocab": tokenizer.vocab_size} if kind == "bpe" else {}
    p = runs.GPT_PRESETS["small"].replace(**shape, tokenizer=kind, dtype=_dtype_of(model),
                                          **extra)
    return {"model": {"type": "gpt", "config": cfg.to_dict()}, "settings": p.settings(),
            "tokenizer": tokenizer.to_dict()}


def _rnn_meta(model: AttentionRNN, task) -> dict:
    cfg = model.config
    if not isinstance(task, SeqTask):
        got = "none" if task is None else type(task).__name__
        raise ValueError(f"tl.save: an AttentionRNN is saved with the task it was trained on "
                         f"(tokenizer=task, a SeqTask), got {got}")
    if task.held_out_frac != SeqTask.held_out_frac:
        raise ValueError(f"tl.save: a task with held_out_frac={task.held_out_frac} cannot be "
                         f"stored (checkpoints keep the default {SeqTask.held_out_frac})")
    if (cfg.vocab_size, cfg.max_len) != (task.vocab_size, task.block_size):
        raise ValueError(f"tl.save: the model (vocab_size {cfg.vocab_size}, max_len "
                         f"{cfg.max_len}) does not fit the task (vocab_size {task.vocab_size}, "
                         f"block_size {task.block_size})")
    for f in ("d_mlp", "d_ff"):
        if getattr(cfg, f) not in (None, cfg.d_hidden):
            raise ValueError(f"tl.save: an AttentionRNN with {f}={getattr(cfg, f)} (not "
                             f"d_hidden) cannot be stored: checkpoints rebuild {f} = d_hidden")
    shape = {f: getattr(cfg, f) for f in ("d_embed", "d_hidden", "d_attn", "score",
                                          "attention")}
    base = runs.RNN_PRESETS["copy" if task.kind == "copy" else "reversal"]
    p = base.replace(**shape, task=task.kind, n_symbols=task.n_symbols, min_len=task.min_len,
                     max_len=task.max_len, dtype=_dtype_of(model))
    return {"model": {"type": "rnn"}, "settings": p.settings(),
            "task": {"kind": task.kind, "n_symbols": task.n_symbols, "min_len": task.min_len,
                     "max_len": task.max_len}}


def save(model, path: str, tokenizer=None) -> str:
    """Write ``model`` (a GPT with its ``tokenizer``, or an AttentionRNN with its task as
    ``tokenizer``) to the checkpoint folder ``path``, atomically; returns the folder. It
    replaces a checkpoint already at ``path`` and refuses any other non-empty folder."""
    if hasattr(model, "named_modules") and any(hasattr(m, "qweight")
                                               for _, m in model.named_modules()):
        raise TypeError("tl.save: the model is quantised; write it with "
                        "tinyllm.compress.save_compressed(float_model, tokenizer, path, method)")
    if isinstance(model, GPT):
        meta = _gpt_meta(model, tokenizer)
    elif isinstance(model, AttentionRNN):
        meta = _rnn_meta(model, tokenizer)
    else:
        raise TypeError(f"tl.save: saves a tl.models.GPT or AttentionRNN, got "
                        f"{type(model).__name__}; for another Module store "
                        f"model.state_dict() (e.g. with safetensors.numpy.save_file)")
    meta["saved_by"] = "tl.save"
    arrays = {name: np.asarray(a) for name, a in model.state_dict().items()}
    return write_model_folder(path, arrays, meta, "tl.save")


def write_model_folder(path, arrays: dict, meta: dict, op: str) -> str:
    """Write the checkpoint folder ``path`` itself (atomically), replacing an earlier
    checkpoint there but refusing a file or any other non-empty folder; ``op`` names the
    caller in the error. Returns the folder as given (a str)."""
    folder = os.path.normpath(os.path.abspath(os.fspath(path)))
    if os.path.isfile(folder):
        raise CheckpointError(f"{op}: {path!r} is a file; give a folder to write")
    if (os.path.isdir(folder) and os.listdir(folder)
            and not os.path.exists(os.path.join(folder, "meta.json"))):
        raise CheckpointError(f"{op}: {path!r} is a non-empty folder that holds no "
                              f"checkpoint; refusing to replace it (a run folder? save to "
                              f"a new folder)")
    parent, name = os.path.split(folder)
    save_checkpoint(parent, name, arrays, {}, meta)
    return os.fspath(path)
