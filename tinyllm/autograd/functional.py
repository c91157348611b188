"""``tl.functional`` (``F``): the neural-network ops.

The hot ones (softmax, cross_entropy, layer_norm, mlp, scaled_dot_product_attention,
additive_attention, decode_attention) are fused kernels from ``tinyllm.kernels``: a forward
and a hand-derived backward on plain arrays, wrapped here as one graph node. Which
implementation runs (the NumPy reference or Numba) is asked of the registry on every call, so
``with tl.kernels.use("numpy"):`` or ``TINYLLM_KERNELS=numpy`` switches the whole engine.
The rest (log_softmax, linear, gelu, ...) are compositions of primitive ops whose backward
autodiff derives.
Shapes: N = rows, V = vocabulary (classes), C = channels, B = batch, H = heads, T = time,
hs = head size.
"""
from __future__ import annotations

import numpy as np

from .. import backend, kernels
from ..errors import ShapeError
from .ops import dropout, embedding, gelu, relu, sigmoid, tanh  # noqa: F401  (re-exported)
from .ops import linear as _linear_node
from .tensor import Function, Tensor
from .distillation import distill_kl, distill_loss  # noqa: F401  (re-exported)


class KernelOp(Function):
    """One kernel call as one graph node.

    ``KernelOp.apply(*args, kernel=name, grad_args=idx, **options)``: ``args[i]`` for i in
    ``grad_args`` are the kernel's differentiable inputs (Tensors or arrays); the others are
    passed through (targets, masks; ``None`` allowed). Float inputs are brought to one dtype
    (NumPy promotion, as the primitive ops do) and each gradient is returned in its input's
    dtype. A kernel with several outputs (additive attention's ``(c, alpha)``) makes a node
    with several outputs: ``apply`` returns a tuple of Tensors, and the backward hands the
    kernel the tuple of their upstream gradients, ``None`` for an output that got none (the
    kernels' backward contract reads ``None`` as zero).

    Inputs on cuda run the family's ``cuda`` kernel (``kernels.get(name, device="cuda")``);
    a family without one runs its CPU kernel on host copies (on the simulator: host views,
    no copy) and its results go back to the device.
    """

    @staticmethod
    def forward(ctx, *arrays, kernel, grad_args, options):
        floats = [arrays[i] for i in grad_args if arrays[i] is not None]
        dev = backend.device_of(floats[0]) if floats else "cpu"
        k = kernels.get(kernel, device=dev)
        dt = np.result_type(*(a.dtype for a in floats)) if floats else None
        args = list(arrays)
        for i in grad_args:
            if args[i] is not None and args[i].dtype != dt:
                args[i] = args[i].astype(dt)
        ctx.dtypes = [a.dtype if backend.is_array(a) else None for a in arrays]
        ctx.device, ctx.arg = dev, (backend.raw if k.impl == "cuda" else backend.host_view)
        if dev != "cpu":                     # what the kernel reads: cupy, or host memory
            args = [ctx.arg(a) for a in args]
        out, cache = k.forward(*args, **options)
        ctx.kernel, ctx.cache, ctx.grad_args = k, cache, grad_args
        if isinstance(out, (tuple, list)):
            return tuple(backend.adopt(o, dev) for o in out)
        return backend.adopt(out, dev)

    @staticmethod
    def backward(ctx, *douts):
        if ctx.device != "cpu":
            douts = tuple(ctx.arg(d) for d in douts)
        dout = douts if ctx.n_outputs > 1 else douts[0]
        grads = ctx.kernel.backward(dout, ctx.cache)
        result = [None] * len(ctx.dtypes)
        for i, g in zip(ctx.grad_args, grads):
            if g is not None and ctx.needs_input_grad[i]:
                g = backend.adopt(g, ctx.device)
                result[i] = g if g.dtype == ctx.dtypes[i] else g.astype(ctx.dtypes[i])
        return tuple(result)


def _kernel(name, *args, grad_args, **options):
    return KernelOp.apply(*args, kernel=name, grad_args=tuple(grad_args), options=options)


def _tensor(x, op, what):
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray) or isinstance(x, (list, tuple)):
        return Tensor(x)
    raise TypeError(f"{op}: {what} must be a Tensor or an array, got {type(x).__name__}")


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x - max) / sum(exp(x - max)) along ``axis`` (the ``softmax`` kernel). A row that
    is entirely -inf gives zeros."""
    x = _tensor(x, "softmax", "x")
    if x.ndim == 0:
        raise ShapeError("softmax: x must have at least one axis, got a 0-d tensor")
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"softmax: axis {axis} is out of range for a {x.ndim}-d tensor")
    axis %= x.ndim
    if axis == x.ndim - 1:
        return _kernel("softmax", x, grad_args=(0,))
    perm = tuple(i for i in range(x.ndim) if i != axis) + (axis,)
    inv = tuple(np.argsort(perm))
    return _kernel("softmax", x.transpose(perm), grad_args=(0,)).transpose(inv)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """x - max - log(sum(exp(x - max))) along ``axis``: the one log-softmax of tinyllm
    (``tl.infer`` scores beams with it too; the ``cross_entropy`` kernel fuses its own into
    the loss). An empty batch, (0, V) over the last axis, gives the empty result; an axis of
    length 0 has no distribution over it and raises ShapeError."""
    x = _tensor(x, "log_softmax", "x")
    if x.ndim == 0:
        raise ShapeError("log_softmax: x must have at least one axis, got a 0-d tensor")
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"log_softmax: axis {axis} is out of range for a {x.ndim}-d tensor")
    if x.shape[axis] == 0:
        raise ShapeError(f"log_softmax: axis {axis} of shape {x.shape} is empty; there is no "
                         f"distribution over zero classes")
    m = x.max(axis=axis, keepdims=True).detach()
    shifted = x - m
    return shifted - shifted.exp().sum(axis=axis, keepdims=True).log()


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100) -> Tensor:
    """Mean negative log-likelihood of ``targets`` under softmax(logits) (the fused
    ``cross_entropy`` kernel: log-softmax and NLL in one pass, backward without a softmax).

    logits (N, V); targets int (N,). Rows whose target equals ``ignore_index`` are left out of
    the sum and of the count. If every row is ignored the loss is 0 (with zero gradient), not
    the NaN of 0/0. A target outside [0, V) raises IndexError.
    """
    logits = _tensor(logits, "cross_entropy", "logits")
    t = targets.data if isinstance(targets, Tensor) else targets
    t = t if backend.is_array(t) else np.asarray(t)
    return _kernel("cross_entropy", logits, t, grad_args=(0,), ignore_index=ignore_index)


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None,
               eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis; weight, bias (C,)
    (the ``layernorm`` kernel). ``weight``/``bias`` may be None (no scale / no shift)."""
    x = _tensor(x, "layer_norm", "x")
    C = x.shape[-1] if x.ndim else 0
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (C,):
            raise ShapeError(f"layer_norm: {name} shape {tuple(p.shape)} does not match the "
                             f"last dimension of x {x.shape}")
    w = weight if weight is not None else np.ones(C, x.dtype)
    b = bias if bias is not None else np.zeros(C, x.dtype)
    return _kernel("layernorm", x, w, b, grad_args=(0, 1, 2), eps=eps)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ W + b with W (in, out): (..., in) @ (in, out) -> (..., out). A 2-D x with a 2-D
    W is one graph node (``ops.Linear``: the bias added in the product's own pass)."""
    if (isinstance(x, Tensor) and x.ndim == 2 and getattr(weight, "ndim", 0) == 2
            and (bias is None or getattr(bias, "ndim", 0) == 1)):
        return _linear_node(x, weight, bias)
    out = x @ weight
    return out + bias if bias is not None else out


def mlp(x: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
    """GELU(x @ W1 + b1) @ W2 + b2 with the tanh GELU (the fused ``mlp`` kernel).
    x (..., C), W1 (C, Hd), b1 (Hd,), W2 (Hd, C_out), b2 (C_out,)."""
    x = _tensor(x, "mlp", "x")
    if x.ndim == 2:
        return _kernel("mlp", x, W1, b1, W2, b2, grad_args=range(5))
    if x.ndim < 1:
        raise ShapeError(f"mlp: x must be (..., C), got shape {x.shape}")
    lead = x.shape[:-1]
    y = _kernel("mlp", x.reshape((-1, x.shape[-1])), W1, b1, W2, b2, grad_args=range(5))
    return y.reshape(lead + (y.shape[-1],))


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True,
                                 scale: float | None = None, key_mask=None) -> Tensor:
    """softmax(q k^T * scale [+ causal mask] [+ key mask]) v over the time axis (the
    ``attention`` kernel: flash-style tiles in the Numba version, never the whole T x T
    matrix). q, k, v (B, H, T, hs) -> (B, H, T, hs); scale defaults to 1/sqrt(hs).
    key_mask: None, or bool (B, T) (an array or a Tensor; not differentiable), True = a real
    token, False = padding that no query attends to; a query with no key left gives 0."""
    m = key_mask.data if isinstance(key_mask, Tensor) else key_mask
    return _kernel("attention", q, k, v, grad_args=(0, 1, 2), causal=causal, scale=scale,
                   key_mask=m)


def additive_attention(h: Tensor, x: Tensor, W_q: Tensor, W_k: Tensor, v_a: Tensor,
                       mask=None):
    """The document's eq. 4.2 (the ``additive_attention`` kernel)::

        e_i = v_a . tanh(h @ W_q + x_i @ W_k)      (4.2b)
        alpha = softmax_i(e)                       (4.2a), over positions where mask is True
        c = sum_i alpha_i x_i                      (the context vector)

    h (B, Dh), x (B, S, Dx), W_q (Dh, A), W_k (Dx, A), v_a (A,), mask bool (B, S) or None.
    Returns ``(c, alpha)``: c (B, Dx), alpha (B, S); a fully masked row gives zeros. Both
    outputs are differentiable.
    """
    h = _tensor(h, "additive_attention", "h")
    m = mask.data if isinstance(mask, Tensor) else mask
    c, alpha = _kernel("additive_attention", h, x, W_q, W_k, v_a, m, grad_args=range(5))
    return c, alpha


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, length: int,
                     scale: float | None = None) -> Tensor:
    """One new query against a KV cache (the ``decode_attention`` kernel): q (B, H, 1, hs),
    k_cache and v_cache (B, H, Lmax, hs) of which the first ``length`` positions are valid."""
    return _kernel("decode_attention", q, k_cache, v_cache, grad_args=(0, 1, 2),
                   length=length, scale=scale)


__all__ = ["softmax", "log_softmax", "cross_entropy", "layer_norm", "linear", "mlp",
           "scaled_dot_product_attention", "additive_attention", "decode_attention", "gelu",
           "relu", "sigmoid", "tanh", "dropout", "embedding", "KernelOp", "distill_loss",
           "distill_kl"]
