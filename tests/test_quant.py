"""Weight quantisation: the array helpers (error bounds, ties to even, the packed int4 bytes),
the qmatmul kernels against an independent oracle, QuantLinear / QuantEmbedding, a quantised
GPT (logits near fp32, cached and recomputed greedy decoding agreeing), quantised checkpoints
(bitwise round trip, corrupt files refused) and ``tinyllm compress``."""
import json
import os

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import cli, kernels
from tinyllm.compress import METHODS, compress, quantised_arrays, save_compressed
from tinyllm.data import CharTokenizer
from tinyllm.errors import ShapeError
from tinyllm.kernels import qmatmul as Q
from tinyllm.models import GPT, GPTConfig
from tinyllm.nn import QuantEmbedding, QuantLinear, quantize_model
from tinyllm.nn.quant import SCHEMES, model_nbytes
from tinyllm.train.checkpoint import CheckpointError
from tinyllm.train.runs import load_model

SCHEME_LIST = [(8, "tensor"), (8, "channel"), (8, "group"), (4, "tensor"), (4, "channel"),
               (4, "group")]


def _w(n_in, n_out, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n_in, n_out)).astype(dtype)


# ---------------------------------------------------------------- array helpers

@pytest.mark.parametrize("bits,gran", SCHEME_LIST)
@pytest.mark.parametrize("shape,group", [((70, 9), 32), ((33, 5), 32), ((1, 4), 32),
                                         ((45, 3), 16), ((13, 2), 5)])
def test_round_trip_within_half_a_step(bits, gran, shape, group):
    w = _w(*shape)
    w[:, 0] = 0.0                                    # an all-zero column: scale 1, codes 0
    q, s = Q.quantize(w, bits, gran, group)
    assert q.dtype == np.int8 and q.shape == w.shape and s.dtype == w.dtype
    assert s.shape == Q.scales_shape(*shape, gran, group)
    assert np.abs(q).max() <= Q.qmax(bits) and (s > 0).all()
    deq = Q.dequantize(Q.pack(q, bits), s, bits, gran, group, shape[0])
    step = np.broadcast_to(Q._row_scales(s, shape[0], gran, group), w.shape)
    assert (np.abs(w - deq) <= step / 2 * (1 + 1e-6)).all()        # |w - Q s| <= s / 2
    if gran == "channel":
        assert (q[:, 0] == 0).all() and s[0, 0] == 1.0
        # each column's largest magnitude lands on +-qmax exactly
        assert abs(q[np.argmax(np.abs(w[:, 1])), 1]) == Q.qmax(bits)


def test_group_scales_are_per_group_of_input_rows():
    w = np.ones((5, 2), np.float32)
    w[3:, 1] = 7.0                                   # rows 3, 4 form group 1 (group = 3)
    q, s = Q.quantize(w, 4, "group", 3)
    np.testing.assert_array_equal(s, np.array([[1 / 7, 1 / 7], [1 / 7, 1.0]], np.float32))
    np.testing.assert_array_equal(q[:, 1], [7, 7, 7, 7, 7])


def test_rint_rounds_ties_to_even():
    # a tensor scale of exactly 1 (max 127): w / s are the ties themselves
    w = np.array([[127.0], [0.5], [1.5], [2.5], [-0.5], [-2.5], [3.5], [-126.5]], np.float32)
    q, s = Q.quantize(w, 8, "tensor")
    assert s[0, 0] == 1.0
    np.testing.assert_array_equal(q[:, 0], [127, 0, 2, 2, 0, -2, 4, -126])


def test_packed_int4_layout_by_hand():
    q = np.array([[-7, 1], [3, -1], [0, 7]], np.int8)           # in = 3 (odd), out = 2
    p = Q.pack_int4(q)
    # byte (r, j) = (Q[2r, j] + 8) | (Q[2r+1, j] + 8) << 4; the missing row 3 is Q = 0 -> 8
    want = np.array([[(1 | 11 << 4), (9 | 7 << 4)], [(8 | 8 << 4), (15 | 8 << 4)]], np.uint8)
    np.testing.assert_array_equal(p, want)
    assert p.tolist() == [[0xB1, 0x79], [0x88, 0x8F]]
    np.testing.assert_array_equal(Q.unpack_int4(p, 3), q)
    with pytest.raises(ValueError, match="pack_int4"):
        Q.pack_int4(np.array([[9]], np.int8))


def test_bad_quantize_input_is_named():
    with pytest.raises(ValueError, match="bits"):
        Q.quantize(_w(4, 4), 3, "channel")
    with pytest.raises(ValueError, match="granularity"):
        Q.quantize(_w(4, 4), 8, "row")
    with pytest.raises(ValueError, match="group"):
        Q.quantize(_w(4, 4), 8, "group", 0)
    with pytest.raises(ValueError, match="NaN"):
        Q.quantize(np.full((2, 2), np.nan, np.float32), 8, "channel")
    with pytest.raises(TypeError, match="quantize"):
        Q.quantize(np.ones((2, 2), np.int32), 8, "channel")


# ---------------------------------------------------------------- the kernels

def _oracle(x, q, s, gran, group):
    """float64 loops: y[n, j] = sum_k x[n, k] Q[k, j] s[g(k), j], written out directly."""
    N, n_in = x.shape
    out = np.zeros((N, q.shape[1]))
    for k in range(n_in):
        g = k // group if gran == "group" else 0
        srow = s[g] if gran != "tensor" else np.full(q.shape[1], s[0, 0])
        out += np.outer(x[:, k].astype(np.float64), q[k].astype(np.float64) * srow)
    return out


KERNEL_SIZES = [(1, 33, 17, 32), (3, 33, 17, 32), (1, 1, 5, 32), (2, 45, 31, 16),
                (1, 1030, 1021, 32), (4, 515, 517, 32), (1, 13, 9, 5)]


@pytest.mark.parametrize("par", [True, False])
@pytest.mark.parametrize("full_w", [4096, 16])        # one-row: whole rows, or column blocks
@pytest.mark.parametrize("bits,gran", [(8, "channel"), (4, "group"), (4, "tensor")])
@pytest.mark.parametrize("N,n_in,n_out,group", [(1, 301, 1030, 32), (5, 45, 300, 16),
                                                (1, 70, 33, 32), (1, 6, 40, 32)])
def test_parallel_paths_against_the_oracle(monkeypatch, par, full_w, bits, gran, N, n_in,
                                           n_out, group):
    limit = 1 if par else 1 << 60                       # every call takes the prange loops
    monkeypatch.setattr(Q, "_PARALLEL", limit)          # (or none does), whatever Numba's
    monkeypatch.setattr(Q, "_PARALLEL_CHEAP", limit)    # layer
    monkeypatch.setattr(Q, "_FULL_W", full_w)
    w = _w(n_in, n_out, 5)
    q, s = Q.quantize(w, bits, gran, group)
    x = np.random.default_rng(6).standard_normal((N, n_in)).astype(np.float32)
    y, _ = Q.forward_numba(x, Q.pack(q, bits), s, bits, gran, group, n_in)
    ref = _oracle(x, q, s, gran, group)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("impl", ["numpy", "numba"])
@pytest.mark.parametrize("bits,gran", SCHEME_LIST)
@pytest.mark.parametrize("N,n_in,n_out,group", KERNEL_SIZES)
def test_kernel_against_an_oracle(impl, bits, gran, N, n_in, n_out, group):
    """Awkward sizes (in = 1, odd in, groups not dividing the row, an odd group inside the
    int4 bytes) and ones big enough for the parallel paths, both implementations."""
    w = _w(n_in, n_out, 1)
    q, s = Q.quantize(w, bits, gran, group)
    x = np.random.default_rng(2).standard_normal((N, n_in)).astype(np.float32)
    y, _ = kernels.get("qmatmul", impl).forward(x, Q.pack(q, bits), s, bits, gran, group, n_in)
    assert y.shape == (N, n_out) and y.dtype == np.float32
    ref = _oracle(x, q, s, gran, group)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_kernel_reads_the_nibbles_in_order():
    """A weight whose rows differ: swapping the two nibbles of each byte must change y."""
    q = np.array([[1], [-3], [5], [2]], np.int8)
    s = np.ones((1, 1), np.float32)
    x = np.array([[1.0, 10.0, 100.0, 1000.0]], np.float32)
    for impl in ("numpy", "numba"):
        y, _ = kernels.get("qmatmul", impl).forward(x, Q.pack_int4(q), s, 4, "tensor", 32, 4)
        assert y[0, 0] == 1 - 30 + 500 + 2000


def test_kernel_bad_input_named():
    q, s = Q.quantize(_w(8, 4), 8, "channel")
    f = kernels.get("qmatmul", "numba").forward
    x = np.ones((1, 8), np.float32)
    with pytest.raises(TypeError, match="qmatmul: qweight must be a uint8"):
        f(x, q, s, 4, "channel", 32, 8)                       # int8 codes called as int4
    with pytest.raises(ShapeError, match="qmatmul: scales"):
        f(x, q, s[:, :2], 8, "channel", 32, 8)
    with pytest.raises(ShapeError, match="qmatmul: x"):
        f(np.ones((1, 7), np.float32), q, s, 8, "channel", 32, 8)


# ---------------------------------------------------------------- layers

def test_quant_linear_matches_its_dequantised_weight_and_is_inference_only():
    lin = tl.nn.Linear(20, 7, rng=0)
    for name in SCHEMES:
        ql = QuantLinear(lin, name)
        x = np.random.default_rng(3).standard_normal((2, 3, 20)).astype(np.float32)
        with tl.no_grad():
            y = ql(tl.Tensor(x)).data
        want = x @ ql.dequantized() + lin.bias.data
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
        assert ql.nbytes == ql.qweight.nbytes + ql.scales.nbytes + 7 * 4
        assert not any(p is ql.qweight for p in ql.parameters())
    with pytest.raises(RuntimeError, match="inference-only"):
        ql(tl.Tensor(x, requires_grad=True))
    with pytest.raises(ValueError, match="scheme"):
        QuantLinear(lin, "int5")


def test_quant_embedding_lookup_and_head_share_one_table():
    emb = tl.nn.Embedding(11, 6, rng=0)
    for name in ("int8", "int4-g32", "int4-tensor"):
        qe = QuantEmbedding(emb, name)
        table = qe._table.dequantized().T                       # (V, C)
        idx = np.array([[3, 0, 10], [3, 3, 1]])
        np.testing.assert_array_equal(qe.lookup(idx), table[idx])
        x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
        np.testing.assert_allclose(qe.head(x), x @ table.T, rtol=1e-5, atol=1e-6)
        # per channel of E^T = per row of E: each row's own scale
        if name == "int8":
            np.testing.assert_allclose(qe.scales[0], np.abs(emb.weight.data).max(1) / 127)
    with pytest.raises(IndexError, match="QuantEmbedding"):
        qe.lookup(np.array([11]))


# ---------------------------------------------------------------- a quantised GPT

CFG = GPTConfig(vocab_size=29, block_size=24, n_layer=2, n_head=2, n_embd=40)


@pytest.fixture(scope="module")
def gpt():
    return GPT(CFG, seed=3).eval()


def _greedy_uncached(model, idx, n):
    out = idx.copy()
    with tl.no_grad():
        for _ in range(n):
            logits, _ = model(out[:, -CFG.block_size:])
            out = np.concatenate([out, logits.data[:, -1].argmax(-1)[:, None]], axis=1)
    return out


def test_int8_logits_close_to_fp32(gpt):
    idx = np.random.default_rng(0).integers(0, 29, (2, 16))
    q = quantize_model(gpt, "int8")
    assert all(not isinstance(m, tl.nn.Linear) for _, m in q.named_modules())
    assert isinstance(gpt.transformer.h[0].attn.c_attn, tl.nn.Linear)   # original untouched
    with tl.no_grad():
        l0, L0 = gpt(idx, idx)
        l1, L1 = q(idx, idx)
    assert np.abs(l1.data - l0.data).max() <= 0.02 * np.abs(l0.data).max()
    assert abs(float(L1.data) - float(L0.data)) < 1e-3
    assert model_nbytes(q) < model_nbytes(gpt)


@pytest.mark.parametrize("method,keep", [("int8", True), ("int4-g32", False),
                                         ("int8-tensor", False)])
def test_cached_and_recomputed_greedy_decoding_agree(gpt, method, keep):
    q = quantize_model(gpt, method, keep)
    prompt = np.array([[1, 5, 7, 2], [0, 0, 3, 28]])
    cached = tl.generate(q, prompt, 12, temperature=0.0)
    np.testing.assert_array_equal(cached, _greedy_uncached(q, prompt, 12))
    # the decode step's logits against the forward's, position by position
    idx = np.random.default_rng(4).integers(0, 29, (1, 10))
    with tl.no_grad():
        full = q(idx)[0].data[0]
    c = q.new_kv_cache(1)
    steps = [q.prefill(idx[:, :4], c)[0]] + [q.decode_step(idx[:, t], c)[0] for t in range(4, 10)]
    np.testing.assert_allclose(np.array(steps), full[3:], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- checkpoints and the CLI

@pytest.fixture(scope="module")
def saved(tmp_path_factory, gpt):
    d = tmp_path_factory.mktemp("quant")
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz .,")
    assert tok.vocab_size == CFG.vocab_size
    tl.save(gpt, d / "fp32", tokenizer=tok)
    return d, tok


@pytest.mark.parametrize("method,keep", [("int8", True), ("int4-g32", False), ("int4", True)])
def test_save_load_round_trip_is_bitwise(saved, gpt, method, keep):
    d, tok = saved
    path = d / f"{method}-{keep}"
    save_compressed(gpt, tok, path, method, keep)
    qm = compress(gpt, method, keep)
    loaded, tok2 = tl.load(path)
    assert tok2.to_dict() == tok.to_dict()
    a, b = quantised_arrays(qm), quantised_arrays(loaded)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    idx = np.array([[4, 2, 8, 1, 0]])
    with tl.no_grad():
        assert qm(idx)[0].data.tobytes() == loaded(idx)[0].data.tobytes()
    meta = json.loads((path / "meta.json").read_text())
    assert meta["compressed"]["method"] == method
    size = os.path.getsize(path / "model.safetensors")
    assert size < os.path.getsize(d / "fp32" / "model.safetensors")
    with pytest.raises(TypeError, match="quantised"):
        tl.save(loaded, d / "nope", tokenizer=tok)


def test_corrupt_or_truncated_quantised_checkpoint_refused(saved, gpt):
    d, tok = saved
    path = d / "corrupt"
    save_compressed(gpt, tok, path, "int4-g32")
    f = path / "model.safetensors"
    good = f.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    f.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="corrupt"):
        tl.load(path)
    assert cli.main(["generate", "--checkpoint", str(path), "--prompt", "ab"]) == 1
    f.write_bytes(good[: len(good) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        tl.load(path)
    # a consistent file (its hash updated) that lacks an array: named in the error
    from safetensors.numpy import load
    arrays = load(good)
    del arrays["transformer.h.1.mlp.c_fc.scales"]
    _rewrite(path, arrays)
    with pytest.raises(CheckpointError, match="transformer.h.1.mlp.c_fc.scales"):
        tl.load(path)
    arrays = load(good)
    arrays["transformer.h.0.attn.c_attn.qweight"] = arrays[
        "transformer.h.0.attn.c_attn.qweight"].view(np.int8)
    _rewrite(path, arrays)
    with pytest.raises(CheckpointError, match="c_attn.qweight"):
        tl.load(path)


def _rewrite(path, arrays):
    import hashlib

    from safetensors.numpy import save
    data = save(arrays)
    (path / "model.safetensors").write_bytes(data)
    meta = json.loads((path / "meta.json").read_text())
    meta["sha256"]["model.safetensors"] = hashlib.sha256(data).hexdigest()
    (path / "meta.json").write_text(json.dumps(meta))


def test_cli_compress_then_generate(saved, capsys):
    d, tok = saved
    out = d / "cli-int4"
    assert cli.main(["compress", "--checkpoint", str(d / "fp32"), "--method", "int4-g32",
                     "--no-keep-embeddings", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "int4-g32" in text and "size" in text and "->" in text
    model, _, meta = load_model(str(out))
    assert isinstance(model.transformer.wte, QuantEmbedding)
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", "abc",
                     "--max-new-tokens", "8", "--temperature", "0"]) == 0
    got = capsys.readouterr().out.strip()
    ids = tl.generate(model, np.array([tok.encode("abc")]), 8, temperature=0.0)
    assert got == tok.decode(ids[0].tolist())


@pytest.mark.parametrize("argv,what", [
    (["--method", "int3"], "--method"),
    (["--method", "int8", "--checkpoint", "/nonexistent/q"], "--checkpoint"),
    (["--method", "int8", "--from-compressed"], "--checkpoint"),
])
def test_cli_compress_bad_input_is_one_line_exit_2(saved, capsys, argv, what):
    d, _ = saved
    ck = str(d / "fp32")
    if "--from-compressed" in argv:
        save_compressed(GPT(CFG, seed=3), CharTokenizer("abcdefghijklmnopqrstuvwxyz .,"),
                        d / "already", "int8")
        argv, ck = ["--method", "int8"], str(d / "already")
    if "--checkpoint" not in argv:
        argv = argv + ["--checkpoint", ck]
    code = cli.main(["compress", *argv, "--out", str(d / "bad-out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and what in err and len(err.splitlines()) == 1


def test_methods_registry():
    assert set(METHODS) == {"int8", "int8-tensor", "int8-g32", "int4", "int4-tensor",
                            "int4-g32", "bf16", "fp16"}
    with pytest.raises(ValueError, match="method"):
        compress(GPT(CFG), "int2")


@pytest.mark.slow
def test_compress_a_trained_run_then_eval(tmp_path, capsys):
    from _tiny_runs import train_tiny_gpt
    d, run = train_tiny_gpt(tmp_path)
    assert cli.main(["compress", "--checkpoint", str(run), "--method", "int8",
                     "--out", str(d / "q")]) == 0
    assert cli.main(["eval", "--checkpoint", str(d / "q")]) == 0
    assert "loss" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_16_bit_storage_checkpoints(tmp_path, fmt):
    """bf16 / fp16 storage: 2 bytes a weight on disk, loaded back as exactly the rounded
    values, through tinyllm compress and tl.load."""
    import tinyllm as tl
    from tinyllm import precision
    from tinyllm.train.evaluate import stored_bytes
    from _tiny_runs import train_tiny_gpt
    d, out = train_tiny_gpt(tmp_path)
    model, tok = tl.load(str(out))
    assert cli.main(["compress", "--checkpoint", str(out), "--method", fmt, "--out",
                     str(tmp_path / fmt)]) == 0
    q, _ = tl.load(str(tmp_path / fmt))
    for (n, p), (_, r) in zip(model.named_parameters(), q.named_parameters()):
        assert np.array_equal(r.data, precision.round_to(p.data, fmt)), n
    n = sum(p.data.size for p in model.parameters())
    size = stored_bytes(str(tmp_path / fmt))
    assert 2 * n <= size < 2 * n + 20_000                     # 16 bits + the header
    meta = json.loads((tmp_path / fmt / "meta.json").read_text())
    assert meta["compressed"] == {"method": fmt, "format": fmt, "nbytes": 2 * n,
                                  "float_nbytes": 4 * n}
    # arrays that are not 16-bit patterns under a 16-bit meta are refused, naming one
    from tinyllm.compress.lowp import load_lowp
    from tinyllm.train.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="uint16 bit patterns"):
        load_lowp(q, {k: v for k, v in model.state_dict().items()}, meta["compressed"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,V,C", [(1, 1031, 77), (3, 5, 1), (2, 700, 64)])
def test_rows_dot_is_the_float_head(dtype, N, V, C):
    # the float tied head of a quantised model, on Numba's threads: x @ E^T
    rng = np.random.default_rng(11)
    x, E = rng.standard_normal((N, C)).astype(dtype), rng.standard_normal((V, C)).astype(dtype)
    y = Q.rows_dot(x, E)
    assert y.dtype == dtype and y.shape == (N, V)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, x.astype(np.float64) @ E.T.astype(np.float64), rtol=tol,
                               atol=tol * np.sqrt(C))
    with pytest.raises(ShapeError, match="rows_dot"):
        Q.rows_dot(x, E[:, :C - 1] if C > 1 else np.ones((V, 2), dtype))
