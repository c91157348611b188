"""Speculative decoding (tinyllm.infer.speculative) and the chunked prefill it verifies with
(GPT.extend / truncate, CausalSelfAttention with several new positions after a filled cache).

The random models here have weights of std 1 (0.5 for the token table) so that their greedy
output wanders over the vocabulary instead of repeating one token, and float64 so that the
chunked and one-token forwards cannot disagree on an argmax by rounding."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm.infer import (PromptLookupDraft, accept_draft_token, expected_tokens_per_round,
                           predicted_speedup, speculative_decode)
from tinyllm.infer.speculative import _length_after, filtered_probs
from tinyllm.models.gpt import GPT, GPTConfig
from tinyllm.nn import CausalSelfAttention

V = 13


def rand_gpt(seed, n_layer=2, n_embd=32, block_size=16, vocab=V, std=1.0, wte_std=0.5):
    cfg = GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=n_layer, n_head=2,
                    n_embd=n_embd)
    m = GPT(cfg, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1000)
    for name, p in m.named_parameters():
        if ".ln_" not in name and not name.startswith("transformer.ln_f"):
            p.data[...] = rng.standard_normal(p.data.shape) * (
                wte_std if "wte" in name else std)
    return m.eval()


def noisy_copy(model, seed, noise=0.3):
    """A draft that agrees with the target often but not always."""
    m = rand_gpt(0)
    rng = np.random.default_rng(seed)
    src = dict(model.named_parameters())
    for name, p in m.named_parameters():
        p.data[...] = src[name].data + noise * rng.standard_normal(p.data.shape) * (
            0.5 if "wte" in name else 1.0) * (".ln_" not in name)
    return m


@pytest.fixture(scope="module")
def target():
    return rand_gpt(5)


def token_by_token(model, toks, cache=None):
    """Logits (B, T, V) after each token of toks (B, T), fed one decode_step at a time."""
    cache = model.new_kv_cache(toks.shape[0]) if cache is None else cache
    return np.stack([model.decode_step(toks[:, t], cache) for t in range(toks.shape[1])], 1)


# ------------------------------------------------------------------ chunked prefill

@pytest.mark.parametrize("chunk", [2, 3, 5])
@pytest.mark.parametrize("start", [1, 4, 9])
def test_extend_equals_token_by_token(target, chunk, start):
    """Chunks of 2..5 tokens after prompts of 1..9, batch 3, 40 tokens through a 16-token
    window (so re-prefills happen inside chunks): every position's logits agree."""
    toks = np.random.default_rng(chunk * 10 + start).integers(0, V, (3, 40))
    ref = token_by_token(target, toks)
    cache = target.new_kv_cache(3)
    target.prefill(toks[:, :start], cache)
    got = [None] * start
    i = start
    while i < 40:
        got.append(target.extend(toks[:, i:i + chunk], cache))
        i += chunk
    got = np.concatenate(got[start:], axis=1)
    np.testing.assert_allclose(got, ref[:, start:], rtol=0, atol=1e-9)
    assert cache.refills > 0 and cache.length == target.new_kv_cache(3).max_len


def test_extend_with_a_smaller_keep(target):
    """keep = 9 of 16: a full cache re-prefills 9 tokens; extend follows the same rule."""
    toks = np.random.default_rng(5).integers(0, V, (2, 50))
    ref = token_by_token(target, toks, target.new_kv_cache(2, keep=9))
    cache = target.new_kv_cache(2, keep=9)
    got = np.concatenate([target.extend(toks[:, i:i + 4], cache) for i in range(0, 50, 4)], 1)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


def test_cached_attention_chunk_equals_full_causal_attention():
    """The layer itself (the Tensor path, float32): P cached positions then T new ones give
    rows P..P+T-1 of causal attention over all P + T."""
    cfg = GPTConfig(vocab_size=5, block_size=16, n_layer=1, n_head=2, n_embd=8)
    attn = CausalSelfAttention(cfg, rng=3, std=0.5)
    x = np.random.default_rng(0).standard_normal((2, 11, 8)).astype(np.float32)
    with tl.no_grad():
        full = attn(tl.tensor(x)).data
        kb = np.zeros((2, 2, 16, 4), np.float32)
        vb = np.zeros_like(kb)
        attn(tl.tensor(x[:, :6]), (kb, vb, 0))
        part = attn(tl.tensor(x[:, 6:]), (kb, vb, 6)).data
    np.testing.assert_allclose(part, full[:, 6:], rtol=1e-5, atol=1e-6)


def test_extend_tensor_and_array_paths_agree(target):
    toks = np.random.default_rng(2).integers(0, V, (2, 12))
    out = []
    for arrays in (True, False):
        cache = target.new_kv_cache(2)
        target.prefill(toks[:, :5], cache)
        out.append(target._fill(toks[:, 5:], cache, 5, arrays=arrays))
    np.testing.assert_allclose(out[0], out[1], rtol=0, atol=1e-10)


def test_truncate_then_extend_equals_never_going_further(target):
    rng = np.random.default_rng(3)
    toks, other = rng.integers(0, V, (2, 12)), rng.integers(0, V, (2, 4))
    cache = target.new_kv_cache(2)
    target.prefill(toks[:, :6], cache)
    target.extend(toks[:, 6:12], cache)                # 6 more, then forget 4 of them
    target.truncate(cache, 8)
    assert cache.length == 8
    got = target.extend(other, cache)
    fresh = target.new_kv_cache(2)
    target.prefill(toks[:, :8], fresh)
    want = target.extend(other, fresh)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    np.testing.assert_allclose(target.decode_step(toks[:, 0], cache),
                               target.decode_step(toks[:, 0], fresh), rtol=0, atol=1e-10)


def test_truncate_refuses_bad_lengths(target):
    cache = target.new_kv_cache(1)
    target.prefill(np.array([[1, 2, 3]]), cache)
    for bad in (-1, 4, 2.0, True):
        with pytest.raises(ValueError, match="KVCache.truncate: length"):
            cache.truncate(bad)


def test_length_after_follows_decode_step():
    m = rand_gpt(4, n_layer=1, n_embd=8)
    for keep in (15, 9, 0):
        cache = m.new_kv_cache(1, keep=keep)
        lengths = []
        for t in range(40):
            m.decode_step(np.array([t % V]), cache)
            lengths.append(cache.length)
        assert lengths == [_length_after(0, t + 1, 16, keep) for t in range(40)]


# ------------------------------------------------------------------ greedy is exact

@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_greedy_speculative_equals_plain_greedy(target, k):
    """A different random model and a noisy copy of the target as drafts; prompts of 5 and
    20 tokens (longer than the 16-token window) and 32 new tokens: past block_size, so both
    caches re-prefill and roll-backs cross re-prefills."""
    drafts = [rand_gpt(7, n_layer=1, n_embd=16, block_size=12), noisy_copy(target, k)]
    for T in (5, 20):
        idx = np.random.default_rng(T + k).integers(0, V, (1, T))
        ref = tl.infer.generate(target, idx, 32, temperature=0)
        assert len(set(ref[0, T:].tolist())) >= 4             # not one token repeated
        for d in drafts:
            out, st = speculative_decode(target, d, idx, 32, k=k)
            np.testing.assert_array_equal(out, ref)
            assert st.rounds == st.target_calls and st.accepted <= st.proposed
            assert st.new_tokens == 32 == st.accepted + st.rounds
            assert st.tokens_per_target_call == pytest.approx(32 / st.target_calls)
    assert 0 < st.acceptance_rate < 1 and st.rejections > 0     # the copy: some of each


def test_greedy_draft_equal_to_target_accepts_everything(target):
    idx = np.array([[1, 2, 3]])
    out, st = speculative_decode(target, target, idx, 30, k=4)
    np.testing.assert_array_equal(out, tl.infer.generate(target, idx, 30, temperature=0))
    assert st.acceptance_rate == 1.0 and st.rejections == 0
    assert st.target_calls == 6 and st.tokens_per_target_call == 5.0
    assert st.draft_calls == 6 * 4


@pytest.mark.parametrize("k", [2, 5])
def test_prompt_lookup_greedy_exact(target, k):
    idx = np.tile(np.random.default_rng(1).integers(0, V, 6), 3)[None]   # repeats itself
    ref = tl.infer.generate(target, idx, 40, temperature=0)
    out, st = speculative_decode(target, PromptLookupDraft(ngram=3), idx, 40, k=k)
    np.testing.assert_array_equal(out, ref)
    assert st.draft_calls == 0 and st.proposed > 0


def test_prompt_lookup_finds_the_last_earlier_occurrence():
    d = PromptLookupDraft(ngram=3)
    ctx = np.array([5, 1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 4, 1, 2, 3])
    np.testing.assert_array_equal(d.lookup(ctx, 3), [7, 8, 4])       # the later match wins
    # k = 10: the last occurrence has 6 tokens after it, the one before has 10
    np.testing.assert_array_equal(d.lookup(ctx, 10), [9, 9, 1, 2, 3, 7, 8, 4, 1, 2])
    # inside a run no occurrence has k tokens after it: the earliest, the longest
    np.testing.assert_array_equal(d.lookup(np.array([4, 0, 0, 0, 0, 0]), 3), [0, 0])
    np.testing.assert_array_equal(d.lookup(np.array([4, 6, 0, 6]), 2), [0, 6])  # 1-gram
    assert d.lookup(np.array([1, 2, 3, 4]), 3).size == 0                   # nothing matches
    assert PromptLookupDraft(3, min_ngram=2).lookup(np.array([4, 6, 0, 6]), 2).size == 0


# ------------------------------------------------------------------ the sampling rule

def tv(a, b):
    return 0.5 * np.abs(np.asarray(a) - np.asarray(b)).sum()


P = np.array([0.40, 0.25, 0.15, 0.12, 0.08, 0.0])
Q = np.array([0.05, 0.10, 0.20, 0.05, 0.30, 0.30])     # puts mass where p has none


def emitted(rule, p, q, n, seed):
    """The distribution of the token that one speculative position emits, x ~ q (or the
    fixed token 2 for a deterministic draft, q None), over n draws."""
    rng = np.random.default_rng(seed)
    xs = rng.choice(len(p), size=n, p=q) if q is not None else np.full(n, 2)
    counts = np.zeros(len(p))
    for x in xs:
        counts[rule(p, q, int(x), rng)[1]] += 1
    return counts / n


def accept_always(p, q, x, rng):
    return True, x


def resample_from_p(p, q, x, rng):        # a wrong rule: rejection draws from p, not p - q
    if rng.random() * q[x] < p[x]:
        return True, x
    return False, int(rng.choice(len(p), p=p))


@pytest.mark.parametrize("q", [Q, None], ids=["draft-q", "deterministic"])
def test_acceptance_rule_leaves_p_unchanged(q):
    """TV(emitted, p) <= 0.02 over 40000 draws (the noise is about 0.004), while the wrong
    rules fail the same test."""
    assert tv(emitted(accept_draft_token, P, q, 40000, 0), P) <= 0.02
    assert tv(emitted(accept_always, P, q, 40000, 0), P) > 0.2
    if q is not None:
        assert tv(emitted(resample_from_p, P, q, 40000, 0), P) > 0.05


def test_acceptance_rule_at_equal_p_and_q_always_accepts():
    rng = np.random.default_rng(0)
    assert all(accept_draft_token(Q, Q, x, rng) == (True, x) for x in range(6))
    with pytest.raises(ValueError, match="q\\(x\\) = 0"):
        accept_draft_token(P, P, 5, rng)


@pytest.mark.slow
def test_sampled_first_token_follows_the_target():
    """End to end: 2 new tokens with k = 1 (the first is the accepted draft token or the
    resampled one) from a 5-token vocabulary, 3000 seeds, with top-k 4 filtering; the first
    token's distribution is the target's filtered p (TV noise about 0.015 here), and far
    from the draft's q."""
    tg = rand_gpt(11, n_layer=1, n_embd=16, vocab=5, wte_std=1.0)
    dr = rand_gpt(12, n_layer=1, n_embd=16, vocab=5, wte_std=1.0)
    idx = np.array([[1, 3, 0, 2]])
    kw = dict(temperature=0.9, top_k=4)
    p = filtered_probs(tg.prefill(idx, tg.new_kv_cache(1)), **kw)[0]
    q = filtered_probs(dr.prefill(idx, dr.new_kv_cache(1)), **kw)[0]
    assert tv(p, q) > 0.2
    counts = np.zeros(5)
    for s in range(3000):
        out, _ = speculative_decode(tg, dr, idx, 2, k=1, seed=s, **kw)
        counts[out[0, 4]] += 1
    assert tv(counts / 3000, p) <= 0.045


def test_sampling_with_prompt_lookup_runs(target):
    idx = np.tile(np.arange(5), 4)[None]
    out, st = speculative_decode(target, PromptLookupDraft(), idx, 30, k=3, temperature=1.0,
                                 top_p=0.9, seed=0)
    assert out.shape == (1, 50) and st.new_tokens == 30 and st.proposed > 0
    out2, _ = speculative_decode(target, PromptLookupDraft(), idx, 30, k=3, temperature=1.0,
                                 top_p=0.9, seed=0)
    np.testing.assert_array_equal(out, out2)                    # a seed fixes the output


# ------------------------------------------------------------------ cost model, errors

def test_cost_model():
    assert expected_tokens_per_round(0.5, 4) == pytest.approx(1.9375)
    assert expected_tokens_per_round(1.0, 4) == 5.0
    assert expected_tokens_per_round(0.0, 4) == 1.0
    # 1.9375 tokens a round for 4 draft steps of 1 and a verify of 3, against 4 a token
    assert predicted_speedup(0.5, 4, 4.0, 1.0, 3.0) == pytest.approx(1.9375 * 4 / 7)
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens_per_round(1.5, 2)
    with pytest.raises(ValueError, match="t_verify"):
        predicted_speedup(0.5, 4, 1.0, 1.0, -1.0)


def test_bad_input(target):
    idx = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match="batch size must be 1"):
        speculative_decode(target, target, np.zeros((2, 3), np.int64), 4)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        speculative_decode(target, target, idx, 4, k=0)
    with pytest.raises(ValueError, match="vocab_size \\(7\\) differs"):
        speculative_decode(target, rand_gpt(3, vocab=7), idx, 4)
    with pytest.raises(TypeError, match="draft must be a GPT"):
        speculative_decode(target, object(), idx, 4)
    with pytest.raises(ValueError, match="temperature"):
        speculative_decode(target, target, idx, 4, temperature=-1.0)
    with pytest.raises(ValueError, match="token ids"):
        speculative_decode(target, target, np.array([[V]]), 4)
    with pytest.raises(ValueError, match="ngram"):
        PromptLookupDraft(ngram=0)
    out, st = speculative_decode(target, target, np.array([1, 2]), 0)
    assert out.tolist() == [1, 2] and st.rounds == 0              # 1-D in, 1-D out


# ------------------------------------------------------------------ the command line

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Checkpoints written by tl.save (no training: the tests need tokens, not quality): a
    target over the tiny runs' text, a smaller draft over the same tokenizer, and a draft
    over another text (a different vocabulary)."""
    from _tiny_runs import TEXT
    from tinyllm.data import CharTokenizer
    d = tmp_path_factory.mktemp("spec")
    tok = CharTokenizer(TEXT)
    cfg = dict(vocab_size=tok.vocab_size, block_size=32, n_head=2)
    tl.save(GPT(GPTConfig(n_layer=2, n_embd=32, **cfg), seed=1), str(d / "target"), tok)
    tl.save(GPT(GPTConfig(n_layer=1, n_embd=16, **cfg), seed=2), str(d / "draft"), tok)
    other = CharTokenizer("0123456789 xyz")
    tl.save(GPT(GPTConfig(vocab_size=other.vocab_size, block_size=32, n_layer=1, n_head=2,
                          n_embd=16)), str(d / "other"), other)
    return d / "target", d / "draft", d / "other"


def _cli(capsys, *argv):
    from tinyllm import cli
    code = cli.main(["generate", *argv])
    return code, capsys.readouterr()


def test_cli_speculative_with_a_draft_and_prompt_lookup(runs, capsys):
    run, draft, _ = runs
    base = ["--checkpoint", str(run), "--prompt", "it was the", "--max-new-tokens", "40",
            "--temperature", "0"]
    code, cap = _cli(capsys, *base, "--draft", str(run), "--k", "3")   # itself: all accepted
    assert code == 0, cap.err
    lines = cap.out.strip().splitlines()
    assert lines[0].startswith("it was the")
    assert "acceptance 100.0%" in lines[-2] and "k=3" in lines[-2]
    assert "4.00 tokens per target call" in lines[-2]        # 40 tokens, 10 rounds of 3 + 1
    assert lines[-1].startswith("speed-up ") and "identical to plain decoding: yes" in lines[-1]
    code, cap = _cli(capsys, *base, "--draft", str(draft))
    assert code == 0, cap.err
    assert "k=4" in cap.out and "identical to plain decoding: yes" in cap.out
    code, cap = _cli(capsys, *base, "--prompt-lookup")
    assert code == 0, cap.err
    assert "prompt lookup (3-gram), k=4" in cap.out and "identical to plain decoding: yes" \
        in cap.out
    code, cap = _cli(capsys, "--checkpoint", str(run), "--prompt", "it was", "--prompt-lookup",
                     "2", "--k", "2", "--max-new-tokens", "10", "--temperature", "0.8")
    assert code == 0 and "the target's distribution" in cap.out


@pytest.mark.parametrize("extra, message", [
    (["--draft", "DRAFT", "--k", "0"], "--k must be at least 1"),
    (["--draft", "DRAFT", "--prompt-lookup"], "give one of them"),
    (["--k", "2"], "needs --draft or --prompt-lookup"),
    (["--prompt-lookup", "0"], "--prompt-lookup N must be at least 1"),
    (["--draft", "OTHER"], "--draft: its vocabulary has"),
    (["--draft", "DRAFT", "--beam", "2"], "decodes one sample"),
    (["--draft", "NOWHERE"], "--draft"),
])
def test_cli_speculative_bad_input(runs, capsys, extra, message):
    run, draft, other = runs
    names = {"DRAFT": str(draft), "OTHER": str(other), "NOWHERE": str(draft) + "-missing"}
    code, cap = _cli(capsys, "--checkpoint", str(run), "--prompt", "it was",
                     *[names.get(e, e) for e in extra])
    assert code == 2
    assert message in cap.err and len(cap.err.strip().splitlines()) == 1


@pytest.mark.parametrize("keep_embeddings", [True, False])
def test_extend_on_a_quantised_model(keep_embeddings):
    """int8 weights (and the tied table too): the chunk path runs the quantised kernels."""
    from tinyllm.compress import compress
    base = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32), seed=3)
    q = compress(base, "int8", keep_embeddings=keep_embeddings)
    toks = np.random.default_rng(8).integers(0, V, (2, 20))
    ref = token_by_token(q, toks)
    cache = q.new_kv_cache(2)
    got = np.concatenate([q.extend(toks[:, i:i + 3], cache) for i in range(0, 20, 3)], 1)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    out, _ = speculative_decode(q, PromptLookupDraft(), toks[:1, :6], 12, k=3)
    np.testing.assert_array_equal(out, tl.infer.generate(q, toks[:1, :6], 12, temperature=0))


def test_extend_and_speculation_on_a_structurally_pruned_target(target):
    # per-layer head counts and MLP widths (tinyllm.compress.prune.shrink) go through the
    # chunked prefill and the speculative loop as they go through decode_step
    from tinyllm.compress.prune import shrink
    small = shrink(target, keep_hidden=[[0, 3, 5, 9, 17], list(range(0, 128, 3))],
                   keep_heads=[[1], [0, 1]]).eval()
    toks = np.random.default_rng(3).integers(0, V, (2, 30))
    ref = token_by_token(small, toks)
    cache = small.new_kv_cache(2)
    small.prefill(toks[:, :4], cache)
    got = np.concatenate([small.extend(toks[:, i:i + 3], cache) for i in range(4, 30, 3)], 1)
    np.testing.assert_allclose(got, ref[:, 4:], rtol=0, atol=1e-9)
    prompt = toks[:1, :6]
    plain = tl.generate(small, prompt, 24, temperature=0.0)
    spec, st = speculative_decode(small, noisy_copy(target, 7), prompt, 24, k=3)
    np.testing.assert_array_equal(spec, plain)
    assert st.accepted < st.proposed                         # the draft is not the target
