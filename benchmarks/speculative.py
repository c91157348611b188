"""Speculative decoding on a trained GPT: acceptance, tokens per target call, the measured
speed-up against plain greedy decoding, the cost model's prediction, the sampling rule's
total-variation test on the real models, and the prompt-lookup draft.

    python benchmarks/speculative.py --out bench-spec         # trains a target in bench-spec
    python benchmarks/speculative.py --target runs/gpt --out DIR         # another target
    python benchmarks/speculative.py --quick --out /tmp/s                # smoke (< 60 s)

Target: ``--target``, else the small preset trained here
(``tinyllm train --model gpt --config small``). Drafts: two GPTs of 2 layers x 64 trained
on the same text for fewer or more steps (val about 1.8 and about 1.55), cached under
``--out`` (a second run reuses them).

Per draft and k in {2, 4, 6}, over a fixed set of prompts from the validation split:
- plain greedy (``tl.infer.generate``) and speculative greedy runs *alternate*, prompt by
  prompt and round by round, so both see the same machine load; every speculative output is
  checked token for token against the plain one (and, untimed, on prompts that run past the
  block size, where both caches re-prefill);
- measured speed-up = plain decode time / speculative decode time, prefills excluded (each
  side's prompt prefill is timed apart), and end to end;
- cost model: alpha = accepted / (accepted + rejections) from the run; predicted speed-up =
  E(alpha, k) t_target / (k t_draft + t_verify), E = (1 - alpha^{k+1}) / (1 - alpha), and its
  relative error against the measured one, twice: with the per-call costs the race spent
  (plain decode time per token, draft time per proposed token, target time per verify and
  roll-back), and with per-call costs measured in isolation (median of repeated calls: one
  target decode step, one draft decode step, one verify of k + 1 positions + truncate).
Sampling test: the one-step acceptance rule with the real models' first-token p and q
(temperature 1) over many draws, TV(emitted, p) beside TV(q, p) and the noise floor (TV of as
many direct draws from p); and end to end: the first token of ``speculative_decode`` (k = 1)
over many seeds. Prompt lookup: a repetitive prompt (an ASCII table from the validation
text) and a non-repetitive one (prose), timed the same way.

Writes DIR/speculative.json and DIR/speculative.md. Timings come from one shared machine:
compare the ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from tinyllm import runtime

# the drafts: 2 layers x 64 at a constant lr of 5e-3 (the small preset's 2e-3 is slow for a
# model this size: val 2.06 after 450 steps against 1.90 after 500)
DRAFT_SHAPE = ["--n_layer=2", "--n_head=4", "--n_embd=64", "--lr=5e-3", "--min_lr=5e-3"]
# (name, training steps: full run, quick run); 600 and 1000 steps give val about 1.8 and 1.55
DRAFTS = [("draft-a", 600, 15), ("draft-b", 1000, 30)]
# one thread everywhere (this process and the training runs): batch-1 decoding is
# latency-bound, and on a loaded machine Numba's parallel launches wait for descheduled
# workers (a 128-token prefill of the target measured 4 s with two threads under load,
# 40 ms with one; draft training 5.6 s a step against 50 ms)
ONE_THREAD = {v: "1" for v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                "MKL_NUM_THREADS")}


def _tinyllm(*args) -> str:
    p = subprocess.run([sys.executable, "-m", "tinyllm", *args], capture_output=True, text=True,
                       env={**os.environ, **ONE_THREAD})
    if p.returncode:
        raise SystemExit(f"tinyllm {' '.join(args)} failed ({p.returncode}): "
                         f"{p.stderr.strip()[-500:]}")
    return p.stdout


def _train(path, steps, extra, data):
    if not os.path.isdir(os.path.join(path, "last")):
        flags = ["--model", "gpt", "--config", "small", f"--max_steps={steps}",
                 f"--eval_every={max(1, steps // 4)}", "--progress=false", *extra]
        flags += ["--data", data] if data else []
        print(f"training: tinyllm train {' '.join(flags)} --out {path}", flush=True)
        _tinyllm("train", *flags, "--out", path)
    return path


def target_dir(args) -> str:
    if args.target:
        return args.target
    extra = [] if not args.quick else DRAFT_SHAPE
    return _train(os.path.join(args.out, "teacher"), 40 if args.quick else 2000, extra, None)


def _checkpoint(d):
    for sub in ("best", "last"):
        if os.path.isdir(os.path.join(d, sub)):
            return os.path.join(d, sub)
    return d


def _median_time(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def per_call_costs(target, draft, prompt, k, reps):
    """Median seconds of one target decode step, one draft decode step, and one target
    verify of k + 1 positions with its roll-back, each after ``prompt`` (T,)."""
    x = prompt[None]
    tc, dc = target.new_kv_cache(1), draft.new_kv_cache(1)
    target.prefill(x, tc)
    draft.prefill(x, dc)
    L = tc.length
    tok = np.array([int(prompt[-1])])
    chunk = np.tile(prompt[-1:], (1, k + 1))

    def t_step():
        target.decode_step(tok, tc)
        tc.truncate(L)

    def d_step():
        draft.decode_step(tok, dc)
        dc.truncate(L)

    def verify():
        target.extend(chunk, tc)
        tc.truncate(L)

    return (_median_time(t_step, reps), _median_time(d_step, reps),
            _median_time(verify, reps))


def plain_greedy(target, x, n):
    """Plain greedy KV-cache decoding (``tl.infer.decode``, what ``generate`` runs at
    temperature 0): (tokens (1, T + n), seconds in all, seconds of them in the prefill)."""
    from tinyllm.infer import decode
    new, mark = [], []

    def choose(logits, i):
        if i == 0:
            mark.append(time.perf_counter())            # the prompt's prefill is done
        nxt = np.argmax(logits, axis=-1)
        new.append(int(nxt[0]))
        return nxt.astype(np.int64), None

    t0 = time.perf_counter()
    decode(target, x, n, choose)
    t1 = time.perf_counter()
    return np.concatenate([x[0], new])[None], t1 - t0, mark[0] - t0


def race(target, draft, prompts, n, k, rounds):
    """Alternate plain and speculative greedy decoding over the prompts (after one untimed
    pair); returns the sums and every stat, and whether every output matched."""
    from tinyllm.infer import speculative_decode
    acc = dict(plain=0.0, plain_prefill=0.0, spec=0.0, spec_prefill=0.0, accepted=0,
               proposed=0, rejections=0, target_calls=0, draft_calls=0, rounds=0, tokens=0,
               target_time=0.0, draft_time=0.0, exact=True)
    plain_greedy(target, prompts[0][None], n)
    speculative_decode(target, draft, prompts[0][None], n, k=k)
    for _ in range(rounds):
        for p in prompts:
            x = p[None]
            plain, t_plain, t_pre = plain_greedy(target, x, n)
            t1 = time.perf_counter()
            out, st = speculative_decode(target, draft, x, n, k=k)
            t2 = time.perf_counter()
            acc["plain_prefill"] += t_pre
            acc["plain"] += t_plain
            acc["spec"] += t2 - t1
            acc["spec_prefill"] += st.prefill_time_s
            acc["exact"] &= bool(np.array_equal(out, plain))
            for f in ("accepted", "proposed", "rejections", "target_calls", "draft_calls",
                      "rounds"):
                acc[f] += getattr(st, f)
            acc["tokens"] += n
            acc["target_time"] += st.target_time_s
            acc["draft_time"] += st.draft_time_s
    return acc


def past_window_exact(target, draft, ids, n, ks):
    """Untimed: prompts that run past the block size (both caches re-prefill)."""
    import tinyllm as tl
    from tinyllm.infer import speculative_decode
    from tinyllm.train.evaluate import fixed_prompt
    bs = target.config.block_size
    p = fixed_prompt(ids, bs - n // 2, 99)[None]
    plain = tl.infer.generate(target, p, n, temperature=0)
    return all(np.array_equal(speculative_decode(target, draft, p, n, k=k)[0], plain)
               for k in ks)


def lookup_prompts(tok, ids):
    """Prompt lookup's two prompts from the validation text, (ids, new tokens) each: the
    first of its ASCII tables (rows of "+---+" and "|   |", which the continuation repeats),
    and the first seeded passage of plain prose (letters, spaces and punctuation only)."""
    from tinyllm.train.evaluate import fixed_prompt
    text = tok.decode(ids.tolist())
    i = text.find("\n+---")
    table = text[i + 1:i + 97] if i >= 0 else text[:48] * 2   # a border and a row's start
    prose = None
    for seed in range(100):
        p = fixed_prompt(ids, 64, seed)
        t = tok.decode(p.tolist())
        if all(c.isalpha() or c in " ,.'\n" for c in t):
            prose = p
            break
    prose = fixed_prompt(ids, 64, 6) if prose is None else prose
    return (np.asarray(tok.encode(table), np.int64), 30), (prose, 40)


def tv(a, b):
    return float(0.5 * np.abs(np.asarray(a) - np.asarray(b)).sum())


def sampling_test(target, draft, prompt, draws, e2e_draws, seed=0):
    from tinyllm.infer import accept_draft_token, speculative_decode
    from tinyllm.infer.speculative import filtered_probs
    x = prompt[None]
    p = filtered_probs(target.prefill(x, target.new_kv_cache(1)), 1.0)[0]
    q = filtered_probs(draft.prefill(x, draft.new_kv_cache(1)), 1.0)[0]
    rng = np.random.default_rng(seed)
    xs = rng.choice(len(p), size=draws, p=q)
    counts = np.zeros(len(p))
    for t in xs:
        counts[accept_draft_token(p, q, int(t), rng)[1]] += 1
    direct = np.bincount(rng.choice(len(p), size=draws, p=p), minlength=len(p)) / draws
    e2e = np.zeros(len(p))
    for s in range(e2e_draws):
        out, _ = speculative_decode(target, draft, x, 2, k=1, temperature=1.0, seed=s)
        e2e[out[0, x.shape[1]]] += 1
    direct_e2e = np.bincount(rng.choice(len(p), size=e2e_draws, p=p),
                             minlength=len(p)) / e2e_draws
    return {"draws": draws, "tv_rule": tv(counts / draws, p), "tv_q_p": tv(q, p),
            "tv_noise": tv(direct, p), "e2e_draws": e2e_draws,
            "tv_e2e": tv(e2e / e2e_draws, p), "tv_e2e_noise": tv(direct_e2e, p)}


def run(args):
    from tinyllm.data import load_corpus, train_val_split
    from tinyllm.infer import PromptLookupDraft, expected_tokens_per_round, predicted_speedup
    from tinyllm.train.evaluate import fixed_prompt, window_losses
    from tinyllm.train.runs import load_model

    runtime.configure(threads=1)
    os.makedirs(args.out, exist_ok=True)
    tdir = target_dir(args)
    target, tok, meta = load_model(_checkpoint(tdir))
    src = meta.get("text")
    data = src if isinstance(src, str) and src != "embedded" and os.path.isfile(src) else None
    ids = train_val_split(np.asarray(tok.encode(load_corpus(data)), np.int64), 0.9)[1]
    windows = 8 if args.quick else 40
    res = {"target": tdir, "target_val": float(window_losses(target, ids, windows).mean()),
           "windows": windows, "quick": args.quick, "drafts": [], "rows": []}
    print(f"target {tdir}: val {res['target_val']:.3f} on {windows} windows", flush=True)
    n = 24 if args.quick else 64
    n_prompts, rounds = (2, 1) if args.quick else (12, 4)
    prompts = [fixed_prompt(ids, 32, s) for s in range(n_prompts)]
    ks = (2, 4) if args.quick else (2, 4, 6)
    reps = 20 if args.quick else 200
    drafts = []
    for name, steps, qsteps in DRAFTS:
        path = _train(os.path.join(args.out, name), qsteps if args.quick else steps,
                      DRAFT_SHAPE, data)
        d, dtok, _ = load_model(_checkpoint(path))
        if dtok.to_dict() != tok.to_dict():
            raise SystemExit(f"{path}: its tokenizer differs from the target's")
        val = float(window_losses(d, ids, windows).mean())
        info = {"name": name, "path": path, "steps": qsteps if args.quick else steps,
                "val": val, "params": sum(p.data.size for p in d.parameters())}
        res["drafts"].append(info)
        drafts.append((info, d))
        print(f"{name}: {info['steps']} steps, val {val:.3f}", flush=True)
    for info, d in drafts:
        info["past_window_exact"] = past_window_exact(target, d, ids, 16 if args.quick else 48,
                                                      ks)
        for k in ks:
            a = race(target, d, prompts, n, k, rounds)
            t_t, t_d, t_v = per_call_costs(target, d, prompts[0], k, reps)
            alpha = a["accepted"] / max(1, a["accepted"] + a["rejections"])
            pred_iso = predicted_speedup(alpha, k, t_t, t_d, t_v)
            # the same costs as the race itself spent them: plain decode time per token,
            # draft time per proposed token, target time per verify (roll-backs included)
            run_t = (a["plain"] - a["plain_prefill"]) / a["tokens"]
            run_d = a["draft_time"] / max(1, a["proposed"])
            run_v = a["target_time"] / a["target_calls"]
            pred = predicted_speedup(alpha, k, run_t, run_d, run_v)
            meas = (a["plain"] - a["plain_prefill"]) / (a["spec"] - a["spec_prefill"])
            loop = (a["spec"] - a["spec_prefill"] - a["draft_time"] - a["target_time"])
            row = {"draft": info["name"], "draft_val": info["val"], "k": k,
                   "acceptance": a["accepted"] / max(1, a["proposed"]), "alpha": alpha,
                   "tokens_per_target_call": a["tokens"] / a["target_calls"],
                   "tokens_per_round_model": expected_tokens_per_round(alpha, k),
                   "speedup": meas, "speedup_e2e": a["plain"] / a["spec"],
                   "predicted": pred, "rel_error": (pred - meas) / meas,
                   "predicted_isolated": pred_iso, "rel_error_isolated": (pred_iso - meas) / meas,
                   "t_target_step_ms": 1e3 * run_t, "t_draft_step_ms": 1e3 * run_d,
                   "t_verify_ms": 1e3 * run_v, "iso_target_step_ms": 1e3 * t_t,
                   "iso_draft_step_ms": 1e3 * t_d, "iso_verify_ms": 1e3 * t_v,
                   "loop_ms_per_round": 1e3 * loop / a["rounds"], "exact": a["exact"],
                   "runs": rounds * len(prompts), "new_tokens": n}
            res["rows"].append(row)
            print(f"{info['name']} k={k}: acceptance {100 * row['acceptance']:.1f}% "
                  f"(alpha {100 * alpha:.1f}%), {row['tokens_per_target_call']:.2f} tok/call, "
                  f"speed-up {meas:.2f}x (e2e {row['speedup_e2e']:.2f}x), predicted "
                  f"{pred:.2f}x ({100 * row['rel_error']:+.1f}%; isolated costs {pred_iso:.2f}x "
                  f"{100 * row['rel_error_isolated']:+.1f}%), exact {a['exact']}",
                  flush=True)
    info, d = drafts[0]
    res["sampling"] = dict(draft=info["name"], **sampling_test(
        target, d, prompts[0], 20000 if args.quick else 200000, 200 if args.quick else 4000))
    s = res["sampling"]
    print(f"sampling: TV(rule, p) {s['tv_rule']:.4f} (noise {s['tv_noise']:.4f}, TV(q, p) "
          f"{s['tv_q_p']:.3f}); end to end TV {s['tv_e2e']:.4f} (noise "
          f"{s['tv_e2e_noise']:.4f})", flush=True)
    lookup = []
    for kind, p, nn in (("repetitive", *lookup_prompts(tok, ids)[0]),
                        ("non-repetitive", *lookup_prompts(tok, ids)[1])):
        if args.quick:
            nn = 16
        for k in ks:
            a = race(target, PromptLookupDraft(ngram=3), [p], nn, k, 2 if args.quick else 10)
            lookup.append({"prompt": kind, "prompt_len": len(p), "new_tokens": nn, "k": k,
                           "acceptance": a["accepted"] / max(1, a["proposed"]),
                           "proposed_per_round": a["proposed"] / a["rounds"],
                           "tokens_per_target_call": a["tokens"] / a["target_calls"],
                           "speedup": (a["plain"] - a["plain_prefill"])
                           / (a["spec"] - a["spec_prefill"]),
                           "speedup_e2e": a["plain"] / a["spec"], "exact": a["exact"],
                           "text": tok.decode(p.tolist())})
            r = lookup[-1]
            print(f"prompt lookup, {kind} k={k}: acceptance {100 * r['acceptance']:.1f}%, "
                  f"{r['tokens_per_target_call']:.2f} tok/call, speed-up {r['speedup']:.2f}x, "
                  f"exact {r['exact']}", flush=True)
    res["lookup"] = lookup
    with open(os.path.join(args.out, "speculative.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = markdown(res, n, len(prompts), rounds)
    with open(os.path.join(args.out, "speculative.md"), "w") as f:
        f.write(md)
    print(f"wrote {os.path.join(args.out, 'speculative.md')} and speculative.json")
    return res


def markdown(res, n, n_prompts, rounds) -> str:
    L = [f"# Speculative decoding{' (quick smoke run)' if res['quick'] else ''}", "",
         f"Target `{res['target']}` (val {res['target_val']:.3f} on {res['windows']} fixed "
         f"windows of the validation split). Drafts: 2 layers x 64, trained here on the same "
         f"text; greedy decoding of {n} new tokens after {n_prompts} prompts of 32 "
         f"characters, {rounds} rounds, plain and speculative runs alternating, one thread. "
         f"Produced by `python benchmarks/speculative.py{' --quick' if res['quick'] else ''}`"
         f" on a shared 2-core machine: compare ratios within the table, not across runs.", "",
         "| draft | val | params | steps | exact past the block size |", "|---|---|---|---|---|"]
    for d in res["drafts"]:
        L.append(f"| {d['name']} | {d['val']:.3f} | {d['params']:,} | {d['steps']} | "
                 f"{'yes' if d.get('past_window_exact') else 'NO'} |")
    L += ["", "acceptance = accepted / proposed draft tokens; alpha = accepted / (accepted + "
          "rejections), the per-token rate the cost model takes; speed-up = plain decode "
          "time / speculative decode time, prefills excluded (end to end in brackets); "
          "predicted = E(alpha, k) t_target / (k t_draft + t_verify) with E = (1 - "
          "alpha^(k+1)) / (1 - alpha), from the per-call costs (ms) the race spent (plain "
          "decode time per token, draft time per proposed token, target time per verify "
          "with its roll-back), and in the last column from per-call costs measured in "
          "isolation (median of repeated calls: decode step, draft step, verify + "
          "truncate). loop = the rest of a round (acceptance test, bookkeeping), which "
          "the cost model leaves out.", "",
          "| draft | k | exact | acceptance | alpha | tokens / target call | E(alpha, k) | "
          "t_target | t_draft | t_verify(k+1) | loop / round | measured speed-up | "
          "predicted | error | predicted, isolated costs |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        L.append(f"| {r['draft']} (val {r['draft_val']:.2f}) | {r['k']} | "
                 f"{'yes' if r['exact'] else 'NO'} | {100 * r['acceptance']:.1f}% | "
                 f"{100 * r['alpha']:.1f}% | {r['tokens_per_target_call']:.2f} | "
                 f"{r['tokens_per_round_model']:.2f} | {r['t_target_step_ms']:.3f} | "
                 f"{r['t_draft_step_ms']:.3f} | {r['t_verify_ms']:.3f} | "
                 f"{r['loop_ms_per_round']:.3f} | "
                 f"{r['speedup']:.2f}x ({r['speedup_e2e']:.2f}x) | {r['predicted']:.2f}x | "
                 f"{100 * r['rel_error']:+.1f}% | {r['predicted_isolated']:.2f}x "
                 f"({100 * r['rel_error_isolated']:+.1f}%) |")
    s = res["sampling"]
    L += ["", f"Sampling (temperature 1), first token after the first prompt, target against "
          f"{s['draft']}: the acceptance rule over {s['draws']:,} draws x ~ q gives TV(emitted, "
          f"p) = {s['tv_rule']:.4f} (as many direct draws from p: {s['tv_noise']:.4f}; the "
          f"draft itself is TV(q, p) = {s['tv_q_p']:.3f} away); end to end, the first token of "
          f"`speculative_decode` (k = 1) over {s['e2e_draws']:,} seeds: TV = {s['tv_e2e']:.4f} "
          f"(noise {s['tv_e2e_noise']:.4f}).", "",
          "Prompt lookup (3-gram, no draft model):", "",
          "| prompt | k | exact | acceptance | proposed / round | tokens / target call | "
          "speed-up |", "|---|---|---|---|---|---|---|"]
    for r in res["lookup"]:
        L.append(f"| {r['prompt']} ({r['prompt_len']} chars, {r['new_tokens']} new) | {r['k']} "
                 f"| {'yes' if r['exact'] else 'NO'} | {100 * r['acceptance']:.1f}% | "
                 f"{r['proposed_per_round']:.2f} | {r['tokens_per_target_call']:.2f} | "
                 f"{r['speedup']:.2f}x ({r['speedup_e2e']:.2f}x) |")
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-spec", help="folder for the drafts and the report")
    ap.add_argument("--target", default=None, help="the target run or checkpoint folder "
                    "(default: one trained under --out)")
    ap.add_argument("--quick", action="store_true", help="a smoke run (< 60 s)")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
