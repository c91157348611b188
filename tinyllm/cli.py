"""The ``tinyllm`` command line (also ``python -m tinyllm``).

Commands:
  demo        the main job: the document's attention RNN (with and without attention) on
              sequence reversal, then a small GPT on the embedded corpus, with figures
  train       train a GPT on text or the attention RNN on a synthetic task, with checkpoints
  generate    continue a prompt from a GPT checkpoint (or answer a task prompt with an RNN one):
              sampled (streamed as it comes), several samples, or beam search; or
              speculative decoding with a draft checkpoint or prompt lookup (--draft,
              --prompt-lookup), reporting acceptance and the speed-up
  distill     train a smaller student GPT from a trained teacher GPT (knowledge distillation)
  eval        score a checkpoint: loss, perplexity and bits per character (GPT) or exact
              match on the task's held-out split (RNN)
  bench       time the kernels and the GPT end to end against NumPy, PyTorch and the machine
  gradcheck   gradcheck every registered op in float64 on random shapes; exit 1 on a failure
  eps-sweep   error of the central difference against eps, float32 and float64, for one op
  taylor      the Taylor-remainder slope for one op (about 2 = right, about 1 = wrong)
  attention   a trained run's attention maps for a prompt, as a PNG (GPT heads, RNN alpha)

Bad input prints one line and exits 2; a runtime failure prints one line and exits 1.
``tinyllm --version`` prints the package version; every option's help shows its default.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import warnings
import zlib

import numpy as np

from . import runtime


class UsageError(Exception):
    """A bad command-line input: one line, exit 2."""


class RunError(Exception):
    """A runtime failure the user can act on (a corrupt checkpoint, an unwritable file): one
    line, exit 1, printed without an exception class name."""


class _HelpFormatter(argparse.HelpFormatter):
    """Each option's help line ends with its default, unless the help already says it or
    there is none to say (a flag that is off, an option that is None when not given)."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if ("default" in text.lower() or d is None or d is False or d is argparse.SUPPRESS
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):            # argparse prints usage + message; we want one line
        raise UsageError(message)


def _op_names(args):
    from .autograd.opinfo import BY_NAME, OPS
    names = args.op or [op.name for op in OPS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise UsageError(f"unknown op {unknown[0]!r}; known: {', '.join(BY_NAME)}")
    return [BY_NAME[n] for n in names]


def _rng(seed, name, k=0):
    return np.random.default_rng([seed, zlib.crc32(name.encode()), k])


@contextlib.contextmanager
def _quiet_probes():
    """NumPy's floating-point warnings off inside the block. Finite differences at a bad eps,
    and the ops' deliberate overflow probes (logits of 1e4 and the like), warn a lot; the
    gradient-check commands report those numbers themselves. Only those commands use this:
    training keeps every warning."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def cmd_gradcheck(args) -> int:
    with _quiet_probes():
        return _gradcheck(args)


def _gradcheck(args) -> int:
    from .autograd.gradcheck import check_gradients
    from .autograd.tensor import Tensor, no_grad
    rows, failed = [], 0
    for op in _op_names(args):
        for k in range(args.samples):
            s = op.sample(_rng(args.seed, op.name, k))
            reports = check_gradients(s.fn, s.inputs, eps=args.eps, atol=args.atol,
                                      rtol=args.rtol, seed=args.seed, fast=args.fast)
            fwd = float("nan")
            if s.ref is not None:
                with no_grad():
                    out = s.fn(*[Tensor(x) for x in s.inputs]).data
                fwd = float(np.max(np.abs(out - s.ref(*s.inputs)), initial=0.0))
            ok = all(r.passed for r in reports) and not fwd > 1e-10
            failed += not ok
            rows.append((op.name, s.shapes + (f" {s.note}" if s.note else ""), fwd,
                         max(r.max_abs_err for r in reports),
                         max(r.max_rel_err for r in reports), "pass" if ok else "FAIL"))
    w = max(len(r[1]) for r in rows)
    wn = max(14, max(len(r[0]) for r in rows) + 2)
    print(f"{'op':<{wn}}{'shapes':<{w + 2}}{'fwd err':>10}{'max abs err':>13}"
          f"{'max rel err':>13}  result")
    for name, shapes, fwd, abs_err, rel_err, res in rows:
        fwd_s = "-" if np.isnan(fwd) else f"{fwd:.1e}"
        print(f"{name:<{wn}}{shapes:<{w + 2}}{fwd_s:>10}{abs_err:>13.2e}{rel_err:>13.2e}  {res}")
    mode = "fast (random direction)" if args.fast else "full (every element)"
    print(f"\n{len(rows) - failed} passed, {failed} failed  [float64, central differences, "
          f"eps={args.eps}, atol={args.atol}, rtol={args.rtol}, {mode}]")
    return 1 if failed else 0


def cmd_eps_sweep(args) -> int:
    from .autograd.lab import eps_sweep
    (op,) = _op_names(args)
    s = op.sample(_rng(args.seed, op.name))
    with _quiet_probes():
        sweep = eps_sweep(s.fn, s.inputs, seed=args.seed)
    print(f"eps sweep for {op.name} ({s.shapes}): relative error of the central difference")
    print(sweep.table())
    if args.plot:
        try:
            sweep.plot().savefig(args.plot)
        except OSError as e:
            raise RunError(f"cannot write the plot to {args.plot}: {e.strerror}") from None
        print(f"plot written to {args.plot}")
    return 0


def cmd_taylor(args) -> int:
    from .autograd.lab import taylor_test
    ok = True
    for op in _op_names(args):
        s = op.sample(_rng(args.seed, op.name))
        with _quiet_probes():
            res = taylor_test(s.fn, s.inputs, seed=args.seed, full=True)
        ok &= res.passed
        print(f"{op.name:<20} slope {res.slope:6.3f}  {res.verdict()}")
    return 0 if ok else 1


def cmd_demo(args) -> int:
    import os

    from .train.demo import demo
    _writable_dir(args.out, "--out")
    try:
        os.makedirs(args.out, exist_ok=True)     # and any missing parent folders
    except OSError as e:
        raise UsageError(f"--out {args.out!r}: cannot create the folder "
                         f"({e.strerror or e})") from None
    runtime.configure(keep_freed_memory=True)
    demo(args.out, quick=args.quick)    # --quick: a smoke run with few steps per phase
    return 0


def _writable_dir(path, flag):
    """Refuse a ``path`` that is a file, or whose nearest existing folder is not writable
    (missing folders are created later)."""
    import os
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} exists and is not a folder")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f"{flag} {path!r}: {probe!r} is a file, not a folder")
    if not os.access(probe, os.W_OK):
        raise UsageError(f"{flag} {path!r} is not writable")


def _fit(trainer, resumed: bool, again: str, say=print):
    """``trainer.fit()`` as the training commands run it: the resume line first; on Ctrl-C
    (the trainer has saved last/ and said so) the command that continues the run, and None.
    Returns the TrainResult."""
    if resumed:
        say(f"resuming from step {trainer.step} of {trainer.cfg.max_steps}")
    try:
        return trainer.fit()
    except KeyboardInterrupt:
        say(f"tinyllm: interrupted; continue with: {again} --resume", file=sys.stderr)
        return None


def cmd_train(args) -> int:
    import os

    from .data import load_corpus
    from .train.runs import (SettingsError, gpt_trainer, make_preset, prepare_run_folder,
                             resume_changes, resume_preset, rnn_trainer, unigram_baseline)
    runtime.configure(keep_freed_memory=True)
    rank, agree = 0, (lambda fn: fn())
    launched = max(int(os.environ.get(v, "1") or 1) for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))
    if launched > 1 and not args.distributed:   # N separate runs would share one --out
        raise UsageError(f"started by mpiexec as {launched} processes: pass --distributed "
                         f"(or run one process)")
    if args.distributed:                 # mpiexec -n N tinyllm train ... --distributed
        from .train.distributed import DistributedError, MPIGroup
        try:
            group = MPIGroup()
        except DistributedError as e:
            raise UsageError(str(e)) from None
        rank, agree = group.rank, group.agree

    def say(*a, **k):                    # rank 0 alone reports
        if rank == 0:
            print(*a, **k)
    if args.model == "rnn" and args.data:
        raise UsageError("--data is for --model gpt; the RNN trains on a synthetic task "
                         "(choose it with --config reversal|reversal-long|copy)")
    preset = args.config or ("small" if args.model == "gpt" else "reversal")
    try:                                 # the settings first: a bad one touches no folder
        p = make_preset(args.model, preset, args.settings)
    except SettingsError as e:
        raise UsageError(str(e)) from None
    if args.device:
        p = p.replace(device=args.device)
    if p.train.device == "cuda":         # no GPU (and no simulator): one line, exit 2
        from .backend import require_cuda
        from .errors import DeviceError
        if args.model != "gpt" or args.distributed:
            raise UsageError("--device cuda trains --model gpt in one process (not the rnn, "
                             "not --distributed)")
        try:
            require_cuda("--device cuda")
        except DeviceError as e:
            raise UsageError(str(e)) from None
    if args.distributed:
        p = p.replace(distributed=True)
        if p.data.batch_size % group.world:          # every rank says it: no rank waits
            raise UsageError(f"--distributed: batch_size {p.data.batch_size} is the global "
                             f"batch and the {group.world} ranks must share it equally; "
                             f"choose a multiple of {group.world}")
    if args.data:
        try:
            load_corpus(args.data)
        except (OSError, ValueError) as e:
            raise UsageError(str(e)) from None
    _writable_dir(args.out, "--out")
    try:
        done = agree(lambda: prepare_run_folder(args.out, resume=args.resume,
                                                overwrite=args.overwrite))
    except SettingsError as e:
        raise UsageError(str(e)) from None
    if done:
        say(done)
    if args.resume:
        _, meta = checkpoint_arg(args.out, "--resume: --out")
        if meta.get("model", {}).get("type") != args.model:
            raise UsageError(f"--resume: {args.out} holds a {meta.get('model', {}).get('type')}"
                             f" run, not --model {args.model}")
        explicit = {kv.split("=", 1)[0].lstrip("-").replace("-", "_") for kv in args.settings}
        saved = meta.get("settings", {})
        try:        # the run's own settings, but those given again (resumable ones only)
            p = resume_preset(p, saved, explicit, strict=bool(args.config))
        except SettingsError as e:
            raise UsageError(f"--resume: {e}") from None
        for line in resume_changes(saved, p):
            say(line)
        if p.train.max_steps > saved.get("max_steps", p.train.max_steps):
            say(f"(the learning-rate schedule still ends at step {saved['max_steps']}; the "
                f"steps after it run at min_lr)")
    s = p.settings()
    if args.model == "gpt":
        try:
            trainer, tok, train, val = gpt_trainer(p, args.data, args.out, resume=args.resume)
        except SettingsError as e:
            raise UsageError(str(e)) from None
        say(f"GPT {s['n_layer']}L/{s['n_head']}H/{s['n_embd']} block {s['block_size']}, "
            f"{trainer.model.num_parameters():,} parameters, vocab {tok.vocab_size}; "
            f"unigram baseline {unigram_baseline(train, val, tok.vocab_size):.3f} nats/token")
    else:
        trainer, task, held = rnn_trainer(p, args.out, resume=args.resume)
        say(f"AttentionRNN ({'additive' if s['attention'] else 'no'} attention) on "
            f"{s['task']} lengths {s['min_len']}-{s['max_len']}, "
            f"{trainer.model.num_parameters():,} parameters")
    r = _fit(trainer, args.resume, f"tinyllm train --model {args.model} --out {args.out}", say)
    if r is None:
        return 130
    last_val = f"{r.val_losses[-1][1]:.4f}" if r.val_losses else "-"
    bits = trainer.bits(r.best_val)
    say(f"stopped ({r.stopped}) at step {r.steps}: val loss {last_val}, best "
        f"{r.best_val:.4f}{f' ({bits[0]:.3f} bits/{bits[1]})' if bits else ''} at step "
        f"{r.best_step}; {r.seconds:.1f} s, {r.tokens / max(r.seconds, 1e-9):,.0f} tokens/s")
    if args.model == "rnn":
        from .train.seq_tasks import evaluate_exact_match
        say(f"held-out exact match {evaluate_exact_match(trainer.model, held) * 100:.1f}%")
    say(f"checkpoints: {os.path.join(args.out, 'last')} and 'best'; metrics.jsonl, loss.png")
    return 0

def cmd_distill(args) -> int:
    """Train a student GPT from a teacher GPT's softened predictions into a run folder."""
    import os

    from .compress.distill import DistillConfig, distill_run, split_settings, student_preset
    from .data import load_corpus
    from .train.runs import SettingsError, prepare_run_folder
    runtime.configure(keep_freed_memory=True)
    folder, tmeta = checkpoint_arg(args.teacher, "--teacher")
    if tmeta.get("model", {}).get("type") != "gpt" or not isinstance(tmeta.get("settings"),
                                                                      dict):
        raise UsageError(f"--teacher: {folder} is not a GPT checkpoint written by tinyllm "
                         f"train; distillation needs a GPT teacher")
    try:                                 # the settings first: a bad one touches no folder
        dist, rest = split_settings(args.settings)
        DistillConfig(**dist)
        student_preset(tmeta["settings"], rest)
    except (SettingsError, ValueError) as e:
        msg = str(e).replace("DistillConfig: ", "")
        if msg.startswith("unknown setting"):
            msg += "; and the distillation's temperature, alpha, kind"
        raise UsageError(msg) from None
    if args.data:
        try:
            load_corpus(args.data)
        except (OSError, ValueError) as e:
            raise UsageError(f"--data: {e}") from None
    _writable_dir(args.out, "--out")
    if os.path.abspath(args.out) in (os.path.abspath(folder),
                                     os.path.abspath(os.path.dirname(folder))):
        raise UsageError("--out must differ from the teacher's folder")
    try:
        done = prepare_run_folder(args.out, resume=args.resume, overwrite=args.overwrite)
    except SettingsError as e:
        raise UsageError(str(e)) from None
    if done:
        print(done)
    if args.resume:
        checkpoint_arg(args.out, "--resume: --out")
    try:
        trainer, info = distill_run(args.teacher, args.out, args.settings, args.data,
                                    resume=args.resume)
    except SettingsError as e:
        raise UsageError(str(e)) from None
    for line in info["changes"]:
        print(line)
    s, d, teacher = info["preset"].settings(), info["distill"], info["teacher"]
    n_s = trainer.model.num_parameters()
    print(f"teacher {info['teacher_folder']}: {teacher.num_parameters():,} parameters; "
          f"student GPT {s['n_layer']}L/{s['n_head']}H/{s['n_embd']} block {s['block_size']}, "
          f"{n_s:,} parameters ({teacher.num_parameters() / n_s:.1f}x smaller)")
    print(f"loss = {d.alpha:g} * T^2 * KL_{d.kind} + {1 - d.alpha:g} * CE at T = "
          f"{d.temperature:g}; val loss is the student's own cross-entropy")
    r = _fit(trainer, args.resume, f"tinyllm distill --teacher {args.teacher} --out {args.out}")
    if r is None:
        return 130
    last_val = f"{r.val_losses[-1][1]:.4f}" if r.val_losses else "-"
    print(f"stopped ({r.stopped}) at step {r.steps}: val loss {last_val}, best "
          f"{r.best_val:.4f} at step {r.best_step}; {r.seconds:.1f} s")
    print(f"checkpoints: {os.path.join(args.out, 'last')} and 'best'; metrics.jsonl, loss.png")
    return 0


def _checkpoint_folder(path: str, flag: str) -> str:
    """The checkpoint folder meant by ``path`` (see ``checkpoint.resolve``), or UsageError."""
    from .train.checkpoint import CheckpointError, resolve
    try:
        return resolve(path)
    except CheckpointError as e:
        raise UsageError(f"{flag}: {e}") from None


def checkpoint_arg(path: str, flag: str = "--checkpoint"):
    """The checkpoint folder meant by a command-line path, and its meta.json.

    A path that does not exist, a file, or a folder holding no checkpoint is bad input
    (UsageError, exit 2); a checkpoint that is there but unreadable is a runtime failure
    (RunError, exit 1). ``train --resume`` calls this with ``--out`` before anything runs."""
    from .train.checkpoint import CheckpointError, load_checkpoint
    folder = _checkpoint_folder(path, flag)
    try:
        _, _, meta = load_checkpoint(folder)
    except CheckpointError as e:
        raise RunError(f"{flag}: {e}") from None
    return folder, meta


def _load_model_arg(path: str, flag: str = "--checkpoint"):
    """(model, tokenizer or task, meta, folder) from a command-line checkpoint path."""
    from .models.hf_gpt2 import is_hf_gpt2_dir
    from .train.checkpoint import CheckpointError
    from .train.runs import load_model
    if is_hf_gpt2_dir(path):             # a Hugging Face GPT-2 folder: no meta.json
        from .train.persist import load_hf_gpt2
        try:
            model, tok = load_hf_gpt2(path)
        except CheckpointError as e:
            raise RunError(f"{flag}: {e}") from None
        return model, tok, {"model": {"type": "gpt"}, "format": "huggingface-gpt2"}, path
    folder = _checkpoint_folder(path, flag)
    try:
        model, extra, meta = load_model(folder)
    except CheckpointError as e:
        raise RunError(f"{flag}: {e}") from None
    except ValueError as e:              # a checkpoint `tinyllm train` did not write
        raise UsageError(f"{flag}: {e}") from None
    return model, extra, meta, folder


def _read_prompt(text: str) -> str:
    """``--prompt``: the text itself, or ``@FILE`` for a file's UTF-8 contents (``@@...`` for
    a literal leading @)."""
    if text.startswith("@@"):
        return text[1:]
    if not text.startswith("@"):
        return text
    path = text[1:]
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UsageError(f"--prompt @{path}: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--prompt @{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at "
                         f"offset {e.start})") from None


class _TextStream:
    """Token ids in, printable text out as soon as it is complete. A BPE token is a run of
    bytes that may end inside a UTF-8 character: the bytes wait in an incremental decoder
    until the character is whole. Other tokenizers decode one token at a time."""

    def __init__(self, tok):
        import codecs
        self.tok = tok
        self.bytes = hasattr(tok, "token_bytes")
        self.dec = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, i: int) -> str:
        if self.bytes:
            return self.dec.decode(self.tok.token_bytes(i))
        return self.tok.decode([i])

    def flush(self) -> str:
        return self.dec.decode(b"", final=True) if self.bytes else ""


def _stream_sample(model, tok, ids, args, rng, write) -> list:
    """One sample, its text written token by token as it is chosen (the same tokens as
    ``tl.generate`` with this rng). Returns the new ids."""
    from .infer import decode
    from .infer.generate import sample_next
    new, text = [], _TextStream(tok)

    def choose(logits, i):
        nxt = sample_next(logits, float(args.temperature), args.top_k, args.top_p, rng)
        new.append(int(nxt[0]))
        write(text.push(int(nxt[0])))
        return nxt.astype(np.int64), None

    decode(model, np.array([ids], np.int64), args.max_new_tokens, choose)
    write(text.flush())
    return new


SAMPLE_SEPARATOR = "-" * 40


def cmd_generate(args) -> int:
    from .data import UnknownTokenError
    from .infer import beam_search, generate
    model, extra, meta, _ = _load_model_arg(args.checkpoint)
    prompt = _read_prompt(args.prompt)
    rng = np.random.default_rng(args.seed)  # one stream: sample 0 is what --seed gave before

    def write(piece):
        sys.stdout.write(piece)
        sys.stdout.flush()

    speculative = args.draft is not None or args.prompt_lookup is not None
    if speculative and meta["model"]["type"] != "gpt":
        raise UsageError("--draft and --prompt-lookup are for GPT checkpoints; this one is an "
                         "RNN")
    if meta["model"]["type"] == "gpt":
        tok = extra
        try:
            ids = tok.encode(prompt)
        except UnknownTokenError as e:
            raise UsageError(f"--prompt: {e}") from None
        if not ids:
            raise UsageError("--prompt is empty; give at least one character")
        if speculative:
            return _generate_speculative(model, tok, ids, args, write)
        for k in range(args.num_samples):
            if k:
                write(f"\n{SAMPLE_SEPARATOR}\n")
            if args.beam:
                out = beam_search(model, np.array([ids]), args.max_new_tokens,
                                  beam_width=args.beam)
                write(tok.decode(out[0].tolist()))
            else:
                write(prompt)
                _stream_sample(model, tok, ids, args, rng, write)
        write("\n")
        return 0
    task = extra                          # an RNN checkpoint: the prompt is task symbols
    names = task.token_names[4:]          # "a", "b", ... after the four special tokens
    try:
        symbols = [names.index(t) for t in prompt.replace(",", " ").split()]
        if not task.min_len <= len(symbols) <= task.max_len:
            raise ValueError(f"got {len(symbols)}")
        prompt_ids = task.prompt(symbols)
    except ValueError:
        raise UsageError(f"--prompt for a {task.kind} model is {task.min_len} to "
                         f"{task.max_len} of the symbols {' '.join(names)} separated by "
                         f"spaces, got {prompt!r}") from None
    from .data.tasks import EOS
    for _ in range(args.num_samples):
        if args.beam:
            out = beam_search(model, np.array([prompt_ids]), len(symbols) + 1,
                              beam_width=args.beam, eos_token_id=EOS)
        else:
            out = generate(model, np.array([prompt_ids]), len(symbols) + 1,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           seed=rng)
        print(task.decode(out[0].tolist()))
    return 0


def _speculative_draft(model, tok, args):
    """The draft of --draft (a GPT checkpoint over the same tokenizer) or --prompt-lookup,
    and a few words naming it."""
    from .infer import PromptLookupDraft
    if args.draft is None:
        return PromptLookupDraft(ngram=args.prompt_lookup), \
            f"prompt lookup ({args.prompt_lookup}-gram)"
    draft, dtok, dmeta, folder = _load_model_arg(args.draft, "--draft")
    if dmeta["model"]["type"] != "gpt":
        raise UsageError(f"--draft: {folder} is an RNN checkpoint; the draft must be a GPT")
    vt, vd = model.config.vocab_size, draft.config.vocab_size
    if vd != vt:
        raise UsageError(f"--draft: its vocabulary has {vd} tokens and the checkpoint's {vt}; "
                         f"the draft must use the checkpoint's tokenizer")
    to_dict = getattr(tok, "to_dict", None)
    if to_dict is not None and callable(getattr(dtok, "to_dict", None)) \
            and dtok.to_dict() != to_dict():
        raise UsageError("--draft: its tokenizer differs from the checkpoint's (same size, "
                         "different tokens); the draft must use the checkpoint's tokenizer")
    return draft, f"draft {folder}"


def _generate_speculative(model, tok, ids, args, write) -> int:
    """--draft / --prompt-lookup: the text, then the acceptance rate, tokens per target call
    and the speed-up against plain decoding of the same prompt and length, both timed here
    (after one short untimed warm-up of each)."""
    import time

    from .infer import generate, speculative_decode
    draft, name = _speculative_draft(model, tok, args)
    k = 4 if args.k is None else args.k
    x = np.array([ids], np.int64)
    n = args.max_new_tokens
    kw = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    speculative_decode(model, draft, x, min(n, 2 * k + 2), k=k, seed=args.seed, **kw)
    generate(model, x, min(n, 4), seed=args.seed, **kw)
    t0 = time.perf_counter()
    plain = generate(model, x, n, seed=args.seed, **kw)
    t_plain = time.perf_counter() - t0
    out, st = speculative_decode(model, draft, x, n, k=k, seed=args.seed, **kw)
    write(tok.decode(out[0].tolist()) + "\n")
    same = ("greedy output identical to plain decoding: "
            + ("yes" if np.array_equal(out, plain) else "NO")) if args.temperature == 0 \
        else "sampled: the target's distribution, other draws than plain decoding"
    print(f"speculative decoding ({name}, k={k}): {n} tokens in {st.rounds} rounds; "
          f"acceptance {100 * st.acceptance_rate:.1f}% ({st.accepted}/{st.proposed} draft "
          f"tokens, per-token alpha {100 * st.alpha:.1f}%); "
          f"{st.tokens_per_target_call:.2f} tokens per target call")
    print(f"speed-up {t_plain / st.wall_time_s:.2f}x against plain decoding of the same prompt "
          f"and length ({1e3 * st.wall_time_s:.1f} ms vs {1e3 * t_plain:.1f} ms, both timed in "
          f"this run); {same}")
    return 0


def cmd_eval(args) -> int:
    from .data import UnknownTokenError, load_corpus, train_val_split
    from .train.evaluate import EVAL_WINDOWS, evaluate_gpt, evaluate_rnn
    model, extra, meta, folder = _load_model_arg(args.checkpoint)
    kind = meta["model"]["type"]
    head = f"checkpoint {folder} ({kind}, step {meta.get('step', '?')})"
    if kind == "rnn":
        if args.data is not None or args.windows is not None:
            raise UsageError("--data and --windows are for GPT checkpoints; an RNN checkpoint "
                             "is scored on its task's held-out split")
        from .train.runs import Preset, rnn_batches
        p = Preset.from_settings("rnn", meta["settings"])
        held = rnn_batches(extra, p.data, p.train.seed)[2]
        ev = evaluate_rnn(model, held)
        print(head)
        print(ev.table())
        return 0
    tok = extra
    if args.data is not None:
        try:
            text = load_corpus(args.data)
        except (OSError, ValueError) as e:
            raise UsageError(f"--data: {e}") from None
        where = f"{args.data} (all of it)"
    else:
        # the text the run trained on, where its meta.json records it (a str under "text",
        # or "data" in older checkpoints); else the embedded corpus
        src = meta.get("text", meta.get("data"))
        if not isinstance(src, str) or src == "embedded":
            text, name = load_corpus(None), "the embedded corpus"
        else:
            try:
                text = load_corpus(src)
            except (OSError, ValueError):
                raise UsageError(f"the checkpoint was trained on {src!r}, which cannot be "
                                 f"read now; name the text with --data") from None
            name = src
        where = f"the validation split of {name}"
    try:
        ids = np.asarray(tok.encode(text), np.int64)
    except UnknownTokenError as e:
        flag = "--data" if args.data is not None else f"{where} (name the text with --data)"
        raise UsageError(f"{flag}: {e}; this checkpoint's tokenizer cannot encode it") from None
    if args.data is None:
        ids = train_val_split(ids, 0.9)[1]        # the ids `tinyllm train` validates on
    if len(ids) < 2:
        raise UsageError(f"--data: {where} is {len(ids)} token(s); at least 2 are needed")
    windows = args.windows if args.windows is not None else EVAL_WINDOWS
    ev = evaluate_gpt(model, tok, ids, windows=windows, seed=args.seed)
    from .train.evaluate import compare_gpt, decode_speed, fixed_prompt, stored_bytes
    ev.add("size as stored", stored_bytes(folder), "bytes", ",.0f")
    if args.decode_tokens:
        tps = decode_speed(model, fixed_prompt(ids, 32, args.seed), args.decode_tokens)
        ev.add("decode speed", tps, f"tokens/s (batch 1, KV cache, greedy, "
               f"{args.decode_tokens} tokens)", ".1f")
    if args.reference:
        ref, ref_tok, ref_meta, ref_folder = _load_model_arg(args.reference, "--reference")
        if ref_meta["model"]["type"] != "gpt" or ref_tok.to_dict() != tok.to_dict():
            raise UsageError(f"--reference: {args.reference} is not a GPT with this "
                             f"checkpoint's tokenizer; the windows must be the same tokens")
        c = compare_gpt(model, ref, ids, windows, args.seed)
        ev.add("loss - reference", c["delta"], f"nats/token, paired on the same windows "
               f"(standard error {c['delta_se']:.5f})", "+.5f")
        ev.add("greedy agreement", 100 * c["greedy_agreement"], f"% of {c['greedy_tokens']} "
               f"tokens (teacher-forced on the reference's greedy text)", ".1f")
        ev.add("identical greedy prefix", c["greedy_prefix"], "tokens", ".0f")
        ev.add("size / reference", stored_bytes(folder) / max(1, stored_bytes(ref_folder)),
               "x", ".3f")
    print(f"{head} on {where}, {len(ids):,} tokens")
    print(ev.table())
    return 0


def cmd_compress(args) -> int:
    """Quantise a GPT checkpoint's weights into a new checkpoint; print the sizes."""
    import os

    from .compress import METHODS, save_compressed, stored_nbytes
    from .train.checkpoint import CheckpointError
    if args.method != "prune" and args.method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, prune; got "
                         f"{args.method!r}")
    if args.method == "prune":
        _check_prune_args(args)
    else:
        for flag, v in (("--sparsity", args.sparsity), ("--scheme", args.scheme),
                        ("--finetune-steps", args.finetune_steps)):
            if v is not None:
                raise UsageError(f"{flag} is for --method prune, not {args.method}")
    _writable_dir(args.out, "--out")
    if (os.path.isdir(args.out) and os.listdir(args.out)
            and not os.path.exists(os.path.join(args.out, "meta.json"))):
        raise UsageError(f"--out {args.out!r} is a non-empty folder that holds no checkpoint")
    model, extra, meta, folder = _load_model_arg(args.checkpoint)
    if meta["model"]["type"] != "gpt":
        raise UsageError("--checkpoint: compress quantises GPT checkpoints; this is an RNN")
    if "compressed" in meta:
        raise UsageError(f"--checkpoint: {folder} is already compressed "
                         f"({meta['compressed'].get('method')}); give the float checkpoint")
    if os.path.abspath(args.out) == os.path.abspath(folder):
        raise UsageError("--out must differ from the checkpoint folder")
    if args.method == "prune":
        return _compress_prune(args, model, extra, meta, folder)
    try:
        save_compressed(model, extra, args.out, args.method, args.keep_embeddings, meta)
    except CheckpointError as e:
        raise RunError(f"--out: {e}") from None
    from .train.runs import load_model
    qmodel, _, qmeta = load_model(args.out)
    before = stored_nbytes(model)
    after = qmeta["compressed"].get("nbytes", stored_nbytes(qmodel))
    if args.method in ("bf16", "fp16"):
        emb = f"every weight stored as {args.method}"
    else:
        emb = "tied embedding " + ("kept in float" if args.keep_embeddings else "quantised")
    print(f"{folder} -> {args.out}: {args.method}, {emb}")
    print(f"size {before:,} B -> {after:,} B ({after / before:.3f}x)")
    return 0


def _check_prune_args(args) -> None:
    """--method prune's settings, before anything is loaded (UsageError naming the flag)."""
    import math

    from .compress.prune import SCHEMES
    scheme = "magnitude" if args.scheme is None else args.scheme
    if scheme not in SCHEMES:
        raise UsageError(f"--scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    s = args.sparsity
    if s is None:
        raise UsageError("--method prune needs --sparsity S, a number in (0, 1)")
    if not (math.isfinite(s) and 0.0 < s < 1.0):
        raise UsageError(f"--sparsity must be in (0, 1), got {s}")
    if scheme.startswith("2:4") and s != 0.5:
        raise UsageError(f"--scheme {scheme} keeps 2 of every 4 weights: --sparsity must be "
                         f"0.5, got {s}")
    if args.finetune_steps is not None and args.finetune_steps < 0:
        raise UsageError(f"--finetune-steps must be >= 0, got {args.finetune_steps}")
    args.scheme = scheme


def _compress_prune(args, model, tok, meta, folder) -> int:
    """``tinyllm compress --method prune``: prune (and optionally fine-tune with the mask
    kept) a GPT checkpoint into a new one that eval and generate load."""
    from .compress.prune import STRUCTURED, finetune, prune, save_pruned, sparsity_report
    from .data import UnknownTokenError
    from .train.checkpoint import CheckpointError
    from .train.runs import Preset, prepare_text
    p = Preset.from_settings("gpt", meta["settings"])
    src = meta.get("text", meta.get("data"))
    src = None if not isinstance(src, str) or src == "embedded" else src
    try:
        _, train, val = prepare_text(p, src, tok)
    except (OSError, ValueError, UnknownTokenError) as e:
        raise UsageError(f"--checkpoint: the text it was trained on ({src or 'embedded'}) "
                         f"cannot be used for calibration / fine-tuning: {e}") from None
    scheme, s = args.scheme, float(args.sparsity)
    try:
        pruned, masks = prune(model, s, scheme, calib=train)
    except ValueError as e:
        raise UsageError(f"--sparsity/--scheme: {e}") from None
    steps = args.finetune_steps or 0
    if steps:
        print(f"fine-tuning {steps} steps (batch {p.data.batch_size}"
              + (", masked" if scheme not in STRUCTURED else "") + ") ...")
        finetune(pruned, None if scheme in STRUCTURED else masks, train, steps, val_ids=val,
                 batch_size=p.data.batch_size)
    before, after = model.num_parameters(), pruned.num_parameters()
    info = {"scheme": scheme, "sparsity": s, "finetune_steps": steps,
            "parameters": after, "source_parameters": before}
    if scheme in STRUCTURED:
        c = pruned.config
        info.update(mlp_hidden=c.mlp_hidden, layer_heads=c.layer_heads)
        what = (f"MLP hidden units per layer {c.mlp_hidden}" if scheme == "neurons"
                else f"heads per layer {c.layer_heads}")
        line = f"{what}; parameters {before:,} -> {after:,} ({after / before:.3f}x)"
    else:
        rep = sparsity_report(pruned)
        info["measured_sparsity"] = rep["overall"]
        per = [v for k, v in rep.items() if k != "overall"]
        line = (f"zeros in the prunable weights {rep['overall']:.4f} (per matrix "
                f"{min(per):.3f}..{max(per):.3f}); stored dense, {after:,} parameters")
    try:
        save_pruned(pruned, tok, args.out, info, meta)
    except CheckpointError as e:
        raise RunError(f"--out: {e}") from None
    print(f"{folder} -> {args.out}: prune {scheme} at {s}"
          + (f", fine-tuned {steps} steps" if steps else ""))
    print(line)
    return 0


def cmd_bench(args) -> int:
    from .bench import BenchUsageError, run
    if args.profile:
        return _bench_profile(args)
    try:
        run(quick=args.quick, only=args.only, json_path=args.json, plot_path=args.plot,
            threads=args.threads, repeats=args.repeats, torch=not args.no_torch,
            torch_inprocess=args.torch_inprocess)
    except BenchUsageError as e:
        raise UsageError(str(e)) from None
    return 0


def _bench_profile(args) -> int:
    """``tinyllm bench --profile``: the per-op breakdown of one training step
    (tinyllm.bench.profile), each engine in its own process."""
    from .bench import BenchUsageError, check_output, machine, profile, specs
    if args.only or args.plot or args.repeats or args.torch_inprocess:
        raise UsageError("--profile takes only --quick, --json, --threads and --no-torch")
    try:
        if args.json is not None:
            check_output(args.json, "--json", ".json")
    except BenchUsageError as e:
        raise UsageError(str(e)) from None
    threads = args.threads or min(machine.cores(), machine.max_threads())
    warm, steps = profile.STEPS[bool(args.quick)]
    entries = profile.run(specs.model_specs(args.quick), threads=threads,
                          torch=not args.no_torch and machine.torch_installed(),
                          warm_steps=warm, steps=steps,
                          log=lambda m: print(m, file=sys.stderr))
    print(profile.table(entries))
    if args.json is not None:
        import json
        with open(args.json, "w") as f:
            json.dump({"profile": entries, "threads": threads}, f, indent=1)
    return 0


def _all_op_names() -> list:
    from .autograd.opinfo import OPS
    return [op.name for op in OPS]


def cmd_finetune(args) -> int:
    from .finetune import lab
    from .finetune.run import FinetuneError
    runtime.configure(keep_freed_memory=True)
    try:
        ft, pt, data = lab.split_settings(args.settings)
        if args.quick:
            q = dict(lab.QUICK)
            for k in ("n_train", "n_valid"):
                data.setdefault(k, q.pop(k))
            pt.setdefault("steps", q.pop("pretrain_steps"))
            pt.setdefault("eval_every", q.pop("pretrain_eval_every"))
            ft.setdefault("epochs", q.pop("epochs"))
        if args.strategy:
            ft["strategy"] = args.strategy
        if args.epochs is not None:
            ft["epochs"] = args.epochs
        fc, pc = lab.make_configs(ft, pt)
        _writable_dir(args.out, "--out")
        if args.pretrain_only:
            _, _, s = lab.encoder(pc, args.pretrained, progress=True)
            return 0
        if args.compare:
            if args.strategy:
                raise FinetuneError("--compare runs every strategy; --strategy is for one run")
            lab.compare(args.compare, ft, pc, args.train, args.valid, args.out, data,
                        args.pretrained)
            print(f"table: {args.out}/compare.md, compare.json, compare.png")
            return 0
        r = lab.run_one(fc, pc, args.train, args.valid, args.out, data, args.pretrained)
    except FinetuneError as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        print("tinyllm: interrupted (the pretrained encoder's checkpoint is kept; a new run "
              "resumes its pretraining)", file=sys.stderr)
        return 130
    print(f"{r['strategy']}: EM {r['em']:.1f}, F1 {r['f1']:.1f}; {r['trainable']:,} trainable "
          f"parameters ({100 * r['trainable_share']:.1f}%), {r['steps']} steps in "
          f"{r['train_seconds']:.0f} s; MLM loss {r['mlm_loss_before']:.3f} -> "
          f"{r['mlm_loss_after']:.3f}")
    print(f"written: {args.out}/result.json, metrics.jsonl, curves.png")
    return 0


def cmd_attention(args) -> int:
    """``tinyllm attention``: a trained run's attention maps for one prompt, as a PNG. GPT:
    every layer x head (``--layer``: one layer's heads; with ``--head``: that one head, with
    a colour bar); an RNN: its alpha over the prompt and its own greedy answer, cropped to the
    answer rows and the source columns, the separator marked."""
    from .bench import BenchUsageError, check_output
    from .data import UnknownTokenError
    from .viz import (best_previous_token_head, gpt_attention, plot_attention, plot_heads,
                      rnn_attention)
    try:
        check_output(args.out, "--out", ".png")
    except BenchUsageError as e:
        raise UsageError(str(e)) from None
    prompt = _read_prompt(args.prompt)
    if not prompt.strip():
        raise UsageError("--prompt is empty; give the text whose attention to draw")
    for flag, v in (("--layer", args.layer), ("--head", args.head)):
        if v is not None and v < 0:
            raise UsageError(f"{flag} must be >= 0, got {v}")
    if args.head is not None and args.layer is None:
        raise UsageError("--head needs --layer (which layer's head)")
    model, extra, meta, folder = _load_model_arg(args.checkpoint)
    if meta["model"]["type"] == "rnn":
        if args.layer is not None:
            raise UsageError("--layer and --head are for GPT checkpoints; the RNN has one "
                             "attention (alpha)")
        fig, line = _rnn_attention_figure(model, extra, prompt, rnn_attention, plot_attention)
    else:
        tok, cfg = extra, model.config
        if args.layer is not None and args.layer >= cfg.n_layer:
            raise UsageError(f"--layer {args.layer} is out of range: the model has "
                             f"{cfg.n_layer} layers (0..{cfg.n_layer - 1})")
        n_heads = cfg.heads_of(args.layer) if args.layer is not None else cfg.n_head
        if args.head is not None and args.head >= n_heads:
            raise UsageError(f"--head {args.head} is out of range: layer {args.layer} has "
                             f"{n_heads} heads (0..{n_heads - 1})")
        try:
            ids = tok.encode(prompt)
        except UnknownTokenError as e:
            raise UsageError(f"--prompt: {e}") from None
        if len(ids) > cfg.block_size:
            raise UsageError(f"--prompt is {len(ids)} tokens; the model's window is "
                             f"{cfg.block_size} (block_size)")
        maps = gpt_attention(model, np.array([ids]))
        labels = [tok.decode([i]) for i in ids]
        if args.head is not None:
            w = maps[args.layer][0, args.head]
            fig = plot_attention(w, x_labels=labels, y_labels=labels,
                                 title=f"layer {args.layer} head {args.head}")
        else:
            fig = plot_heads(maps, labels, layer=args.layer)
        what = (f"layer {args.layer} head {args.head}" if args.head is not None else
                f"layer {args.layer}'s heads" if args.layer is not None else
                f"{cfg.n_layer} layers x {cfg.n_head} heads" if cfg.layer_heads is None else
                f"{cfg.n_layer} layers of {cfg.layer_heads} heads")
        line = f"attention of {what} over {len(ids)} tokens"
        if len(ids) >= 2:
            layer, head, score = best_previous_token_head(maps)
            line += (f"; the most previous-token head: layer {layer} head {head} "
                     f"(mean weight {score:.2f} on t-1)")
    try:
        fig.savefig(args.out, dpi=110)
    except OSError as e:
        raise RunError(f"--out {args.out}: {e.strerror or e}") from None
    print(f"{line} -> {args.out} (checkpoint {folder})")
    return 0


def _rnn_attention_figure(model, task, prompt, rnn_attention, plot_attention):
    """The RNN's alpha over ``<bos> symbols <sep>`` and its greedy answer: rows = the steps
    that produce the answer, columns = the source symbols, the separator marked."""
    from .infer import generate
    names = task.token_names[4:]
    try:
        symbols = [names.index(t) for t in prompt.replace(",", " ").split()]
        if not task.min_len <= len(symbols) <= task.max_len:
            raise ValueError(f"got {len(symbols)}")
    except ValueError:
        raise UsageError(f"--prompt for a {task.kind} model is {task.min_len} to "
                         f"{task.max_len} of the symbols {' '.join(names)} separated by "
                         f"spaces, got {prompt!r}") from None
    L = len(symbols)
    stream = generate(model, np.array([task.prompt(symbols)]), L + 1, temperature=0.0)[0]
    inputs = stream[:-1]                                      # 2L + 2 inputs; row t -> t + 1
    alpha = rnn_attention(model, inputs)[0]
    labels = task.token_names
    x_labels = [labels[int(i)] for i in inputs]
    y_labels = [f"{labels[int(a)]}->{labels[int(b)]}" for a, b in zip(inputs, stream[1:])]
    rows = task.answer_slice(L)                              # steps whose targets are the answer
    fig = plot_attention(alpha, x_labels=x_labels, y_labels=y_labels, rows=rows,
                         cols=(1, L + 1), separator=L + 1,
                         title=f"alpha_(t,i) (eq. 4.2a), {task.kind}")
    answer = task.decode(stream[L + 2:].tolist())
    return fig, f"alpha of the {task.kind} RNN over {L} symbols (its answer: {answer})"


def _parser():
    from . import __version__
    p = _Parser(prog="tinyllm", description="tinyllm: LLM math you can read, check and time.")
    p.add_argument("--version", action="version", version=f"tinyllm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    d = sub.add_parser("demo", help="the main job: RNN with/without attention, then a GPT")
    d.add_argument("--out", default="tinyllm-demo", help="folder for figures and checkpoints "
                   "(default tinyllm-demo)")
    d.add_argument("--quick", action="store_true", help="a smoke run (~10 s): every phase with a few steps, to check that everything runs and writes its figures; the models do not learn much")
    d.set_defaults(run=cmd_demo)
    tr = sub.add_parser("train", help="train a GPT on text or the RNN on a task",
                        epilog="Any setting of the preset can be overridden as --key=value, "
                               "e.g. --max_steps=500 --lr=1e-3 --n_layer=2.")
    tr.add_argument("--model", choices=("gpt", "rnn"), required=True,
                    help="what to train: gpt (a GPT on text) or rnn (the document's attention "
                    "RNN on a synthetic task)")
    tr.add_argument("--data", help="a UTF-8 text file (GPT; default: the embedded corpus)")
    tr.add_argument("--config", help="preset: small|medium|tiny (gpt), "
                    "reversal|reversal-long|copy (rnn) (default: small for gpt, reversal for "
                    "rnn)")
    tr.add_argument("--out", default="runs/latest", help="run folder, created with its parents "
                    "(default runs/latest); one that holds a run needs --resume or --overwrite")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out with its "
                    "own settings; --key=value changes a resumable one (default off)")
    tr.add_argument("--overwrite", action="store_true", help="delete the run in --out "
                    "(checkpoints, metrics.jsonl, loss.png; nothing else) and start over "
                    "(default off)")
    tr.add_argument("--distributed", action="store_true", help="data-parallel over MPI: run "
                    "as `mpiexec -n N tinyllm train ... --distributed`; batch_size is the "
                    "global batch, each rank takes batch_size/N rows; needs "
                    "pip install -e \".[mpi]\" (default off)")
    tr.add_argument("--device", choices=("cpu", "cuda"), help="where to train: cpu, or cuda "
                    "(a GPU with CuPy: pip install -e \".[gpu]\"); the same as --device=... "
                    "(default cpu)")
    tr.set_defaults(run=cmd_train)
    ds = sub.add_parser("distill", help="train a smaller student GPT from a teacher GPT "
                        "(knowledge distillation)",
                        epilog="Settings as --key=value: the student's model and training "
                        "settings (those of tinyllm train: n_layer, n_head, n_embd, max_steps, "
                        "lr, ...; default: the teacher's settings with half its layers and "
                        "half its width), and temperature (T > 0, default 1), alpha (the soft "
                        "term's weight in [0, 1], default 0.5), kind (forward = "
                        "KL(teacher || student), or reverse; default forward).")
    ds.add_argument("--teacher", required=True, metavar="DIR", help="the teacher: a GPT run "
                    "folder (its 'last' checkpoint) or a checkpoint folder")
    ds.add_argument("--out", required=True, metavar="DIR", help="the student's run folder, "
                    "as tinyllm train writes it; one that holds a run needs --resume or "
                    "--overwrite")
    ds.add_argument("--data", metavar="FILE", help="a UTF-8 text file (default: the text the "
                    "teacher trained on)")
    ds.add_argument("--resume", action="store_true", help="continue the run in --out "
                    "(default off)")
    ds.add_argument("--overwrite", action="store_true", help="delete the run in --out and "
                    "start over (default off)")
    ds.set_defaults(run=cmd_distill)
    ge = sub.add_parser("generate", help="continue a prompt from a checkpoint (sampled and "
                        "streamed, several samples, or beam search)")
    ge.add_argument("--checkpoint", required=True, help="a run folder (its 'last' checkpoint) "
                    "or a checkpoint folder")
    ge.add_argument("--prompt", required=True, help="the text to continue, or @FILE to read it "
                    "from a file (@@ for a literal leading @); for an RNN checkpoint, task "
                    "symbols separated by spaces")
    ge.add_argument("--max-new-tokens", type=int, default=200, metavar="N",
                    help="tokens to generate per sample (GPT)")
    ge.add_argument("--num-samples", type=int, default=1, metavar="N",
                    help="independent samples, one after another from the same seed")
    ge.add_argument("--temperature", type=float, default=0.8,
                    help="softmax temperature; 0 = greedy")
    ge.add_argument("--top-k", type=int, default=None, metavar="K",
                    help="sample only from the K most likely tokens (default: all)")
    ge.add_argument("--top-p", type=float, default=None, metavar="P",
                    help="sample only from the most likely tokens whose probability reaches P "
                    "(default: all)")
    ge.add_argument("--beam", type=int, default=None, metavar="W",
                    help="beam search with W beams instead of sampling: the most likely "
                    "continuation found, printed at the end (default: sample)")
    ge.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    ge.add_argument("--draft", metavar="DIR", default=None,
                    help="speculative decoding: this smaller GPT checkpoint (same tokenizer) "
                    "proposes --k tokens a round and --checkpoint verifies them in one "
                    "forward; prints the text, the acceptance rate, tokens per target call "
                    "and the speed-up against plain decoding of the same prompt and length, "
                    "both timed in this invocation (default: plain decoding)")
    ge.add_argument("--k", type=int, default=None, metavar="K",
                    help="draft tokens per speculative round (default 4; with --draft or "
                    "--prompt-lookup)")
    ge.add_argument("--prompt-lookup", type=int, nargs="?", const=3, default=None,
                    metavar="N", help="speculative decoding with a nearly free draft: the "
                    "tokens that followed the last earlier occurrence of the final N-gram "
                    "(N 3 when not given); the same report as --draft, which it excludes "
                    "(default: off)")
    ge.set_defaults(run=cmd_generate)
    ev = sub.add_parser("eval", help="score a checkpoint: loss, perplexity, bits per char "
                        "(GPT) or held-out exact match (RNN)")
    ev.add_argument("--checkpoint", required=True, help="a run folder (its 'last' checkpoint) "
                    "or a checkpoint folder")
    ev.add_argument("--data", metavar="FILE", help="score on all of this UTF-8 text (GPT; "
                    "default: the validation split of the text the run trained on)")
    ev.add_argument("--windows", type=int, default=None, metavar="N", help="the number of "
                    "seeded windows of block_size tokens scored (GPT; default: 64, "
                    "tinyllm.train.evaluate.EVAL_WINDOWS)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the window positions")
    ev.add_argument("--reference", metavar="DIR", help="another GPT checkpoint with the same "
                    "tokenizer (e.g. the fp32 model a compressed one came from): the loss "
                    "difference paired on the same windows, greedy agreement, size ratio (default: "
                    "none)")
    ev.add_argument("--decode-tokens", type=int, default=64, metavar="N", help="tokens "
                    "decoded (greedy, batch 1, KV cache) to time the decode speed; 0 = skip "
                    "(GPT; default 64)")
    ev.set_defaults(run=cmd_eval)
    co = sub.add_parser("compress", help="quantise (int8/int4), round (bf16/fp16) or prune "
                        "a GPT checkpoint's weights "
                        "into a new checkpoint that generate and eval run")
    co.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint folder "
                    "(float)")
    co.add_argument("--method", required=True, metavar="M", help="int8 (per output channel), "
                    "int8-tensor, int8-g32, int4 (per channel), int4-tensor, int4-g32 "
                    "(groups of 32 input rows), bf16 / fp16 (every weight stored in 16 "
                    "bits, round to nearest even), or prune (see --sparsity, --scheme)")
    co.add_argument("--keep-embeddings", action=argparse.BooleanOptionalAction, default=True,
                    help="keep the tied token embedding / output head in float (default; "
                    "--no-keep-embeddings quantises it too)")
    co.add_argument("--out", required=True, metavar="DIR", help="the checkpoint folder to "
                    "write")
    co.add_argument("--sparsity", type=float, default=None, metavar="S", help="--method "
                    "prune: the share of the blocks' Linear weights zeroed, in (0, 1) "
                    "(neurons/heads: the share of each block's units removed; 2:4: 0.5)")
    co.add_argument("--scheme", default=None, metavar="NAME", help="--method prune: "
                    "magnitude (one global threshold; default), magnitude-layer, wanda, 2:4, "
                    "2:4-wanda, neurons or heads (structured: smaller matrices)")
    co.add_argument("--finetune-steps", type=int, default=None, metavar="N", help="--method "
                    "prune: then fine-tune N steps on the checkpoint's training text, "
                    "keeping the mask exactly (default 0)")
    co.set_defaults(run=cmd_compress)
    ops_list = ", ".join(_all_op_names())
    op_help = f"only this op (repeatable; default: every op), one of: {ops_list}"
    fi = sub.add_parser("finetune", help="the document's section 5: fine-tune a pretrained "
                        "encoder for QA (strategies, LoRA, comparison)",
                        epilog="Settings as --key=value: any fine-tuning setting (lr, "
                        "batch_size, weight_decay, l2, dropout, patience, augment, last_k, "
                        "lora_r, lora_alpha, lora_targets, joint_weight, ...), pretraining "
                        "ones prefixed pretrain_ (pretrain_steps=...), n_train / n_valid for "
                        "the generated stories.")
    fi.add_argument("--task", choices=("qa",), default="qa", help="the task (default qa: "
                    "extractive question answering, SQuAD v1.1 format)")
    fi.add_argument("--strategy", choices=("full", "frozen", "last-k", "lora", "scratch",
                                           "joint"),
                    help="what trains (default full)")
    fi.add_argument("--train", help="a SQuAD v1.1 JSON file (default: generated stories)")
    fi.add_argument("--valid", help="a SQuAD v1.1 JSON file, with --train")
    fi.add_argument("--epochs", type=int, help="passes over the training set (default 4)")
    fi.add_argument("--out", default="runs/finetune", help="output folder (default "
                    "runs/finetune)")
    fi.add_argument("--compare", nargs="?", const="strategies",
                    choices=("strategies", "regularisation"),
                    help="run every strategy (or every regulariser) and write a table")
    fi.add_argument("--quick", action="store_true", help="a small, fast version (~1-2 min): "
                    "fewer stories, a short pretraining, one epoch")
    fi.add_argument("--pretrained", help="the pretrained encoder's folder (default: the "
                    "cache, $TINYLLM_CACHE or ~/.cache/tinyllm; pretrained there if missing)")
    fi.add_argument("--pretrain-only", action="store_true", help="only pretrain (or load) "
                    "the encoder")
    fi.set_defaults(run=cmd_finetune)
    at = sub.add_parser("attention", help="draw a trained run's attention maps for a "
                        "prompt as a PNG (every GPT layer x head, or the RNN's alpha)")
    at.add_argument("--checkpoint", required=True, help="a run folder (its 'last' checkpoint) "
                    "or a checkpoint folder")
    at.add_argument("--prompt", required=True, help="the text (GPT; @FILE reads a file) or "
                    "the task symbols separated by spaces (RNN)")
    at.add_argument("--out", required=True, metavar="FILE.png", help="the PNG to write")
    at.add_argument("--layer", type=int, default=None, help="draw this layer's heads only "
                    "(GPT; default: every layer)")
    at.add_argument("--head", type=int, default=None, help="with --layer: this head alone, "
                    "with a colour bar (GPT; default: every head)")
    at.set_defaults(run=cmd_attention)
    g = sub.add_parser("gradcheck", help="gradcheck every registered op (float64)")
    g.add_argument("--op", action="append", metavar="OP", help=op_help)
    g.add_argument("--samples", type=int, default=3, help="random samples per op")
    g.add_argument("--seed", type=int, default=0, help="seed of the samples and directions")
    g.add_argument("--eps", type=float, default=1e-6, help="central-difference step")
    g.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance")
    g.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance")
    g.add_argument("--fast", action="store_true", help="check one random direction per input "
                   "(default: every element)")
    g.set_defaults(run=cmd_gradcheck)
    e = sub.add_parser("eps-sweep", help="finite-difference error against eps for one op")
    e.add_argument("--op", action="append", required=True, metavar="OP",
                   help=f"the op, one of: {ops_list}")
    e.add_argument("--seed", type=int, default=0, help="seed of the sample and direction")
    e.add_argument("--plot", metavar="FILE", help="write a log-log PNG here (default: none)")
    e.set_defaults(run=cmd_eps_sweep)
    t = sub.add_parser("taylor", help="Taylor-remainder slope per op (2 = right gradient)")
    t.add_argument("--op", action="append", metavar="OP", help=op_help)
    t.add_argument("--seed", type=int, default=0, help="seed of the samples and directions")
    t.set_defaults(run=cmd_taylor)
    b = sub.add_parser("bench", help="time the kernels and the GPT against the machine's "
                       "ceilings and PyTorch")
    b.add_argument("--quick", action="store_true", help="two small sizes per kernel, short "
                   "end-to-end runs (under 2 minutes)")
    b.add_argument("--only", action="append", metavar="NAME", help="only this kernel family "
                   "or 'e2e' (repeatable, or comma-separated; default: everything)")
    b.add_argument("--json", metavar="FILE", help="write the results as JSON here "
                   "(default: none)")
    b.add_argument("--plot", metavar="FILE", help="write time-against-size plots to this "
                   ".png, and the roofline to FILE_roofline.png (default: none)")
    b.add_argument("--threads", type=int, metavar="N", help="threads for BLAS, Numba and "
                   "torch (default: every core)")
    b.add_argument("--repeats", type=int, metavar="N", help="exactly this many timed "
                   "repeats per figure (default: as many as a time budget allows)")
    b.add_argument("--no-torch", action="store_true", help="skip the torch comparison")
    b.add_argument("--torch-inprocess", action="store_true", help="also time torch's "
                   "kernels in this process, beside Numba")
    b.add_argument("--profile", action="store_true", help="instead: one GPT training step "
                   "of configs A and B op by op (every graph node, forward and backward, the "
                   "optimiser, the overhead between them) beside torch.profiler's breakdown "
                   "of the same step; --json writes it, --quick profiles fewer steps")
    b.set_defaults(run=cmd_bench)
    return p


def _validate(args) -> None:
    if args.command == "generate":
        if args.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        if not (math.isfinite(args.temperature) and args.temperature >= 0):
            raise UsageError(f"--temperature must be a finite number >= 0, got "
                             f"{args.temperature}")
        if args.top_k is not None and args.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
        if args.top_p is not None and not 0 < args.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if getattr(args, "seed", 0) < 0:
        raise UsageError(f"--seed must not be negative, got {args.seed}")
    if getattr(args, "samples", 1) < 1:
        raise UsageError("--samples must be at least 1")
    eps = getattr(args, "eps", 1.0)
    if not (math.isfinite(eps) and eps > 0):
        raise UsageError(f"--eps must be a positive finite number, got {eps}")
    for name in ("atol", "rtol"):
        v = getattr(args, name, 0.0)
        if not (math.isfinite(v) and v >= 0):
            raise UsageError(f"--{name} must be a finite number >= 0, got {v}")
    plot = getattr(args, "plot", None)
    if plot is not None and not plot.lower().endswith(".png"):
        raise UsageError(f"--plot must name a .png file, got {plot!r}")
    if plot is not None and args.command == "eps-sweep":   # refused before the sweep runs
        from .bench import BenchUsageError, check_output
        try:
            check_output(plot, "--plot", ".png")
        except BenchUsageError as e:
            raise UsageError(str(e)) from None
    if args.command == "generate":
        if args.num_samples < 1:
            raise UsageError(f"--num-samples must be at least 1, got {args.num_samples}")
        if args.beam is not None:
            if args.beam < 1:
                raise UsageError(f"--beam must be at least 1, got {args.beam}")
            if args.top_k is not None or args.top_p is not None:
                raise UsageError("--beam searches for the most likely continuation; --top-k "
                                 "and --top-p are for sampling")
            if args.num_samples > 1:
                raise UsageError("--beam is deterministic: --num-samples > 1 would print the "
                                 "same text again")
        spec = args.draft is not None or args.prompt_lookup is not None
        if args.draft is not None and args.prompt_lookup is not None:
            raise UsageError("--draft and --prompt-lookup are two drafts; give one of them")
        if args.k is not None and not spec:
            raise UsageError("--k is the speculative draft length; it needs --draft or "
                             "--prompt-lookup")
        if args.k is not None and args.k < 1:
            raise UsageError(f"--k must be at least 1, got {args.k}")
        if args.prompt_lookup is not None and args.prompt_lookup < 1:
            raise UsageError(f"--prompt-lookup N must be at least 1, got {args.prompt_lookup}")
        if spec and (args.beam is not None or args.num_samples > 1):
            raise UsageError("speculative decoding (--draft, --prompt-lookup) decodes one "
                             "sample; --beam and --num-samples > 1 are for plain decoding")
    if args.command == "eval" and args.windows is not None and args.windows < 1:
        raise UsageError(f"--windows must be at least 1, got {args.windows}")
    if args.command == "eval" and args.decode_tokens < 0:
        raise UsageError(f"--decode-tokens must be >= 0, got {args.decode_tokens}")
    if args.command == "train" and getattr(args, "resume", False):
        checkpoint_arg(args.out, "--resume: --out")     # a run to resume, before anything runs


def _kernels_setting() -> None:
    """TINYLLM_KERNELS must name an implementation that runs here (cuda: a GPU)."""
    from . import kernels
    try:
        impl = kernels.default_impl()
    except ValueError as e:
        raise UsageError(str(e)) from None
    if impl == "cuda" and kernels.cuda_unavailable():
        raise UsageError(f"TINYLLM_KERNELS=cuda: {kernels.cuda_unavailable()}")


def main(argv=None) -> int:
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            raise UsageError("a command is needed: demo, train, distill, generate, eval, "
                             "attention, finetune, compress, bench, gradcheck, eps-sweep or "
                             "taylor (see --help)")
        if extra and args.command not in ("train", "finetune", "distill"):
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
        if args.command in ("train", "finetune", "distill"):
            bad = [e for e in extra if not (e.startswith("--") and "=" in e)]
            if bad:
                raise UsageError(f"unrecognized argument {bad[0]!r} (settings are "
                                 f"--key=value)")
            args.settings = extra
        if args.command == "eps-sweep" and len(args.op) != 1:
            raise UsageError("eps-sweep takes exactly one --op")
        _validate(args)
        _kernels_setting()
        runtime.configure()          # Numba's threading layer, before the first kernel runs
        return args.run(args)
    except UsageError as e:
        print(f"tinyllm: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"tinyllm: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:               # e.g. `tinyllm gradcheck | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("tinyllm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (one line, never a traceback)
        print(f"tinyllm: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
