"""The encoder against the same equations written in PyTorch (skipped without torch): the MLM
loss with padding, the span logits and every parameter's gradient, in float64."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm.models import Bert, BertConfig

torch = pytest.importorskip("torch")
TF = torch.nn.functional

CFG = BertConfig(vocab_size=30, max_position=12, n_layer=2, n_head=2, n_embd=8, n_inner=16)


def _torch_encode(P, idx, km, tt, cfg):
    B, T = idx.shape
    C, H = cfg.n_embd, cfg.n_head

    def ln(x, p):
        return TF.layer_norm(x, (C,), P[p + ".weight"], P[p + ".bias"], 1e-5)

    def lin(x, p):
        return x @ P[p + ".weight"] + P[p + ".bias"]

    emb = "embeddings.{}_embeddings.weight".format
    x = P[emb("word")][idx] + P[emb("position")][:T] + P[emb("token_type")][tt]
    mask = torch.tensor(km)[:, None, None, :]                   # (B, 1, 1, T): keys
    for i in range(cfg.n_layer):
        pre = f"encoder.layer.{i}."
        qkv = lin(ln(x, pre + "attention.LayerNorm"), pre + "attention.self.qkv")
        qkv = qkv.reshape(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
        y = TF.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        x = x + lin(y.transpose(1, 2).reshape(B, T, C), pre + "attention.output.dense")
        h = ln(x, pre + "intermediate.LayerNorm")
        x = x + lin(TF.gelu(lin(h, pre + "intermediate.dense"), approximate="tanh"),
                    pre + "output.dense")
    h = ln(x, "encoder.LayerNorm")
    return h, ln, lin


@pytest.mark.parametrize("impl", ["numpy", "numba"])
def test_mlm_loss_span_logits_and_gradients_match_torch(impl):
    rng = np.random.default_rng(0)
    m = Bert(CFG, seed=0, dtype=np.float64)
    B, T = 3, 10
    idx = rng.integers(5, 30, (B, T))
    km = np.ones((B, T), bool)
    km[1, 7:] = km[2, 4:] = False
    tt = np.zeros((B, T), np.int64)
    tt[:, 3:] = 1
    y = np.where(rng.random((B, T)) < 0.4, rng.integers(5, 30, (B, T)), -100)
    y[~km] = -100
    y[0, 0] = 7
    with tl.kernels.use(impl):
        h = m.encode(idx, km, tt)
        sel = np.flatnonzero(y.reshape(-1) != -100)
        logits = m.mlm_logits(h.reshape((-1, CFG.n_embd))[sel])
        loss = tl.functional.cross_entropy(logits, y.reshape(-1)[sel])
        s, e = m.span_logits(h)
        total = loss + (s * s).sum() * 0.01 + e.sum() * 0.1
        total.backward()

    P = {k: torch.tensor(v, requires_grad=True) for k, v in m.state_dict().items()}
    th, ln, lin = _torch_encode(P, torch.tensor(idx), km, torch.tensor(tt), CFG)
    r = th.reshape(-1, CFG.n_embd)[torch.tensor(sel)]
    z = ln(TF.gelu(lin(r, "cls.predictions.transform.dense"), approximate="tanh"),
           "cls.predictions.transform.LayerNorm")
    tlog = z @ P["embeddings.word_embeddings.weight"].T + P["cls.predictions.bias"]
    tloss = TF.cross_entropy(tlog, torch.tensor(y.reshape(-1)[sel]))
    se = lin(th, "qa_outputs")
    ttotal = tloss + (se[..., 0] ** 2).sum() * 0.01 + se[..., 1].sum() * 0.1
    ttotal.backward()

    np.testing.assert_allclose(h.data[km], th.detach().numpy()[km], rtol=1e-9, atol=1e-11)
    assert abs(float(total.data) - float(ttotal.detach())) < 1e-9
    for n, p in m.named_parameters():
        g = P[n].grad
        want = np.zeros_like(p.data) if g is None else g.numpy()
        got = np.zeros_like(p.data) if p.grad is None else p.grad
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-10, err_msg=n)
