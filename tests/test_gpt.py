"""GPT (tl.models) and generation (tl.infer): GPT-2's names and init, the tied head,
causality, KV-cache decoding against full recomputation, sampling filters, beam search, and
a tiny model overfitting a tiny batch."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import tinyllm as tl
from tinyllm.errors import ShapeError
from tinyllm.infer import beam_search, filter_logits, generate, sample_next
from tinyllm.models import GPT, GPTConfig

IMPLS = tl.kernels.available("attention")
SMALL = GPTConfig(vocab_size=23, block_size=12, n_layer=2, n_head=2, n_embd=16)


def sharp_gpt(cfg=SMALL, seed=0, std=1.0, dtype=np.float32):
    """A GPT with O(1) random weights and unit-norm token embeddings, so that its logits are
    far from uniform and greedy decoding does not just repeat the token whose embedding is
    longest (a random N(0, 0.02) model does that)."""
    m = GPT(cfg, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    m.load_state_dict({n: a + rng.normal(0.0, std, a.shape) for n, a in m.state_dict().items()})
    w = m.transformer.wte.weight.data
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return m


def tokens(shape, V=SMALL.vocab_size, seed=0):
    return np.random.default_rng(seed).integers(0, V, shape)


# ------------------------------------------------------------------ config

def test_config_round_trips_and_validates():
    cfg = GPTConfig(50, 16, 3, 4, 32, dropout=0.1, bias=False)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    assert GPTConfig.from_dict({"vocab_size": 5, "block_size": 4, "n_layer": 1, "n_head": 1,
                                "n_embd": 2}).dropout == 0.0
    with pytest.raises(ValueError, match="n_embd .* n_head"):
        GPTConfig(50, 16, 3, 5, 32)
    for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        kw = dict(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=2)
        kw[field] = 0
        with pytest.raises(ValueError, match=field):
            GPTConfig(**kw)
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(5, 4, 1, 1, 2, dropout=1.0)
    with pytest.raises(ValueError, match="unknown fields n_ctx"):
        GPTConfig.from_dict({**cfg.to_dict(), "n_ctx": 3})
    with pytest.raises(ValueError, match="missing fields n_layer"):
        GPTConfig.from_dict({"vocab_size": 5, "block_size": 4, "n_head": 1, "n_embd": 2})


# ------------------------------------------------------------------ names, head, init

def gpt2_names(n_layer):
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        for sub in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            names += [f"transformer.h.{i}.{sub}.weight", f"transformer.h.{i}.{sub}.bias"]
    return names + ["transformer.ln_f.weight", "transformer.ln_f.bias"]


def test_parameter_names_and_shapes_are_gpt2s():
    m = GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=3, n_head=2, n_embd=12))
    shapes = {n: p.shape for n, p in m.named_parameters()}
    assert list(shapes) == gpt2_names(3)
    assert shapes["transformer.wte.weight"] == (30, 12)
    assert shapes["transformer.wpe.weight"] == (8, 12)
    assert shapes["transformer.h.0.attn.c_attn.weight"] == (12, 36)     # (in, out)
    assert shapes["transformer.h.2.mlp.c_fc.weight"] == (12, 48)
    assert shapes["transformer.h.2.mlp.c_proj.weight"] == (48, 12)
    V, B, C, L = 30, 8, 12, 3
    assert m.num_parameters() == V * C + B * C + L * (12 * C * C + 13 * C) + 2 * C


@pytest.mark.slow
def test_gpt2_small_has_gpt2s_parameter_count():
    m = GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768))
    assert m.num_parameters() == 124_439_808          # GPT-2 small, head tied to wte


def test_head_is_tied_to_wte():
    m = GPT(SMALL, dtype=np.float64)
    assert not any("lm_head" in n for n, _ in m.named_parameters())
    # with ln_f's weight 0 every position's final hidden state is ln_f.bias, so the logits
    # must be ln_f.bias @ wte^T everywhere
    b = np.random.default_rng(1).standard_normal(SMALL.n_embd)
    m.transformer.ln_f.weight.data[...] = 0.0
    m.transformer.ln_f.bias.data[...] = b
    logits, _ = m(tokens((2, 5)))
    want = b @ m.transformer.wte.weight.data.T
    np.testing.assert_allclose(logits.data, np.broadcast_to(want, logits.shape), rtol=1e-12)


def test_tied_wte_gets_the_gradient_of_both_uses():
    m = GPT(SMALL, dtype=np.float64)
    idx = tokens((2, 6))
    _, loss = m(idx, tokens((2, 6), seed=1))
    loss.backward()
    g = m.transformer.wte.weight.grad
    unused = np.setdiff1d(np.arange(SMALL.vocab_size), idx)
    assert np.abs(g[unused]).max() > 0          # only the head reaches rows not in idx


def test_init_statistics():
    cfg = GPTConfig(vocab_size=400, block_size=64, n_layer=4, n_head=4, n_embd=64)
    m = GPT(cfg, seed=3)
    p = dict(m.named_parameters())
    for name in ("transformer.wte.weight", "transformer.wpe.weight",
                 "transformer.h.0.attn.c_attn.weight", "transformer.h.3.mlp.c_fc.weight"):
        assert abs(p[name].data.std() - 0.02) < 0.001, name
        assert abs(p[name].data.mean()) < 0.001, name
    proj = 0.02 / math.sqrt(2 * cfg.n_layer)
    for name in ("transformer.h.1.attn.c_proj.weight", "transformer.h.2.mlp.c_proj.weight"):
        assert abs(p[name].data.std() - proj) < 0.1 * proj, name
    for name, t in p.items():
        if name.endswith(".bias"):
            assert not t.data.any(), name
        elif ".ln_" in name:
            assert (t.data == 1).all(), name
        assert t.dtype == np.float32
    m2 = GPT(cfg, seed=3)
    assert all(np.array_equal(a, m2.state_dict()[n]) for n, a in m.state_dict().items())


def test_loss_at_init_is_about_ln_vocab():
    cfg = GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32)
    _, loss = GPT(cfg)(tokens((4, 32), 300), tokens((4, 32), 300, seed=1))
    assert abs(loss.item() - math.log(300)) < 0.05


def test_forward_checks_its_input():
    m = GPT(SMALL)
    with pytest.raises(ShapeError, match="block_size 12"):
        m(tokens((1, 13)))
    with pytest.raises(ShapeError, match="idx must be an int array"):
        m(np.zeros((2, 3)))
    with pytest.raises(ShapeError, match="targets"):
        m(tokens((2, 3)), tokens((2, 4)))
    logits, loss = m(tokens((3, 12)))
    assert logits.shape == (3, 12, SMALL.vocab_size) and loss is None


def test_ignored_targets_leave_the_loss():
    m = GPT(SMALL, dtype=np.float64)
    idx, tg = tokens((2, 6)), tokens((2, 6), seed=1)
    tg2 = tg.copy()
    tg2[0, :3] = -100
    logits, loss = m(idx, tg2)
    lp = logits.data - np.log(np.exp(logits.data).sum(-1, keepdims=True))
    keep = tg2 != -100
    want = -np.take_along_axis(lp, np.where(keep, tg2, 0)[..., None], -1)[..., 0][keep].mean()
    assert abs(loss.item() - want) < 1e-12


@pytest.mark.parametrize("impl", IMPLS)
def test_causality_future_tokens_leave_past_logits_bitwise_unchanged(impl):
    m = sharp_gpt()
    a = tokens((2, SMALL.block_size))
    with tl.kernels.use(impl):
        base = m(a)[0].data
        for t in (0, 4, SMALL.block_size - 2):
            b = a.copy()
            b[:, t + 1:] = (b[:, t + 1:] + 7) % SMALL.vocab_size
            out = m(b)[0].data
            np.testing.assert_array_equal(out[:, :t + 1], base[:, :t + 1])
            assert not np.array_equal(out[:, t + 1:], base[:, t + 1:])


def test_dropout_in_gpt_trains_noisily_evaluates_deterministically():
    cfg = GPTConfig(**{**SMALL.to_dict(), "dropout": 0.3})
    m, plain = GPT(cfg, seed=2), GPT(SMALL, seed=2)
    idx = tokens((2, 8))
    state = m.rng.bit_generator.state
    first = m(idx)[0].data
    assert not np.array_equal(first, m(idx)[0].data)
    m.rng.bit_generator.state = state                 # resuming replays the same masks
    np.testing.assert_array_equal(m(idx)[0].data, first)
    m.eval()
    np.testing.assert_array_equal(m(idx)[0].data, plain(idx)[0].data)


# ------------------------------------------------------------------ KV cache

@pytest.mark.parametrize("impl", IMPLS)
def test_decode_step_logits_match_full_forward(impl):
    m = sharp_gpt()
    seq = tokens((3, 2 * SMALL.block_size + 3))
    bs = SMALL.block_size
    with tl.kernels.use(impl):
        cache = m.new_kv_cache(3)
        logits = m.prefill(seq[:, :2], cache)
        for t in range(2, seq.shape[1]):
            full = m(seq[:, max(0, t - bs):t])[0].data[:, -1]      # cropped context
            # one-token decoding runs the layernorm and mlp references (GPT._decode_arrays),
            # the forward runs impl's: in float32 those agree to a relative 1e-5
            # (tests/test_kernels_dense.py), which compounds over the layers
            np.testing.assert_allclose(logits, full, atol=1e-5, rtol=1e-5 if impl != "numpy"
                                       else 0, err_msg=f"t={t}")
            logits = m.decode_step(seq[:, t], cache)
    assert cache.length == bs and cache.refills == seq.shape[1] - bs


def test_small_keep_refills_rarely_and_keeps_the_last_tokens():
    m = sharp_gpt(dtype=np.float64)
    seq = tokens((1, 30))
    cache = m.new_kv_cache(1, max_len=8, keep=3)
    logits = m.prefill(seq[:, :8], cache)
    logits = m.decode_step(seq[:, 8], cache)        # full: refill with 3 tokens, then decode
    assert cache.refills == 1 and cache.length == 4
    np.testing.assert_allclose(logits, m(seq[:, 5:9])[0].data[:, -1], atol=1e-12)
    for t in range(9, 13):                           # room for 4 more without a refill
        logits = m.decode_step(seq[:, t], cache)
    assert cache.refills == 1 and cache.length == 8
    np.testing.assert_allclose(logits, m(seq[:, 5:13])[0].data[:, -1], atol=1e-12)


def test_kv_cache_arguments_are_checked():
    m = GPT(SMALL)
    with pytest.raises(ValueError, match="max_len"):
        m.new_kv_cache(1, max_len=SMALL.block_size + 1)
    with pytest.raises(ValueError, match="keep"):
        m.new_kv_cache(1, max_len=4, keep=4)
    cache = m.new_kv_cache(2)
    with pytest.raises(ShapeError, match="idx_new"):
        m.decode_step(np.zeros(3, np.int64), cache)
    with pytest.raises(ShapeError, match="batch"):
        m.prefill(tokens((1, 3)), cache)
    assert cache.k[0].shape == (2, SMALL.n_head, SMALL.block_size, SMALL.head_size)


@pytest.mark.parametrize("prompt_len,new", [(3, 6), (5, 20), (15, 4)])
def test_greedy_with_and_without_cache_give_the_same_tokens(prompt_len, new):
    m = sharp_gpt()
    idx = tokens((2, prompt_len))
    a = generate(m, idx, new, temperature=0, use_cache=True)
    b = generate(m, idx, new, temperature=0, use_cache=False)
    assert a.shape == (2, prompt_len + new)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:, :prompt_len], idx)
    assert len(np.unique(a[:, prompt_len:])) > 1     # not one repeated token


def test_sampling_with_and_without_cache_gives_the_same_tokens():
    m = sharp_gpt(seed=1)
    idx = tokens((3, 2))
    a = generate(m, idx, 30, temperature=0.8, seed=5, use_cache=True)
    np.testing.assert_array_equal(a, generate(m, idx, 30, temperature=0.8, seed=5,
                                              use_cache=False))
    assert len(np.unique(a[:, 2:])) > 8


# ------------------------------------------------------------------ sampling

def test_top_k_and_top_p_restrict_the_support():
    z = np.log(np.array([[0.05, 0.5, 0.15, 0.3]]))
    assert np.isfinite(filter_logits(z, top_k=2)).tolist() == [[False, True, False, True]]
    assert np.isfinite(filter_logits(z, top_p=0.79)).tolist() == [[False, True, False, True]]
    assert np.isfinite(filter_logits(z, top_p=0.81)).tolist() == [[False, True, True, True]]
    assert np.isfinite(filter_logits(z, top_p=0.01)).tolist() == [[False, True, False, False]]
    assert np.isfinite(filter_logits(z, top_k=10, top_p=1.0)).all()
    rng = np.random.default_rng(0)
    zz = np.repeat(z, 4000, axis=0)
    drawn = sample_next(zz, 1.0, 3, None, rng)
    assert set(np.unique(drawn)) == {1, 2, 3}
    drawn = sample_next(zz, 1.0, None, 0.79, rng)
    assert set(np.unique(drawn)) == {1, 3}
    assert abs((drawn == 1).mean() - 0.5 / 0.8) < 0.03      # renormalised over the kept set
    assert set(np.unique(sample_next(zz, 1.0, None, None, rng))) == {0, 1, 2, 3}


def test_generate_top_k_support_on_a_model():
    m = sharp_gpt()
    idx = tokens((1, 4))
    out = generate(m, np.repeat(idx, 200, axis=0), 1, top_k=2, seed=0)[:, -1]
    top2 = np.argsort(m(idx)[0].data[0, -1])[-2:]
    assert set(out) == set(top2)
    np.testing.assert_array_equal(generate(m, idx, 6, top_k=1, seed=1),
                                  generate(m, idx, 6, temperature=0))


def test_seeded_sampling_is_reproducible():
    m = sharp_gpt()
    idx = tokens((2, 3))
    a = generate(m, idx, 15, temperature=1.3, top_p=0.95, seed=42)
    np.testing.assert_array_equal(a, generate(m, idx, 15, temperature=1.3, top_p=0.95,
                                              seed=42))
    np.testing.assert_array_equal(a, generate(m, idx, 15, temperature=1.3, top_p=0.95,
                                              seed=42, use_cache=False))
    assert not np.array_equal(a, generate(m, idx, 15, temperature=1.3, top_p=0.95, seed=43))


def test_context_longer_than_block_size_is_cropped():
    m = sharp_gpt()
    long = tokens((1, 3 * SMALL.block_size))
    a = generate(m, long, 5, temperature=0)
    b = generate(m, long[:, -SMALL.block_size:], 5, temperature=0, use_cache=False)
    np.testing.assert_array_equal(a[:, -5:], b[:, -5:])
    np.testing.assert_array_equal(a[:, :long.shape[1]], long)


def test_generate_one_dimensional_and_zero_new_tokens():
    m = sharp_gpt()
    out = generate(m, np.array([1, 2, 3]), 4, temperature=0)
    assert out.shape == (7,)
    np.testing.assert_array_equal(out, generate(m, np.array([[1, 2, 3]]), 4, temperature=0)[0])
    np.testing.assert_array_equal(generate(m, np.array([[1, 2]]), 0), [[1, 2]])


def test_generate_restores_training_mode():
    cfg = GPTConfig(**{**SMALL.to_dict(), "dropout": 0.5})
    m = GPT(cfg)
    a = generate(m, tokens((1, 3)), 8, temperature=0)
    assert m.training and m.transformer.h[0].mlp.dropout.training
    np.testing.assert_array_equal(a, generate(m, tokens((1, 3)), 8, temperature=0))


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": -0.5}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": 0}, "top_k"),
    ({"top_k": 2.5}, "top_k"), ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"idx": np.zeros((1, 2))}, "idx"), ({"idx": np.zeros((1, 1, 2), int)}, "idx"),
    ({"idx": np.zeros((1, 0), int)}, "idx"),
])
def test_generate_rejects_bad_arguments(kwargs, match):
    args = {"idx": np.array([[1, 2]]), "max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate(GPT(SMALL), **args)


class CountUp:
    """Not a GPT: any model(idx) -> (logits (B, T, V), loss) works with generate. Its next
    token is always (last + 1) mod V."""
    config = GPTConfig(vocab_size=7, block_size=4, n_layer=1, n_head=1, n_embd=1)

    def __call__(self, idx):
        assert idx.shape[1] <= 4
        return 10.0 * np.eye(7)[(idx + 1) % 7], None


def test_generate_works_for_any_model_without_a_cache():
    out = generate(CountUp(), np.array([[5]]), 6, temperature=0)
    np.testing.assert_array_equal(out, [[5, 6, 0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(beam_search(CountUp(), np.array([5]), 3, beam_width=2),
                                  [5, 6, 0, 1])


# ------------------------------------------------------------------ beam search

@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_width_one_is_greedy(use_cache):
    m = sharp_gpt()
    idx = tokens((2, 4))
    np.testing.assert_array_equal(beam_search(m, idx, 10, beam_width=1, use_cache=use_cache),
                                  generate(m, idx, 10, temperature=0))


def _logprob(m, prompt, cont):
    seq = np.concatenate([prompt, cont])[None]
    lp = m(seq)[0].data.astype(np.float64)[0]
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    T = len(prompt)
    return sum(lp[T - 1 + i, t] for i, t in enumerate(cont))


def test_wide_beam_finds_the_exhaustive_best():
    cfg = GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8)
    m = sharp_gpt(cfg, seed=4, std=0.6, dtype=np.float64)
    prompt = np.array([1, 3])
    n = 3
    best = max(itertools.product(range(5), repeat=n), key=lambda c: _logprob(m, prompt, c))
    got = beam_search(m, prompt, n, beam_width=5 ** (n - 1))      # keeps every prefix
    np.testing.assert_array_equal(got, np.concatenate([prompt, best]))
    narrow = beam_search(m, prompt, n, beam_width=2)
    assert _logprob(m, prompt, got[2:]) >= _logprob(m, prompt, narrow[2:]) - 1e-12


def test_beam_search_eos_and_length_penalty():
    m = sharp_gpt()
    idx = tokens((1, 3))
    greedy = generate(m, idx, 8, temperature=0)[0]
    j = 3 + int(np.argmax(greedy[3:] != greedy[3]))    # the first new token unlike the first
    assert j > 3
    eos = int(greedy[j])
    out = beam_search(m, idx, 8, beam_width=1, eos_token_id=eos)
    np.testing.assert_array_equal(out, greedy[None, :j + 1])      # stopped at eos
    two = beam_search(m, np.concatenate([idx, tokens((1, 3), seed=9)]), 8, beam_width=1,
                      eos_token_id=eos)
    assert two.shape[1] > j + 1                                   # the other row ran longer
    np.testing.assert_array_equal(two[0], np.append(greedy[:j + 1], [eos] * (two.shape[1] - j - 1)))
    # with a wide beam, a large length_penalty prefers the longest finished hypothesis
    short = beam_search(m, idx, 8, beam_width=4, eos_token_id=eos, length_penalty=0.0)
    long = beam_search(m, idx, 8, beam_width=4, eos_token_id=eos, length_penalty=5.0)
    n_new = [int(np.argmax(np.append(r[0, 3:], eos) == eos)) for r in (short, long)]
    assert n_new[1] >= n_new[0]
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(m, idx, 3, beam_width=0)


# ------------------------------------------------------------------ learning

def test_tiny_gpt_overfits_a_tiny_batch():
    """30 steps of SGD with momentum 0.9, written out by hand (plain SGD from GPT-2's small
    init needs far more steps)."""
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=32)
    m = GPT(cfg, seed=0)
    idx = tokens((4, 8), 11)
    tg = np.roll(idx, -1, axis=1)
    losses, velocity = [], [np.zeros_like(p.data) for p in m.parameters()]
    for _ in range(30):
        m.zero_grad()
        _, loss = m(idx, tg)
        loss.backward()
        losses.append(loss.item())
        for p, v in zip(m.parameters(), velocity):
            v *= 0.9
            v += p.grad
            p.data -= 0.1 * v
    assert losses[0] > 2.0 and losses[-1] < 0.1 * losses[0], losses
