"""Write tests/fixtures/golden_gpt.npz: a tiny GPT's logits, loss, every parameter gradient
and its first plain-SGD losses, for tests/test_golden_gpt.py (as llm.c's test_gpt2.c does).

    python tests/make_golden_gpt.py            # writes the fixture, cross-checks with torch
    python tests/make_golden_gpt.py --check    # only compares the stored fixture with torch

The model: V=17, block_size=8, 2 layers, 2 heads, 16 wide, float64. Its weights are GPT's
seed-0 initialisation plus N(0, 0.2) noise (so biases and LayerNorm parameters are not 0 and
1, and the logits are O(1): a missing bias or a wrong scale cannot hide), and they are stored
in the fixture, so the golden test checks the forward and backward, not the initialiser.
The batch has a -100 target (ignore_index). The values are computed with the NumPy
reference kernels, the specification.

Where torch is installed, the same model is written again in torch (explicit masked softmax
attention, not SDPA, so it is independent of both tinyllm kernels) with the same weights,
and the maximum differences are printed; ``torch_gpt`` is also used by the golden test.
"""
from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

import tinyllm as tl
from tinyllm.models import GPT, GPTConfig

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "golden_gpt.npz"
CFG = GPTConfig(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)
LR = 0.1
SGD_STEPS = 3


def golden_inputs():
    """Weights (name -> float64 array), idx (B, T) and targets (B, T) of the fixture."""
    rng = np.random.default_rng(1234)
    base = GPT(CFG, seed=0, dtype=np.float64).state_dict()
    weights = {n: a + rng.normal(0.0, 0.2, a.shape) for n, a in base.items()}
    idx = rng.integers(0, CFG.vocab_size, (2, CFG.block_size))
    targets = rng.integers(0, CFG.vocab_size, (2, CFG.block_size))
    targets[1, 3] = -100                                       # one ignored position
    return weights, idx, targets


def tinyllm_gpt(weights, idx, targets, impl="numpy"):
    """logits, loss, grads (name -> array) and the losses of SGD_STEPS plain SGD steps."""
    with tl.kernels.use(impl):
        model = GPT(CFG, dtype=np.float64)
        model.load_state_dict(weights)
        logits, loss = model(idx, targets)
        loss.backward()
        grads = {n: p.grad.copy() for n, p in model.named_parameters()}
        out = (logits.data.copy(), float(loss.item()), grads)
        losses = [out[1]]
        for _ in range(SGD_STEPS):
            for p in model.parameters():
                p.data -= LR * p.grad
            model.zero_grad()
            _, loss = model(idx, targets)
            loss.backward()
            losses.append(float(loss.item()))
    return out + (np.array(losses),)


def torch_gpt(weights, idx, targets):
    """The same model in torch, float64: (logits, loss, grads, sgd_losses)."""
    import torch
    import torch.nn.functional as tF

    P = {n: torch.tensor(a, dtype=torch.float64, requires_grad=True)
         for n, a in weights.items()}
    ti = torch.from_numpy(np.asarray(idx, np.int64))
    tt = torch.from_numpy(np.asarray(targets, np.int64))
    C, H, V = CFG.n_embd, CFG.n_head, CFG.vocab_size
    hs = C // H

    def ln(x, p):
        return tF.layer_norm(x, (C,), P[p + ".weight"], P[p + ".bias"], 1e-5)

    def forward():
        B, T = ti.shape
        x = P["transformer.wte.weight"][ti] + P["transformer.wpe.weight"][:T]
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        for i in range(CFG.n_layer):
            p = f"transformer.h.{i}."
            qkv = ln(x, p + "ln_1") @ P[p + "attn.c_attn.weight"] + P[p + "attn.c_attn.bias"]
            q, k, v = (z.reshape(B, T, H, hs).transpose(1, 2) for z in qkv.split(C, -1))
            att = (q @ k.transpose(-1, -2)) / hs ** 0.5
            att = torch.softmax(att.masked_fill(mask, float("-inf")), dim=-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, C)
            x = x + y @ P[p + "attn.c_proj.weight"] + P[p + "attn.c_proj.bias"]
            h = ln(x, p + "ln_2") @ P[p + "mlp.c_fc.weight"] + P[p + "mlp.c_fc.bias"]
            h = tF.gelu(h, approximate="tanh")
            x = x + h @ P[p + "mlp.c_proj.weight"] + P[p + "mlp.c_proj.bias"]
        logits = ln(x, "transformer.ln_f") @ P["transformer.wte.weight"].T
        loss = tF.cross_entropy(logits.reshape(-1, V), tt.reshape(-1), ignore_index=-100)
        return logits, loss

    logits, loss = forward()
    loss.backward()
    grads = {n: t.grad.numpy().copy() for n, t in P.items()}
    out = (logits.detach().numpy().copy(), float(loss.item()), grads)
    losses = [out[1]]
    for _ in range(SGD_STEPS):
        with torch.no_grad():
            for t in P.values():
                t -= LR * t.grad
                t.grad = None
        _, loss = forward()
        loss.backward()
        losses.append(float(loss.item()))
    return out + (np.array(losses),)


def max_diffs(a, b):
    """Largest absolute differences between two (logits, loss, grads, losses) results."""
    return {"logits": float(np.abs(a[0] - b[0]).max()),
            "loss": abs(a[1] - b[1]),
            "grads": max(float(np.abs(a[2][n] - b[2][n]).max()) for n in a[2]),
            "sgd_losses": float(np.abs(a[3] - b[3]).max())}


def load():
    """The stored fixture as (weights, idx, targets, (logits, loss, grads, sgd_losses))."""
    with np.load(FIXTURE, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    weights = {k[len("param."):]: v for k, v in d.items() if k.startswith("param.")}
    grads = {k[len("grad."):]: v for k, v in d.items() if k.startswith("grad.")}
    return weights, d["idx"], d["targets"], (d["logits"], float(d["loss"]), grads,
                                             d["sgd_losses"])


def write():
    weights, idx, targets = golden_inputs()
    logits, loss, grads, losses = tinyllm_gpt(weights, idx, targets, "numpy")
    arrays = {"config": np.array(json.dumps(CFG.to_dict())), "lr": np.array(LR),
              "idx": idx, "targets": targets, "logits": logits, "loss": np.array(loss),
              "sgd_losses": losses}
    arrays.update({f"param.{n}": a for n, a in weights.items()})
    arrays.update({f"grad.{n}": g for n, g in grads.items()})
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **arrays)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes): loss {loss:.12f}, "
          f"SGD losses {np.array2string(losses, precision=10)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only cross-check the fixture")
    args = ap.parse_args()
    if not args.check:
        write()
    weights, idx, targets, stored = load()
    for impl in tl.kernels.available("attention"):
        d = max_diffs(tinyllm_gpt(weights, idx, targets, impl), stored)
        print(f"tinyllm[{impl}] vs fixture: " + ", ".join(f"{k} {v:.2e}" for k, v in d.items()))
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch is not installed: no cross-check")
        return
    d = max_diffs(torch_gpt(weights, idx, targets), stored)
    print("torch vs fixture: " + ", ".join(f"{k} {v:.2e}" for k, v in d.items()))


if __name__ == "__main__":
    main()
