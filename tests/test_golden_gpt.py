"""Golden end-to-end test: a tiny GPT's logits, loss, every parameter gradient and its first
plain-SGD losses against tests/fixtures/golden_gpt.npz (made by tests/make_golden_gpt.py),
under every kernel implementation, in float64.

The fixture was cross-checked against the same model written in torch (max difference
~3e-15); the torch test below redoes that check where torch is installed.
"""
from __future__ import annotations

import numpy as np
import pytest

import tinyllm as tl
from make_golden_gpt import CFG, load, max_diffs, tinyllm_gpt, torch_gpt

TOL = 1e-10
IMPLS = tl.kernels.available("attention")


@pytest.fixture(scope="module")
def golden():
    return load()


def test_fixture_matches_config(golden):
    weights, idx, targets, (logits, loss, grads, losses) = golden
    assert idx.shape == targets.shape == (2, CFG.block_size)
    assert logits.shape == (2, CFG.block_size, CFG.vocab_size)
    assert set(grads) == set(weights) and len(weights) == 4 + 12 * CFG.n_layer  # wte wpe ln_f.{w,b}
    assert (targets == -100).sum() == 1
    assert np.isfinite(loss) and losses[-1] < losses[0]


@pytest.mark.parametrize("impl", IMPLS)
def test_gpt_matches_golden(golden, impl):
    weights, idx, targets, stored = golden
    got = tinyllm_gpt(weights, idx, targets, impl)
    np.testing.assert_allclose(got[0], stored[0], rtol=TOL, atol=TOL, err_msg="logits")
    assert abs(got[1] - stored[1]) <= TOL, "loss"
    for name, g in stored[2].items():
        np.testing.assert_allclose(got[2][name], g, rtol=TOL, atol=TOL, err_msg=name)
    np.testing.assert_allclose(got[3], stored[3], rtol=TOL, atol=TOL, err_msg="sgd losses")


def test_golden_fails_on_a_perturbed_weight(golden):
    """The comparison can fail: one weight moved by 1e-6 moves the outputs past TOL."""
    weights, idx, targets, stored = golden
    w = {n: a.copy() for n, a in weights.items()}
    w["transformer.h.1.mlp.c_fc.bias"][3] += 1e-6
    d = max_diffs(tinyllm_gpt(w, idx, targets, "numpy"), stored)
    assert d["logits"] > TOL and d["grads"] > TOL


@pytest.mark.torch
def test_golden_matches_torch(golden):
    pytest.importorskip("torch")
    weights, idx, targets, stored = golden
    d = max_diffs(torch_gpt(weights, idx, targets), stored)
    assert all(v < 1e-12 for v in d.values()), d
