"""Loading Hugging Face GPT-2 folders (tinyllm.models.hf_gpt2, GPT.from_pretrained, tl.load)
and GPT-2's byte-level BPE tokenizer (tinyllm.data.gpt2_bpe).

Every checkpoint here is built in exactly the HF layout: a tiny tinyllm GPT's weights under
GPT-2's names (with or without "transformer."), the attn.bias / attn.masked_bias buffers,
safetensors' save_file, a config.json, and a vocab.json + merges.txt made from tinyllm's own
BPE merges written through GPT-2's byte-to-unicode map. transformers / tiktoken / regex
comparisons run only where those packages are installed.
"""
import json
import os
import re
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

import tinyllm as tl
from tinyllm import cli
from tinyllm.data import BPETokenizer, GPT2Tokenizer, load_tokenizer
from tinyllm.data.gpt2_bpe import ENDOFTEXT, WHITESPACE, bytes_to_unicode, pretokenize
from tinyllm.models import GPT, GPTConfig
from tinyllm.models.hf_gpt2 import HFCheckpointError, gpt2_tensor_names
from tinyllm.train.checkpoint import CheckpointError

TEXT = ("The quick brown fox jumps over the lazy dog. It's the dog's day; they've said "
        "we'll see, you're sure he'd won 123 of 4567 games!\nAnd then   spaces\n\n and "
        "tabs\tand café, naïve, Ωμέγα.\n") * 8
N_LAYER, N_HEAD, N_EMBD, N_POS = 2, 2, 16, 24
GPT2_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
                r"""|\s+(?!\S)|\s+""")


# ------------------------------------------------------------------ building an HF folder

def _bpe():
    return BPETokenizer.train(TEXT, 300)


def gpt2_vocab_and_merges(bpe: BPETokenizer):
    """tinyllm BPE merges as GPT-2 files: byte tokens first (in bytes_to_unicode's order, as
    GPT-2's vocab.json), then each merge's string, then <|endoftext|>."""
    enc = bytes_to_unicode()

    def s(i):
        return "".join(enc[b] for b in bpe.vocab[i])

    order = ([b for b in range(256) if enc[b] == chr(b)]
             + [b for b in range(256) if enc[b] != chr(b)])
    vocab = {enc[b]: k for k, b in enumerate(order)}
    merges = []
    for a, b in bpe.merges:
        merges.append((s(a), s(b)))
        vocab.setdefault(s(a) + s(b), len(vocab))
    vocab[ENDOFTEXT] = len(vocab)
    return vocab, merges


def write_tokenizer(folder, vocab, merges):
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def source_model(vocab_size, dtype=np.float64, seed=3):
    cfg = GPTConfig(vocab_size=vocab_size, block_size=N_POS, n_layer=N_LAYER, n_head=N_HEAD,
                    n_embd=N_EMBD)
    m = GPT(cfg, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    for name, p in m.named_parameters():          # LayerNorms away from (1, 0), biases != 0
        if ".ln_" in name or "bias" in name:
            p.data[...] += rng.normal(0, 0.3, p.data.shape)
    return m.eval()


def hf_tensors(model, prefix=True, buffers=True, lm_head=False):
    p = "transformer." if prefix else ""
    out = {p + k[len("transformer."):]: np.ascontiguousarray(v, np.float32)
           for k, v in model.state_dict().items()}
    if buffers:
        mask = np.tril(np.ones((N_POS, N_POS), np.float32)).reshape(1, 1, N_POS, N_POS)
        for i in range(model.config.n_layer):
            out[f"{p}h.{i}.attn.bias"] = mask
            out[f"{p}h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    if lm_head:
        out["lm_head.weight"] = out[p + "wte.weight"].copy()
    return out


def write_config(folder, vocab_size, **over):
    cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
           "activation_function": "gelu_new", "n_layer": N_LAYER, "n_head": N_HEAD,
           "n_embd": N_EMBD, "n_positions": N_POS, "n_ctx": N_POS, "vocab_size": vocab_size,
           "layer_norm_epsilon": 1e-5, "n_inner": None, "resid_pdrop": 0.1,
           "embd_pdrop": 0.1, "attn_pdrop": 0.1, "bos_token_id": vocab_size - 1,
           "eos_token_id": vocab_size - 1, "tie_word_embeddings": True}
    cfg.update(over)
    cfg = {k: v for k, v in cfg.items() if v is not ...}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """(folder, source float64 model, vocab, merges) of a complete HF GPT-2 folder."""
    folder = str(tmp_path_factory.mktemp("gpt2"))
    vocab, merges = gpt2_vocab_and_merges(_bpe())
    m = source_model(len(vocab))
    for name, p in m.named_parameters():          # float32-representable, so both agree
        p.data[...] = p.data.astype(np.float32)
    save_file(hf_tensors(m), os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})
    write_config(folder, len(vocab))
    write_tokenizer(folder, vocab, merges)
    return folder, m, vocab, merges


def variant(tmp_path, hf, tensors=None, **config):
    """A copy of the fixture's folder with other tensors and/or config settings."""
    folder, m, vocab, merges = hf
    out = str(tmp_path)
    os.makedirs(out, exist_ok=True)
    if tensors is None:
        tensors = load_file(os.path.join(folder, "model.safetensors"))
    save_file(tensors, os.path.join(out, "model.safetensors"))
    write_config(out, len(vocab), **config)
    write_tokenizer(out, vocab, merges)
    return out


IDX = np.array([[5, 70, 300, 12, 99, 1, 250, 42], [7, 7, 7, 200, 31, 0, 256, 299]])


# ------------------------------------------------------------------ the model

def test_logits_equal_the_source_model(hf):
    folder, src, _, _ = hf
    m = GPT.from_pretrained(folder, dtype=np.float64)
    assert not m.training and m.config.block_size == N_POS and m.config.dropout == 0.0
    np.testing.assert_array_equal(m(IDX)[0].data, src(IDX)[0].data)
    m32 = GPT.from_pretrained(folder)
    assert m32.dtype == np.float32
    np.testing.assert_allclose(m32(IDX)[0].data, src(IDX)[0].data, atol=2e-5)
    # the KV-cache path agrees too
    cache = m.new_kv_cache(2)
    m.prefill(IDX[:, :5], cache)
    np.testing.assert_allclose(m.decode_step(IDX[:, 5], cache), src(IDX[:, :6])[0].data[:, -1],
                               atol=1e-12)


@pytest.mark.parametrize("prefix", [True, False])
@pytest.mark.parametrize("lm_head", [True, False])
def test_names_prefix_buffers_and_tied_head(tmp_path, hf, prefix, lm_head):
    folder, src, _, _ = hf
    out = variant(tmp_path, hf, hf_tensors(src, prefix=prefix, lm_head=lm_head))
    m = GPT.from_pretrained(out, dtype=np.float64)
    sd = m.state_dict()
    assert list(sd) == ["transformer." + n for n in gpt2_tensor_names(m.config)]
    assert not any("lm_head" in k or k.endswith((".attn.bias", "masked_bias")) for k in sd)
    C, V = N_EMBD, m.config.vocab_size
    assert sd["transformer.wte.weight"].shape == (V, C)
    assert sd["transformer.wpe.weight"].shape == (N_POS, C)
    assert sd["transformer.h.1.attn.c_attn.weight"].shape == (C, 3 * C)
    assert sd["transformer.h.1.mlp.c_proj.weight"].shape == (4 * C, C)
    np.testing.assert_array_equal(m(IDX)[0].data, src(IDX)[0].data)


def _gelu_tanh(a):
    return 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a ** 3)))


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def reference_gpt2_logits(t: dict, idx, n_layer, n_head, eps):
    """GPT-2's forward written from its definition over the HF tensors (no tinyllm code):
    Conv1D y = x @ W + b, c_attn -> q | k | v, causal softmax(q k^T / sqrt(hs)), tied head."""
    t = {k.removeprefix("transformer."): v.astype(np.float64) for k, v in t.items()}
    B, T = idx.shape
    x = t["wte.weight"][idx] + t["wpe.weight"][:T]                   # (B, T, C)
    C = x.shape[-1]
    hs = C // n_head
    mask = np.tril(np.ones((T, T), bool))
    for i in range(n_layer):
        def g(name):
            return t[f"h.{i}.{name}"]
        h = _ln(x, g("ln_1.weight"), g("ln_1.bias"), eps)
        qkv = h @ g("attn.c_attn.weight") + g("attn.c_attn.bias")   # (B, T, 3C)
        q, k, v = (qkv[..., j * C:(j + 1) * C].reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)
                   for j in range(3))                                # (B, H, T, hs)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs)
        s = np.where(mask, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        y = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + y @ g("attn.c_proj.weight") + g("attn.c_proj.bias")
        h = _ln(x, g("ln_2.weight"), g("ln_2.bias"), eps)
        h = _gelu_tanh(h @ g("mlp.c_fc.weight") + g("mlp.c_fc.bias"))
        x = x + h @ g("mlp.c_proj.weight") + g("mlp.c_proj.bias")
    x = _ln(x, t["ln_f.weight"], t["ln_f.bias"], eps)
    return x @ t["wte.weight"].T


@pytest.mark.parametrize("eps", [1e-5, 0.3])
def test_logits_equal_an_independent_gpt2_forward(tmp_path, hf, eps):
    """The layout, not just a round trip: GPT-2's equations over the file's tensors; a large
    layer_norm_epsilon shows that the config's eps reaches every LayerNorm."""
    out = variant(tmp_path, hf, layer_norm_epsilon=eps)
    m = GPT.from_pretrained(out, dtype=np.float64)
    ref = reference_gpt2_logits(load_file(os.path.join(out, "model.safetensors")), IDX,
                                N_LAYER, N_HEAD, eps)
    np.testing.assert_allclose(m(IDX)[0].data, ref, rtol=1e-9, atol=1e-9)
    cache = m.new_kv_cache(2)                     # the decode path reads layer.eps too
    m.prefill(IDX[:, :3], cache)
    np.testing.assert_allclose(m.decode_step(IDX[:, 3], cache),
                               reference_gpt2_logits(load_file(os.path.join(
                                   out, "model.safetensors")), IDX[:, :4], N_LAYER, N_HEAD,
                                   eps)[:, -1], rtol=1e-9, atol=1e-9)


def test_missing_tensor_is_named(tmp_path, hf):
    folder, src, _, _ = hf
    t = hf_tensors(src)
    del t["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(HFCheckpointError, match=r"missing tensor h\.1\.mlp\.c_fc\.bias"):
        GPT.from_pretrained(variant(tmp_path, hf, t))


def test_misshapen_tensor_is_named(tmp_path, hf):
    folder, src, _, _ = hf
    t = hf_tensors(src)
    t["transformer.h.0.mlp.c_fc.weight"] = np.zeros((N_EMBD, 60), np.float32)
    with pytest.raises(HFCheckpointError, match=r"h\.0\.mlp\.c_fc\.weight has shape "
                                                r"\(16, 60\), expected \(16, 64\)"):
        GPT.from_pretrained(variant(tmp_path, hf, t))


def test_unexpected_and_duplicate_tensors_are_named(tmp_path, hf):
    folder, src, _, _ = hf
    t = hf_tensors(src)
    t["transformer.h.2.ln_1.weight"] = np.ones(N_EMBD, np.float32)      # a third layer
    with pytest.raises(HFCheckpointError, match=r"unexpected tensor h\.2\.ln_1\.weight"):
        GPT.from_pretrained(variant(tmp_path / "a", hf, t))
    t = hf_tensors(src)
    t["wpe.weight"] = t["transformer.wpe.weight"]
    with pytest.raises(HFCheckpointError, match=r"wpe\.weight is stored twice"):
        GPT.from_pretrained(variant(tmp_path / "b", hf, t))


def test_untied_head_is_refused(tmp_path, hf):
    folder, src, _, _ = hf
    t = hf_tensors(src, lm_head=True)
    t["lm_head.weight"][3, 2] += 1e-3
    with pytest.raises(HFCheckpointError, match=r"lm_head\.weight differs from wte\.weight"):
        GPT.from_pretrained(variant(tmp_path, hf, t))


@pytest.mark.parametrize("setting,value,match", [
    ("activation_function", "gelu", r"activation_function is 'gelu'.*gelu_new"),
    ("activation_function", "relu", r"activation_function is 'relu'"),
    ("n_inner", 20, r"n_inner is 20"),
    ("scale_attn_by_inverse_layer_idx", True, r"scale_attn_by_inverse_layer_idx"),
    ("tie_word_embeddings", False, r"tie_word_embeddings"),
    ("n_embd", ..., r"no n_embd"),
    ("n_head", 3, r"n_embd \(16\) is not divisible by n_head \(3\)"),
    ("layer_norm_epsilon", -1.0, r"layer_norm_epsilon must be a number > 0"),
    ("model_type", "gpt_neo", r"model_type is 'gpt_neo'"),
])
def test_config_settings_tinyllm_cannot_compute_are_refused(tmp_path, hf, setting, value,
                                                            match):
    with pytest.raises(HFCheckpointError, match=r"config\.json: " + match):
        GPT.from_pretrained(variant(tmp_path, hf, **{setting: value}))


def test_n_ctx_stands_in_for_n_positions(tmp_path, hf):
    m = GPT.from_pretrained(variant(tmp_path, hf, n_positions=...))
    assert m.config.block_size == N_POS


def test_truncated_or_corrupt_weights_are_named(tmp_path, hf):
    folder = variant(tmp_path, hf)
    path = os.path.join(folder, "model.safetensors")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:-100])
    with pytest.raises(HFCheckpointError, match=r"truncated: tensor .* ends at byte"):
        GPT.from_pretrained(folder)
    with open(path, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + data[100:])
    with pytest.raises(HFCheckpointError, match=r"header is not JSON"):
        GPT.from_pretrained(folder)
    with open(path, "wb") as f:
        f.write(b"\x01\x02")
    with pytest.raises(HFCheckpointError, match=r"not a safetensors file or is truncated"):
        GPT.from_pretrained(folder)


def test_nan_weight_is_refused(tmp_path, hf):
    folder, src, _, _ = hf
    t = hf_tensors(src)
    t["transformer.ln_f.bias"][1] = np.nan
    with pytest.raises(HFCheckpointError, match=r"ln_f\.bias holds NaN or inf"):
        GPT.from_pretrained(variant(tmp_path, hf, t))


def test_bf16_and_fp16_weights_load(tmp_path, hf):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch
    folder, src, _, _ = hf
    t = {k: torch.from_numpy(v) for k, v in hf_tensors(src).items()}
    for dt, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        low = {k: v.to(dt) for k, v in t.items()}
        out = variant(tmp_path / name, hf)
        save_torch(low, os.path.join(out, "model.safetensors"))
        m = GPT.from_pretrained(out)
        for k, p in m.state_dict().items():
            np.testing.assert_array_equal(p, low[k].float().numpy(), err_msg=k)


# ------------------------------------------------------------------ tl.load and the CLI

def test_tl_load_returns_the_model_and_gpt2_tokenizer(hf):
    folder, src, vocab, _ = hf
    model, tok = tl.load(folder)
    assert isinstance(model, GPT) and isinstance(tok, GPT2Tokenizer)
    assert tok.vocab_size == len(vocab) == model.config.vocab_size
    ids = tok.encode("the lazy dog")
    np.testing.assert_allclose(model(np.array([ids]))[0].data, src(np.array([ids]))[0].data,
                               atol=2e-5)


def test_tl_load_needs_the_tokenizer_files(tmp_path, hf):
    folder = variant(tmp_path, hf)
    os.remove(os.path.join(folder, "merges.txt"))
    with pytest.raises(CheckpointError, match=r"has no merges\.txt"):
        tl.load(folder)


def test_cli_generate_and_eval_run_a_hf_folder(hf, tmp_path, capsys):
    folder, _, _, _ = hf
    assert cli.main(["generate", "--checkpoint", folder, "--prompt", "The dog's",
                     "--max-new-tokens", "6", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The dog's") and len(out) > len("The dog's\n")
    data = tmp_path / "val.txt"
    data.write_text(TEXT[:400], encoding="utf-8")
    assert cli.main(["eval", "--checkpoint", folder, "--data", str(data),
                     "--windows", "4"]) == 0
    assert "loss" in capsys.readouterr().out


def test_cli_refuses_a_broken_hf_folder_with_exit_1(tmp_path, hf, capsys):
    folder, src, _, _ = hf
    t = hf_tensors(src)
    del t["transformer.wpe.weight"]
    out = variant(tmp_path, hf, t)
    assert cli.main(["generate", "--checkpoint", out, "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert "missing tensor wpe.weight" in err and "Traceback" not in err


# ------------------------------------------------------------------ the tokenizer

def test_byte_to_unicode_map():
    enc = bytes_to_unicode()
    assert sorted(enc) == list(range(256)) and len(set(enc.values())) == 256
    assert all(ch.isprintable() and ch not in WHITESPACE and not ch.isspace()
               for ch in enc.values())
    assert enc[ord(" ")] == "Ġ" and enc[ord("\n")] == "Ċ" and enc[0] == "Ā"
    assert enc[ord("A")] == "A" and enc[0xe9] == "é" and enc[0xad] == "Ń"
    assert sum(enc[b] == chr(b) for b in range(256)) == 188


@pytest.mark.parametrize("text,pieces", [
    ("Hello world", ["Hello", " world"]),
    ("I'm can't we'll they've you're he'd it's",
     ["I", "'m", " can", "'t", " we", "'ll", " they", "'ve", " you", "'re", " he", "'d",
      " it", "'s"]),
    ("'S x 's", ["'", "S", " x", " '", "s"]),                   # case-sensitive; " '" + s
    ("a  b", ["a", " ", " b"]),                                 # last space starts the word
    ("a   \n\nb", ["a", "   \n", "\n", "b"]),
    ("hi  ", ["hi", "  "]),                                     # trailing run kept whole
    ("\n\n\n", ["\n\n\n"]),
    ("a\tb", ["a", "\t", "b"]),
    ("  \tb", ["  ", "\t", "b"]),
    ("abc 123456 x1", ["abc", " 123456", " x", "1"]),           # digits stay one run
    ("Hello, world!!! x ... y", ["Hello", ",", " world", "!!!", " x", " ...", " y"]),
    ("café naïve Ωμέγα 日本語", ["café", " naïve", " Ωμέγα", " 日本語"]),
    ("x²½ Ⅻ", ["x", "²½", " Ⅻ"]),                              # \p{N}: No and Nl too
    ("e\u0301", ["e", "\u0301"]),                               # a combining mark is "other"
    ("\xa0x", ["\xa0", "x"]),                                   # NBSP is \s, not " "
    ("a\x1cb", ["a", "\x1c", "b"]),                             # isspace() but not \s
    ("a\x1c\x1cb", ["a", "\x1c\x1c", "b"]),
    ("x\xa0\xa0y", ["x", "\xa0", "\xa0", "y"]),
    ("x1,5% ²!", ["x", "1", ",", "5", "%", " ²", "!"]),          # numbers apart from symbols
    ("snake_case", ["snake", "_", "case"]),
    ("", []),
])
def test_pretokenize_edge_cases(text, pieces):
    assert pretokenize(text) == pieces


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_pretokenize_pieces_join_to_the_text(text):
    assert "".join(pretokenize(text)) == text


def _ranges(pred) -> str:
    """A regex character-class body for every code point where ``pred`` holds."""
    out, start = [], None
    for cp in range(0x110000 + 1):
        hit = cp < 0x110000 and pred(chr(cp))
        if hit and start is None:
            start = cp
        elif not hit and start is not None:
            out.append(re.escape(chr(start)) + ("" if cp - 1 == start
                                                else "-" + re.escape(chr(cp - 1))))
            start = None
    return "".join(out)


@pytest.fixture(scope="module")
def stdlib_gpt2_regex():
    """GPT-2's pattern in stdlib ``re``, with \\p{L}, \\p{N} and \\s spelled out as explicit
    code-point classes: an oracle for the hand-written scanner that shares none of its
    logic (``re`` does the alternation and backtracking)."""
    L = _ranges(lambda c: unicodedata.category(c)[0] == "L")
    N = _ranges(lambda c: unicodedata.category(c)[0] == "N")
    S = "".join(re.escape(c) for c in sorted(WHITESPACE))
    return re.compile(rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+"""
                      rf"""|[{S}]+(?![^{S}])|[{S}]+""")


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.sampled_from("ab é1²Ⅻ'sdtlvmr \t\n\xa0\x1c\u2028,.!_Ω\u0301"))
       | st.text())
def test_pretokenize_matches_a_stdlib_regex(stdlib_gpt2_regex, text):
    assert pretokenize(text) == stdlib_gpt2_regex.findall(text)


def test_pretokenize_matches_the_regex_module():
    regex = pytest.importorskip("regex")
    pat = regex.compile(GPT2_PATTERN)

    @settings(max_examples=300, deadline=None)
    @given(st.text(st.sampled_from("ab é1²'sdtlvmr \t\n\xa0\x1c,.!_Ω")) | st.text())
    def check(text):
        assert pretokenize(text) == pat.findall(text)
    check()


@pytest.fixture(scope="module")
def tok(hf):
    return GPT2Tokenizer.from_dir(hf[0])


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_round_trip_on_arbitrary_text(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_round_trip_edge_cases(tok):
    for text in ["", " ", "\n", "\x00\xff\ud800 lone surrogate", "日本語 🙂 👩‍👩‍👧",
                 "it's   \n\n ok", TEXT]:
        assert tok.decode(tok.encode(text)) == text, text


def test_merges_apply_like_tinyllms_bpe(tok):
    """Where the two pre-tokenisations agree (ASCII without '_'), GPT2Tokenizer over the
    converted merges gives the same tokens as the BPETokenizer they came from."""
    bpe = _bpe()
    for text in [TEXT.encode("ascii", "ignore").decode(), "the dogs' days, it's 12345 ok"]:
        a = [tok.token_bytes(i) for i in tok.encode(text)]
        b = [bpe.token_bytes(i) for i in bpe.encode(text)]
        assert a == b
    assert len(tok.encode(TEXT)) < 0.7 * len(TEXT.encode())    # the merges do merge


def test_decode_of_arbitrary_ids_replaces_bad_utf8(tok):
    enc = bytes_to_unicode()
    i_ff, i_c3 = tok.vocab[enc[0xff]], tok.vocab[enc[0xc3]]
    assert tok.decode([i_ff]) == "\ufffd"
    assert tok.decode([i_c3, tok.vocab[enc[0xa9]]]) == "é"
    rng = np.random.default_rng(0)
    s = tok.decode(rng.integers(0, tok.vocab_size, 500))
    assert isinstance(s, str) and len(s) > 0
    with pytest.raises(ValueError, match=r"outside \[0, "):
        tok.decode([tok.vocab_size])


def test_endoftext(tok):
    eot = tok.eot_token
    assert eot == tok.vocab_size - 1 and tok.special_tokens == [ENDOFTEXT]
    ids = tok.encode(f"the dog{ENDOFTEXT}a fox")
    assert ids.count(eot) == 1
    assert ids == tok.encode("the dog") + [eot] + tok.encode("a fox")
    assert tok.decode(ids) == f"the dog{ENDOFTEXT}a fox"
    assert eot not in tok.encode(ENDOFTEXT, special=False)
    assert tok.decode(tok.encode(ENDOFTEXT, special=False)) == ENDOFTEXT
    assert tok.token_bytes(eot) == ENDOFTEXT.encode()


def test_to_dict_round_trip(tok, tmp_path):
    again = load_tokenizer(tok.to_dict())
    assert isinstance(again, GPT2Tokenizer) and again.vocab == tok.vocab
    assert again.encode(TEXT) == tok.encode(TEXT)
    tok.save(tmp_path / "t.json")
    assert GPT2Tokenizer.load(tmp_path / "t.json").merges == tok.merges


def test_bad_tokenizer_files_are_named(tmp_path, hf):
    folder, _, vocab, merges = hf
    write_tokenizer(tmp_path, vocab, merges)
    with open(tmp_path / "merges.txt", "a", encoding="utf-8") as f:
        f.write("a b c\n")
    with pytest.raises(ValueError, match=rf"merges\.txt line {len(merges) + 2} is 'a b c'"):
        GPT2Tokenizer.from_dir(tmp_path)
    write_tokenizer(tmp_path, vocab, merges + [("Ġq", "zz")])
    with pytest.raises(ValueError, match=r"merge \d+ \('Ġq' 'zz'\) makes 'Ġqzz', which is not"):
        GPT2Tokenizer.from_dir(tmp_path)
    small = {k: v for k, v in vocab.items() if v < 200}
    write_tokenizer(tmp_path, small, [])
    with pytest.raises(ValueError, match=r"lacks 56 of the 256 single-byte tokens"):
        GPT2Tokenizer.from_dir(tmp_path)


# ------------------------------------------------------------------ optional references

def test_logits_match_transformers_gpt2(hf):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    folder, src, _, _ = hf
    ref = transformers.GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float64)
    ref.eval()
    with torch.no_grad():
        want = ref(torch.from_numpy(IDX)).logits.numpy()
    got = GPT.from_pretrained(folder, dtype=np.float64)(IDX)[0].data
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_encodings_match_tiktoken(tok):
    tiktoken = pytest.importorskip("tiktoken")
    dec = tok.byte_decoder
    ranks = {bytes(dec[c] for c in t): i for t, i in tok.vocab.items() if t != ENDOFTEXT}
    enc = tiktoken.Encoding("tiny-gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={ENDOFTEXT: tok.eot_token})

    @settings(max_examples=200, deadline=None)
    @given(st.text(st.characters(blacklist_categories=("Cs",))))
    def check(text):
        assert tok.encode(text, special=False) == enc.encode_ordinary(text)
    check()
    assert tok.encode(TEXT) == enc.encode(TEXT)
