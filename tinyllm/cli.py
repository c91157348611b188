"""The ``tinyllm`` command line (also ``python -m tinyllm``).

Commands:
  demo        the main job: the document's attention RNN (with and without attention) on
              sequence reversal, then a small GPT on the embedded corpus, with figures
  train       train a GPT on text or the attention RNN on a synthetic task, with checkpoints
  generate    continue a prompt from a GPT checkpoint (or answer a task prompt with an RNN one)
  bench       time the kernels and the GPT end to end against NumPy, PyTorch and the machine
  gradcheck   gradcheck every registered op in float64 on random shapes; exit 1 on a failure
  eps-sweep   error of the central difference against eps, float32 and float64, for one op
  taylor      the Taylor-remainder slope for one op (about 2 = right, about 1 = wrong)

Bad input prints one line and exits 2; a runtime failure prints one line and exits 1.
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


class _Parser(argparse.ArgumentParser):
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
    print(f"{'op':<14}{'shapes':<{w + 2}}{'fwd err':>10}{'max abs err':>13}"
          f"{'max rel err':>13}  result")
    for name, shapes, fwd, abs_err, rel_err, res in rows:
        fwd_s = "-" if np.isnan(fwd) else f"{fwd:.1e}"
        print(f"{name:<14}{shapes:<{w + 2}}{fwd_s:>10}{abs_err:>13.2e}{rel_err:>13.2e}  {res}")
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
            raise RuntimeError(f"cannot write the plot to {args.plot}: {e.strerror}") from None
        print(f"plot written to {args.plot}")
    return 0


def cmd_taylor(args) -> int:
    from .autograd.lab import taylor_test
    ok = True
    for op in _op_names(args):
        s = op.sample(_rng(args.seed, op.name))
        with _quiet_probes():
            res = taylor_test(s.fn, s.inputs, seed=args.seed, full=True)
        good = res.slope > 1.8
        ok &= good
        print(f"{op.name:<14} slope {res.slope:6.3f}  {'ok' if good else 'WRONG GRADIENT?'}")
    return 0 if ok else 1


def cmd_demo(args) -> int:
    from .train.demo import demo
    _writable_dir(args.out, "--out")
    runtime.configure(keep_freed_memory=True)
    demo(args.out, quick=args.quick)    # --quick: a smoke run with few steps per phase
    return 0


def _writable_dir(path, flag):
    import os
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(path))
    probe = path if os.path.isdir(path) else parent
    if not os.path.isdir(probe):
        raise UsageError(f"{flag} {path!r}: the folder {parent!r} does not exist")
    if not os.access(probe, os.W_OK):
        raise UsageError(f"{flag} {path!r} is not writable")


def cmd_train(args) -> int:
    import os

    from .data import load_corpus
    from .train.checkpoint import CheckpointError, load_checkpoint
    from .train.runs import SettingsError, gpt_trainer, make_preset, resume_preset
    from .train.runs import rnn_trainer, unigram_baseline
    _writable_dir(args.out, "--out")
    runtime.configure(keep_freed_memory=True)
    if args.model == "rnn" and args.data:
        raise UsageError("--data is for --model gpt; the RNN trains on a synthetic task "
                         "(choose it with --config reversal|reversal-long|copy)")
    preset = args.config or ("small" if args.model == "gpt" else "reversal")
    try:
        p = make_preset(args.model, preset, args.settings)
    except SettingsError as e:
        raise UsageError(str(e)) from None
    if args.data:
        try:
            load_corpus(args.data)
        except (OSError, ValueError) as e:
            raise UsageError(str(e)) from None
    if args.resume:
        try:
            _, _, meta = load_checkpoint(args.out)
        except CheckpointError as e:
            raise RuntimeError(f"--resume: {e}") from None
        if meta.get("model", {}).get("type") != args.model:
            raise UsageError(f"--resume: {args.out} holds a {meta.get('model', {}).get('type')}"
                             f" run, not --model {args.model}")
        explicit = {kv.split("=", 1)[0].lstrip("-").replace("-", "_") for kv in args.settings}
        try:        # which settings a resume may change: the fields declared resumable
            p = resume_preset(p, meta.get("settings", {}), explicit, strict=bool(args.config))
        except SettingsError as e:
            raise UsageError(f"--resume: {e}") from None
    s = p.settings()
    if args.model == "gpt":
        try:
            trainer, tok, train, val = gpt_trainer(p, args.data, args.out, resume=args.resume)
        except SettingsError as e:
            raise UsageError(str(e)) from None
        print(f"GPT {s['n_layer']}L/{s['n_head']}H/{s['n_embd']} block {s['block_size']}, "
              f"{trainer.model.num_parameters():,} parameters, vocab {tok.vocab_size}; "
              f"unigram baseline {unigram_baseline(train, val, tok.vocab_size):.3f} nats/token")
    else:
        trainer, task, held = rnn_trainer(p, args.out, resume=args.resume)
        print(f"AttentionRNN ({'additive' if s['attention'] else 'no'} attention) on "
              f"{s['task']} lengths {s['min_len']}-{s['max_len']}, "
              f"{trainer.model.num_parameters():,} parameters")
    if args.resume:
        print(f"resuming from step {trainer.step} of {trainer.cfg.max_steps}")
    r = trainer.fit()
    last_val = f"{r.val_losses[-1][1]:.4f}" if r.val_losses else "-"
    print(f"stopped ({r.stopped}) at step {r.steps}: val loss {last_val}, best "
          f"{r.best_val:.4f} at step {r.best_step}; {r.seconds:.1f} s, "
          f"{r.tokens / max(r.seconds, 1e-9):,.0f} tokens/s")
    if args.model == "rnn":
        from .train.seq_tasks import evaluate_exact_match
        print(f"held-out exact match {evaluate_exact_match(trainer.model, held) * 100:.1f}%")
    print(f"checkpoints: {os.path.join(args.out, 'last')} and 'best'; metrics.jsonl, loss.png")
    return 0


def cmd_generate(args) -> int:
    from .data import UnknownTokenError
    from .infer import generate
    from .train.checkpoint import CheckpointError
    from .train.runs import load_model
    import os
    if not os.path.exists(args.checkpoint):
        raise UsageError(f"--checkpoint {args.checkpoint!r} does not exist")
    try:
        model, extra, meta = load_model(args.checkpoint)
    except CheckpointError as e:
        raise RuntimeError(str(e)) from None
    seed = args.seed
    if meta["model"]["type"] == "gpt":
        try:
            ids = extra.encode(args.prompt)
        except UnknownTokenError as e:
            raise UsageError(f"--prompt: {e}") from None
        if not ids:
            raise UsageError("--prompt is empty; give at least one character")
        out = generate(model, np.array([ids]), args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       seed=seed)
        print(extra.decode(out[0].tolist()))
        return 0
    task = extra                          # an RNN checkpoint: the prompt is task symbols
    names = task.token_names[4:]          # "a", "b", ... after the four special tokens
    try:
        symbols = [names.index(t) for t in args.prompt.replace(",", " ").split()]
        if not task.min_len <= len(symbols) <= task.max_len:
            raise ValueError(f"got {len(symbols)}")
        prompt = task.prompt(symbols)
    except ValueError:
        raise UsageError(f"--prompt for a {task.kind} model is {task.min_len} to "
                         f"{task.max_len} of the symbols {' '.join(names)} separated by "
                         f"spaces, got {args.prompt!r}") from None
    out = generate(model, np.array([prompt]), len(symbols) + 1, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=seed)
    print(task.decode(out[0].tolist()))
    return 0


def cmd_bench(args) -> int:
    from .bench import BenchUsageError, run
    try:
        run(quick=args.quick, only=args.only, json_path=args.json, plot_path=args.plot,
            threads=args.threads, repeats=args.repeats, torch=not args.no_torch,
            torch_inprocess=args.torch_inprocess)
    except BenchUsageError as e:
        raise UsageError(str(e)) from None
    return 0


def _parser():
    p = _Parser(prog="tinyllm", description="tinyllm: LLM math you can read, check and time.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    d = sub.add_parser("demo", help="the main job: RNN with/without attention, then a GPT")
    d.add_argument("--out", default="tinyllm-demo", help="folder for figures and checkpoints "
                   "(default tinyllm-demo)")
    d.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    d.set_defaults(run=cmd_demo)
    tr = sub.add_parser("train", help="train a GPT on text or the RNN on a task",
                        epilog="Any setting of the preset can be overridden as --key=value, "
                               "e.g. --max_steps=500 --lr=1e-3 --n_layer=2.")
    tr.add_argument("--model", choices=("gpt", "rnn"), required=True)
    tr.add_argument("--data", help="a UTF-8 text file (GPT; default: the embedded corpus)")
    tr.add_argument("--config", help="preset: small|medium|tiny (gpt), "
                    "reversal|reversal-long|copy (rnn)")
    tr.add_argument("--out", default="runs/latest", help="run folder (default runs/latest)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out")
    tr.set_defaults(run=cmd_train)
    ge = sub.add_parser("generate", help="continue a prompt from a checkpoint")
    ge.add_argument("--checkpoint", required=True, help="a run folder or checkpoint folder")
    ge.add_argument("--prompt", required=True)
    ge.add_argument("--max-new-tokens", type=int, default=200)
    ge.add_argument("--temperature", type=float, default=0.8)
    ge.add_argument("--top-k", type=int, default=None)
    ge.add_argument("--top-p", type=float, default=None)
    ge.add_argument("--seed", type=int, default=0)
    ge.set_defaults(run=cmd_generate)
    g = sub.add_parser("gradcheck", help="gradcheck every registered op (float64)")
    g.add_argument("--op", action="append", help="only this op (repeatable)")
    g.add_argument("--samples", type=int, default=3, help="random samples per op (default 3)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--eps", type=float, default=1e-6)
    g.add_argument("--atol", type=float, default=1e-5)
    g.add_argument("--rtol", type=float, default=1e-3)
    g.add_argument("--fast", action="store_true", help="check one random direction per input")
    g.set_defaults(run=cmd_gradcheck)
    e = sub.add_parser("eps-sweep", help="finite-difference error against eps for one op")
    e.add_argument("--op", action="append", required=True)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--plot", help="write a log-log PNG here")
    e.set_defaults(run=cmd_eps_sweep)
    t = sub.add_parser("taylor", help="Taylor-remainder slope per op (2 = right gradient)")
    t.add_argument("--op", action="append")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(run=cmd_taylor)
    b = sub.add_parser("bench", help="time the kernels and the GPT against the machine's "
                       "ceilings and PyTorch")
    b.add_argument("--quick", action="store_true", help="two small sizes per kernel, short "
                   "end-to-end runs (under 2 minutes)")
    b.add_argument("--only", action="append", metavar="NAME", help="only this kernel family "
                   "or 'e2e' (repeatable, or comma-separated)")
    b.add_argument("--json", metavar="FILE", help="write the results as JSON here")
    b.add_argument("--plot", metavar="FILE", help="write time-against-size plots to this "
                   ".png, and the roofline to FILE_roofline.png")
    b.add_argument("--threads", type=int, metavar="N", help="threads for BLAS, Numba and "
                   "torch (default: every core)")
    b.add_argument("--repeats", type=int, metavar="N", help="exactly this many timed "
                   "repeats per figure")
    b.add_argument("--no-torch", action="store_true", help="skip the torch comparison")
    b.add_argument("--torch-inprocess", action="store_true", help="also time torch's "
                   "kernels in this process, beside Numba")
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


def main(argv=None) -> int:
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            raise UsageError("a command is needed: demo, train, generate, bench, gradcheck, "
                             "eps-sweep or taylor (see --help)")
        if extra and args.command != "train":
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "train":
            bad = [e for e in extra if not (e.startswith("--") and "=" in e)]
            if bad:
                raise UsageError(f"unrecognized argument {bad[0]!r} (settings are "
                                 f"--key=value)")
            args.settings = extra
        if args.command == "eps-sweep" and len(args.op) != 1:
            raise UsageError("eps-sweep takes exactly one --op")
        _validate(args)
        runtime.configure()          # Numba's threading layer, before the first kernel runs
        return args.run(args)
    except UsageError as e:
        print(f"tinyllm: error: {e}", file=sys.stderr)
        return 2
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
