"""The ``tinyllm`` command line (also ``python -m tinyllm``).

Commands:
  gradcheck   gradcheck every registered op in float64 on random shapes; exit 1 on a failure
  eps-sweep   error of the central difference against eps, float32 and float64, for one op
  taylor      the Taylor-remainder slope for one op (about 2 = right, about 1 = wrong)

Bad input prints one line and exits 2; a runtime failure prints one line and exits 1.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
import zlib

import numpy as np


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


def cmd_gradcheck(args) -> int:
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
        res = taylor_test(s.fn, s.inputs, seed=args.seed, full=True)
        good = res.slope > 1.8
        ok &= good
        print(f"{op.name:<14} slope {res.slope:6.3f}  {'ok' if good else 'WRONG GRADIENT?'}")
    return 0 if ok else 1


def _parser():
    p = _Parser(prog="tinyllm", description="tinyllm: LLM math you can read, check and time.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
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
    return p


def _validate(args) -> None:
    if args.seed < 0:
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
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError("a command is needed: gradcheck, eps-sweep or taylor (see --help)")
        if args.command == "eps-sweep" and len(args.op) != 1:
            raise UsageError("eps-sweep takes exactly one --op")
        _validate(args)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")       # finite differences at a bad eps warn a lot
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
