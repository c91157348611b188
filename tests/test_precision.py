"""tl.precision: float32 -> bf16 / fp16 bit for bit against ml_dtypes (bf16) and NumPy's
float16 cast (RNE), class by class of float32 bit pattern and on 10^6 random patterns;
truncation as the largest magnitude not above |x|; stochastic rounding unbiased; the
storage and everywhere modes on a GPT."""
import warnings

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import precision as P

RNG = np.random.default_rng(12)


def _u32(a):
    return np.asarray(a, np.uint64).astype(np.uint32)


def _pos_classes() -> dict:
    """name -> uint32 float32 bit patterns of |x| (the sign is added by _classes)."""
    r = RNG
    n = 4000
    c = {}
    c["normal"] = _u32((r.integers(1, 255, n) << 23) | r.integers(0, 1 << 23, n))
    c["f32 subnormal"] = _u32(r.integers(1, 1 << 23, n))
    c["zero"] = _u32([0])
    c["inf"] = _u32([0x7F800000])
    c["nan quiet"] = _u32(0x7FC00000 | r.integers(0, 1 << 22, n))
    c["nan signalling"] = _u32(0x7F800000 | r.integers(1, 1 << 22, n))
    # bf16: the 16 discarded bits at a tie, just below and just above it; the kept lsb
    # (bit 16) is random, so both even and odd ties occur (checked below)
    hi = r.integers(0, 0x7F80, n) << 16
    for name, low in (("bf16 tie", 0x8000), ("bf16 below tie", 0x7FFF),
                      ("bf16 above tie", 0x8001)):
        c[name] = _u32(hi | low)
    c["bf16 subnormal"] = _u32(r.integers(1, 1 << 23, n) & ~0xFFFF | r.integers(0, 1 << 16, n))
    c["bf16 largest / overflow"] = _u32(0x7F7F0000 + np.arange(0x10000))
    # fp16 normal range (f32 exponent 113..142): ties and neighbours in the 13 dropped bits
    hi = (r.integers(113, 143, n) << 23) | (r.integers(0, 1 << 10, n) << 13)
    for name, low in (("fp16 tie", 0x1000), ("fp16 below tie", 0x0FFF),
                      ("fp16 above tie", 0x1001)):
        c[name] = _u32(hi | low)
    # fp16 subnormals (|x| < 2^-14) down past half the smallest one, 2^-25; ties at the
    # shift boundary 126 - e for every exponent that can reach a subnormal
    c["fp16 subnormal"] = _u32(r.integers(0x32000000, 0x38800000, 20 * n))
    e = r.integers(102, 113, n)
    s = 126 - e
    m = r.integers(0, 1 << 23, n) >> s << s
    tie = (e << 23) | m | (1 << (s - 1))
    c["fp16 subnormal tie"] = _u32(tie)
    c["fp16 subnormal near tie"] = _u32(np.concatenate([tie - 1, tie + 1]))
    c["fp16 smallest subnormal"] = _u32(0x33000000 + np.arange(-2000, 0x800000 + 2000, 997))
    c["fp16 largest / overflow"] = _u32(np.arange(0x477F0000, 0x47810000))
    return c


CLASSES = {k: np.concatenate([v, v | np.uint32(0x80000000)]) for k, v in _pos_classes().items()}


def _f(u):
    return u.view(np.float32)


def _np_fp16_bits(u):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _f(u).astype(np.float16).view(np.uint16)


def _bf16_ref(u):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # "invalid value" on NaN inputs
        return _f(u).astype(ml_dtypes.bfloat16).view(np.uint16)


def _fp16_ok(u, got):
    """Equal to NumPy's RNE cast, except that a signalling NaN comes back quiet (NumPy keeps
    it signalling; a quiet NaN it keeps as we do): there the sign and the top 9 payload bits
    agree and the quiet bit is set."""
    ref = _np_fp16_bits(u)
    snan = np.isnan(_f(u)) & ((u & 0x400000) == 0)
    ok = np.where(snan, ((got & 0xFE00) == (ref & 0x8000 | 0x7E00)) &
                  ((got & 0x1FF) == (u >> 13 & 0x1FF)), got == ref)
    return ok, ref


@pytest.mark.parametrize("cls", list(CLASSES))
def test_bf16_bit_for_bit_with_ml_dtypes(cls):
    u = CLASSES[cls]
    got, ref = P.f32_to_bf16_bits(_f(u)), _bf16_ref(u)
    bad = np.flatnonzero(got != ref)
    assert not bad.size, f"{cls}: {bad.size} differ, e.g. {u[bad[0]]:#010x} -> " \
                         f"{got[bad[0]]:#06x}, ml_dtypes {ref[bad[0]]:#06x}"


@pytest.mark.parametrize("cls", list(CLASSES))
def test_fp16_bit_for_bit_with_numpy(cls):
    u = CLASSES[cls]
    got = P.f32_to_fp16_bits(_f(u))
    ok, ref = _fp16_ok(u, got)
    bad = np.flatnonzero(~ok)
    assert not bad.size, f"{cls}: {bad.size} differ, e.g. {u[bad[0]]:#010x} -> " \
                         f"{got[bad[0]]:#06x}, numpy {ref[bad[0]]:#06x}"


def test_the_classes_hold_what_they_say():
    """The tie classes hold both parities of the kept lsb, and the overflow classes both
    finite results and infinities (else the checks above prove less than they claim)."""
    for name, bit in (("bf16 tie", 16), ("fp16 tie", 13)):
        lsb = (CLASSES[name] >> bit) & 1
        assert lsb.min() == 0 and lsb.max() == 1, name
    b = P.f32_to_bf16_bits(_f(CLASSES["bf16 largest / overflow"])) & 0x7FFF
    h = P.f32_to_fp16_bits(_f(CLASSES["fp16 largest / overflow"])) & 0x7FFF
    assert {0x7F7F, 0x7F80} <= set(b.tolist()) and {0x7BFF, 0x7C00} <= set(h.tolist())
    sub = P.f32_to_fp16_bits(_f(CLASSES["fp16 subnormal"])) & 0x7FFF
    assert sub.min() == 0 and 0 < np.median(sub) < 0x400 and sub.max() == 0x400


def test_a_million_random_bit_patterns():
    u = RNG.integers(0, 1 << 32, 10**6, dtype=np.uint64).astype(np.uint32)
    assert np.array_equal(P.f32_to_bf16_bits(_f(u)), _bf16_ref(u))
    ok, _ = _fp16_ok(u, P.f32_to_fp16_bits(_f(u)))
    assert ok.all()


def test_specials_by_name():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 65504, 65520, 65519.996,
                  2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001, 1e-30], np.float32)
    h = P.f32_to_fp16_bits(x)
    assert h.tolist()[:4] == [0x0000, 0x8000, 0x7C00, 0xFC00]
    assert h[4] & 0x7E00 == 0x7E00 and h[5] >> 15 == 1 and np.isnan(P.fp16_bits_to_f32(h[4:6])).all()
    assert h.tolist()[6:] == [0x7BFF, 0x7C00, 0x7BFF, 0x0001, 0x0000, 0x0001, 0x0000]
    b = P.f32_to_bf16_bits(x[:6])
    assert b.tolist() == [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0]


def test_decoding_every_16_bit_pattern():
    b = np.arange(1 << 16).astype(np.uint16)
    ref = b.view(np.float16).astype(np.float32).view(np.uint32)
    assert np.array_equal(P.fp16_bits_to_f32(b).view(np.uint32), ref)
    assert np.array_equal(P.bf16_bits_to_f32(b).view(np.uint32), b.astype(np.uint32) << 16)
    # and back: every value is exact, so every non-NaN pattern survives a round trip in
    # every rounding mode; a NaN comes back a NaN
    for rounding in ("rne", "truncate", "stochastic"):
        for enc, dec in ((P.f32_to_fp16_bits, P.fp16_bits_to_f32),
                         (P.f32_to_bf16_bits, P.bf16_bits_to_f32)):
            back = enc(dec(b), rounding, rng=0)
            nan = np.isnan(dec(b))
            assert np.array_equal(back[~nan], b[~nan]), (enc.__name__, rounding)
            assert np.isnan(dec(back[nan])).all()


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_truncation_is_the_largest_magnitude_not_above_x(fmt):
    """Truncation differs from RNE exactly where RNE rounded the magnitude up: there it is
    one step lower, and never above |x|."""
    enc, dec = {"bf16": (P.f32_to_bf16_bits, P.bf16_bits_to_f32),
                "fp16": (P.f32_to_fp16_bits, P.fp16_bits_to_f32)}[fmt]
    u = np.concatenate(list(CLASSES.values()) +
                       [RNG.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32)])
    x = _f(u)
    u, x = u[~np.isnan(x)], x[~np.isnan(x)]
    rne, tr = enc(x), enc(x, "truncate")
    up = np.abs(dec(rne).astype(np.float64)) > np.abs(x.astype(np.float64))
    expect = np.where(up & ~np.isinf(x), rne - 1, rne)         # one magnitude step down
    assert np.array_equal(tr, expect.astype(np.uint16))
    assert (np.abs(dec(tr).astype(np.float64)) <= np.abs(x.astype(np.float64))).all()
    assert 0.2 < up.mean() < 0.8            # they differ often, and where expected only


@pytest.mark.parametrize("fmt,x", [("bf16", 1.0 + 0.3 * 2**-7), ("bf16", -3.0e-39),
                                   ("fp16", 1000.0 + 0.37 * 0.5), ("fp16", 3.0e-8),
                                   ("fp16", -1.0e-9)])
def test_stochastic_rounding_is_unbiased(fmt, x):
    x32 = np.float32(x)
    n = 40_000
    got = P.round_to(np.full(n, x32), fmt, "stochastic", rng=np.random.default_rng(5))
    lo, hi = P.round_to(x32, fmt, "truncate"), None
    vals = np.unique(got)
    assert len(vals) == 2 and lo in vals, vals            # only the two neighbours
    hi = vals[vals != lo][0]
    p = (float(x32) - float(lo)) / (float(hi) - float(lo))
    sigma = abs(float(hi) - float(lo)) * np.sqrt(p * (1 - p) / n)
    assert abs(got.astype(np.float64).mean() - float(x32)) < 4 * sigma
    # seeded: the same generator state gives the same draws
    again = P.round_to(np.full(n, x32), fmt, "stochastic", rng=np.random.default_rng(5))
    assert np.array_equal(got, again)
    # RNE, in contrast, is biased by the whole rounding error on a constant
    rne = float(P.round_to(x32, fmt))
    assert abs(rne - float(x32)) > 20 * sigma


def test_stochastic_past_the_largest_finite_value():
    """65510 is 6/32 of the way from fp16's largest finite value (65504) to 2^16, where
    the next exponent would start: it steps to inf that often; RNE keeps it finite."""
    got = P.round_to(np.full(40_000, 65510.0, np.float32), "fp16", "stochastic", rng=1)
    assert set(np.unique(got).tolist()) == {65504.0, np.inf}
    assert abs(np.isinf(got).mean() - 6 / 32) < 0.01
    assert P.round_to(np.float32(65510.0), "fp16") == 65504.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="format"):
        P.round_to(1.0, "fp8")
    with pytest.raises(ValueError, match="rounding"):
        P.round_to(1.0, "bf16", "nearest")
    with pytest.raises(ValueError, match="rng"):
        P.round_to(1.0, "bf16", "stochastic")
    with pytest.raises(TypeError, match="rng"):
        P.round_to(1.0, "bf16", "stochastic", rng="seed")
    with pytest.raises(TypeError, match="real numbers"):
        P.f32_to_fp16_bits(np.array(["a"]))
    with pytest.raises(TypeError, match="uint16"):
        P.bf16_bits_to_f32(np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="format"):
        with P.everywhere("int8"):
            pass


def _gpt():
    cfg = tl.models.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)
    return tl.models.GPT(cfg, seed=3)


def _representable(a, fmt):
    return np.array_equal(P.round_to(a, fmt), a)


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_store_weights(fmt):
    model = _gpt()
    idx = np.arange(16).reshape(2, 8) % 11
    before = model(idx)[0].data.copy()
    n = model.num_parameters()
    assert P.store_weights(model, fmt) == 2 * n
    assert all(_representable(p.data, fmt) and p.data.dtype == np.float32
               for p in model.parameters())
    after = model(idx)[0].data
    assert 0 < np.abs(after - before).max() < 0.05


def test_everywhere_rounds_every_op_output_and_only_inside():
    x = tl.Tensor(RNG.standard_normal((3, 40)).astype(np.float32), requires_grad=True)
    w = tl.Tensor(RNG.standard_normal((40, 5)).astype(np.float32))
    exact = x.data @ w.data
    with P.everywhere("bf16"):
        y = x @ w
        z = (y * 1.001).exp().sum()
        idx = x.argmax()                       # not an op: indices are untouched
    assert np.array_equal(y.data, P.round_to(exact, "bf16"))      # fp32 sum, rounded once
    assert _representable(z.data, "bf16") and not np.array_equal(y.data, exact)
    assert idx.dtype == np.int64
    z.backward()                               # gradients are not rounded
    assert not _representable(x.grad, "bf16")
    assert np.array_equal((x @ w).data, exact)                    # off again outside
    with pytest.raises(RuntimeError):
        with P.everywhere("fp16"):
            raise RuntimeError("boom")
    assert P._ACTIVE["round"] is None


def test_everywhere_on_a_gpt_forward():
    model = _gpt()
    idx = np.arange(16).reshape(2, 8) % 11
    ref, ref_loss = model(idx, idx)
    for fmt, rounding in (("bf16", "rne"), ("bf16", "truncate"), ("fp16", "rne"),
                          ("bf16", "stochastic")):
        with tl.no_grad(), P.everywhere(fmt, rounding, rng=0):
            logits, loss = model(idx, idx)
        assert _representable(logits.data, fmt) and logits.dtype == np.float32
        assert 0 < np.abs(logits.data - ref.data).max() < 0.1, (fmt, rounding)
        assert abs(float(loss) - float(ref_loss)) < 0.05


def test_everywhere_keeps_float64_outputs_float64():
    x = tl.Tensor(RNG.standard_normal(7))                         # float64
    with P.everywhere("fp16"):
        y = x * 3.0
    assert y.dtype == np.float64 and _representable(y.data.astype(np.float32), "fp16")


def test_precision_rows_on_a_tiny_gpt():
    """The benchmark's measuring function: its fp32 row is evaluate_gpt's loss on the same
    windows, every row is paired against it, and the model's weights come back unchanged."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parent.parent / "benchmarks" / "precision_eval.py"
    spec = importlib.util.spec_from_file_location("precision_eval", path)
    pe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pe)
    model = _gpt()
    ids = RNG.integers(0, 11, 300)
    before = [p.data.copy() for p in model.parameters()]
    tok = tl.data.CharTokenizer("abcdefghijk")
    rows = pe.precision_rows(model, tok, ids, windows=5, seed=2)
    assert [r["name"] for r in rows] == [m[0] for m in pe.MODES]
    ref = tl.train.evaluate.evaluate_gpt(model, tok, ids, windows=5, seed=2)["loss"]
    assert abs(rows[0]["loss"] - ref) < 1e-5 and rows[0]["delta"] == 0 and rows[0]["kl"] == 0
    n = model.num_parameters()
    assert [r["bytes"] for r in rows] == [4 * n] + [2 * n] * 6
    assert all(r["kl"] > 0 for r in rows[1:]) and "vs_rne" in rows[4]
    assert all(np.array_equal(p.data, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(ValueError, match="windows"):
        pe.precision_rows(model, tok, ids, windows=np.array([10**6]))
