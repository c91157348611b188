"""LoRA: low-rank adapters on a frozen Linear, one graph node with a hand-derived backward.

Legend: N = rows (the leading dims of x flattened), in / out = the Linear's widths, r = the
rank, s = alpha / r the scale, slice i = output columns [lo_i, hi_i) with width w_i.

A ``LoRALinear`` wraps a ``Linear`` (weight W (in, out), bias b (out,) or None) and adds, for
each named column slice, an adapter A_i (in, r) ~ N(0, 1/in) (std 1/sqrt(in)) and
B_i (r, w_i) = 0, so at the start it computes exactly what the base does::

    y = x W + b;   y[:, lo_i:hi_i] += s (x A_i) B_i        for every slice i

Slices let one adapter pair act on part of a fused projection: for attention's
``Linear(C, 3C)`` (columns q | k | v), ``{"q": (0, C), "v": (2C, 3C)}`` adapts q and v only.
The default is one slice ``"all"`` over the whole output.

The backward, with dy (N, out) and dy_i = dy[:, lo_i:hi_i] (N, w_i), g_i = dy_i B_i^T (N, r)::

    dx   = dy W^T + sum_i s g_i A_i^T            (N, in)
    dA_i = s x^T g_i                             (in, r)
    dB_i = s (x A_i)^T dy_i                      (r, w_i)
    dW   = x^T dy,   db = sum_rows dy            only when the base requires grad

x A_i is computed once in the forward and kept for dB_i. Each term is computed only when its
input wants a gradient (a frozen embedding below layer 0 means no dx there).

The base's own Parameters stay the module's ``weight`` and ``bias`` (requires_grad False), so
state-dict names are unchanged (``<path>.weight``) and a pretrained checkpoint loads as it is;
the adapters are ``<path>.lora_A_<slice>`` / ``<path>.lora_B_<slice>``.

``merge()`` folds the adapters into W (W[:, lo:hi] += s A B; then the forward is the base's one
GEMM) and ``unmerge()`` subtracts the same product again (computed from copies of A and B taken
at merge time, so it undoes exactly what was added; W comes back within float rounding).
A merged module refuses to run in training mode: call ``.eval()`` or ``unmerge()`` first.

Model-level helpers: ``apply_lora`` (replace Linears at dotted paths), ``lora_state_dict``,
``save_adapters`` / ``load_adapters`` (a folder: ``adapters.safetensors`` + ``adapters.json``
with r, alpha, targets and the array file's SHA-256, each file written atomically),
``merge_lora`` / ``unmerge_lora``.

The backward pass is derived step by step in docs/derivations/lora.md.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np

from ..autograd import Function, Tensor
from ..autograd import functional as F
from ..errors import ShapeError
from .layers import Linear, as_rng
from .module import Module, Parameter

FORMAT = "tinyllm-lora"
VERSION = 1
_A, _B = "lora_A_", "lora_B_"


class LoRAFunction(Function):
    """The LoRA linear as one node: inputs ``x, W, b, A_0, B_0, A_1, B_1, ...`` (b may be
    None), options ``slices`` ((lo, hi) per adapter) and ``scale`` (s). x (..., in) ->
    y (..., out); the leading dims are flattened to N rows for the GEMMs. Backward: see the
    module docstring (dx, dA_i, dB_i, and dW, db only when asked for)."""

    @staticmethod
    def forward(ctx, x, W, b, *ab, slices, scale):
        floats = [a for a in (x, W, b) + ab if a is not None]
        dt = np.result_type(*floats)
        ctx.dtypes = [a.dtype if a is not None else None for a in (x, W, b) + ab]
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).astype(dt, copy=False)            # (N, in)
        Wd = W.astype(dt, copy=False)
        As = [a.astype(dt, copy=False) for a in ab[0::2]]
        Bs = [a.astype(dt, copy=False) for a in ab[1::2]]
        y = x2 @ Wd                                                         # (N, out)
        if b is not None:
            y += b.astype(dt, copy=False)
        xas = []
        for (lo, hi), A, B in zip(slices, As, Bs):
            xa = x2 @ A                                                     # (N, r)
            y[:, lo:hi] += scale * (xa @ B)                                 # (N, w_i)
            xas.append(xa)
        ctx.save_for_backward(x2, Wd, As, Bs, xas)
        ctx.lead, ctx.slices, ctx.scale, ctx.has_bias = lead, slices, scale, b is not None
        return y.reshape(lead + (W.shape[1],))

    @staticmethod
    def backward(ctx, dout):
        x2, W, As, Bs, xas = ctx.saved
        s, need = ctx.scale, ctx.needs_input_grad
        dy = dout.reshape(-1, dout.shape[-1]).astype(x2.dtype, copy=False)   # (N, out)
        grads = [None] * len(need)
        dx = dy @ W.T if need[0] else None                                  # (N, in)
        for i, ((lo, hi), A, B, xa) in enumerate(zip(ctx.slices, As, Bs, xas)):
            ia, ib = 3 + 2 * i, 4 + 2 * i
            dyi = dy[:, lo:hi]                                              # (N, w_i)
            if need[0] or need[ia]:
                g = dyi @ B.T                                               # (N, r)
                if need[0]:
                    dx += s * (g @ A.T)
                if need[ia]:
                    grads[ia] = s * (x2.T @ g)                              # (in, r)
            if need[ib]:
                grads[ib] = s * (xa.T @ dyi)                                # (r, w_i)
        if need[0]:
            grads[0] = dx.reshape(ctx.lead + (x2.shape[1],))
        if need[1]:
            grads[1] = x2.T @ dy                                            # (in, out)
        if ctx.has_bias and need[2]:
            grads[2] = dy.sum(axis=0)                                       # (out,)
        return tuple(g if g is None or g.dtype == d else g.astype(d)
                     for g, d in zip(grads, ctx.dtypes))


def lora_linear(x, weight, bias, As, Bs, slices, scale: float) -> Tensor:
    """y = x W + b with y[..., lo_i:hi_i] += scale (x A_i) B_i, as one ``LoRAFunction`` node.
    x (..., in), weight (in, out), bias (out,) or None, As[i] (in, r), Bs[i] (r, hi_i - lo_i),
    slices[i] = (lo_i, hi_i)."""
    As, Bs, slices = list(As), list(Bs), [tuple(map(int, sl)) for sl in slices]
    if not (len(As) == len(Bs) == len(slices)):
        raise ValueError(f"lora_linear: {len(As)} A's, {len(Bs)} B's and {len(slices)} slices; "
                         f"they must pair up")
    n_in, n_out = weight.shape
    if x.shape[-1:] != (n_in,):
        raise ShapeError(f"lora_linear: x has shape {tuple(x.shape)}, its last dimension must "
                         f"be {n_in} (weight is {tuple(weight.shape)})")
    if bias is not None and tuple(bias.shape) != (n_out,):
        raise ShapeError(f"lora_linear: bias has shape {tuple(bias.shape)}, expected ({n_out},)")
    for i, (A, B, (lo, hi)) in enumerate(zip(As, Bs, slices)):
        if not 0 <= lo < hi <= n_out:
            raise ValueError(f"lora_linear: slice {i} is ({lo}, {hi}); it must satisfy "
                             f"0 <= lo < hi <= {n_out}")
        if A.ndim != 2 or A.shape[0] != n_in or B.shape != (A.shape[1], hi - lo):
            raise ShapeError(f"lora_linear: adapter {i} has A {tuple(A.shape)} and B "
                             f"{tuple(B.shape)}; for slice ({lo}, {hi}) they must be "
                             f"({n_in}, r) and (r, {hi - lo})")
    ab = [t for pair in zip(As, Bs) for t in pair]
    return LoRAFunction.apply(x, weight, bias, *ab, slices=tuple(slices), scale=float(scale))


def _check_slices(op: str, slices, n_out: int) -> dict[str, tuple[int, int]]:
    if slices is None:
        return {"all": (0, n_out)}
    if not isinstance(slices, dict) or not slices:
        raise TypeError(f"{op}: slices must be a non-empty dict name -> (lo, hi) or None, got "
                        f"{slices!r}")
    out = {}
    for name, sl in slices.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{op}: slice name {name!r} must be an identifier (it becomes "
                             f"part of the parameter names lora_A_<name>, lora_B_<name>)")
        try:
            lo, hi = (int(v) for v in sl)
        except (TypeError, ValueError):
            raise TypeError(f"{op}: slice {name!r} must be a pair (lo, hi) of ints, got "
                            f"{sl!r}") from None
        if not 0 <= lo < hi <= n_out:
            raise ValueError(f"{op}: slice {name!r} is ({lo}, {hi}); it must satisfy "
                             f"0 <= lo < hi <= {n_out} (the base's out_features)")
        for other, (olo, ohi) in out.items():
            if lo < ohi and olo < hi:
                raise ValueError(f"{op}: slices {other!r} ({olo}, {ohi}) and {name!r} "
                                 f"({lo}, {hi}) overlap")
        out[name] = (lo, hi)
    return out


class LoRALinear(Module):
    """``LoRALinear(base, r, alpha, slices=None, rng=None, dtype=None)``: the Linear ``base``
    (its weight and bias kept, frozen) plus one rank-r adapter per named column slice of its
    output (default ``{"all": (0, out)}``), scale alpha / r. x (..., in) -> (..., out), as
    ``base(x)``. ``dtype`` is the adapters' (default: the base weight's); ``rng`` a Generator,
    an int seed or None (the default generator)."""

    def __init__(self, base: Linear, r: int, alpha: float, slices=None, rng=None, dtype=None):
        super().__init__()
        if not isinstance(base, Linear):
            raise TypeError(f"LoRALinear: base must be a tl.nn.Linear, got "
                            f"{type(base).__name__}")
        if not isinstance(r, (int, np.integer)) or isinstance(r, bool) or r < 1:
            raise ValueError(f"LoRALinear: r must be a positive int, got {r!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) \
                or not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"LoRALinear: alpha must be a positive finite number, got "
                             f"{alpha!r}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha = int(r), float(alpha)
        self.scale = self.alpha / self.r
        self.slices = _check_slices("LoRALinear", slices, self.out_features)
        self.weight = base.weight                 # the base's own Parameters: same names,
        self.bias = base.bias                     # same objects; frozen
        self.weight.requires_grad = False
        self.weight.grad = None
        if self.bias is not None:
            self.bias.requires_grad = False
            self.bias.grad = None
        rng = as_rng(rng)
        dt = np.dtype(dtype) if dtype is not None else self.weight.dtype
        for name, (lo, hi) in self.slices.items():
            a = rng.standard_normal((self.in_features, self.r)) / math.sqrt(self.in_features)
            setattr(self, _A + name, Parameter(a.astype(dt)))                     # (in, r)
            setattr(self, _B + name, Parameter(np.zeros((self.r, hi - lo), dt)))  # (r, w)
        self.merged = False
        self._merged_ab = None      # copies of (A, B) per slice, taken by merge()

    def adapters(self) -> list[tuple[str, Parameter, Parameter]]:
        """(slice name, A, B) per slice, in slice order."""
        return [(n, getattr(self, _A + n), getattr(self, _B + n)) for n in self.slices]

    def forward(self, x) -> Tensor:
        if x.shape[-1:] != (self.in_features,):
            raise ShapeError(f"{self._name()}: input has shape {tuple(x.shape)}, its last "
                             f"dimension must be {self.in_features}")
        if self.merged:
            if self.training:
                raise RuntimeError(f"{self._name()}: the adapters are merged into the base "
                                   f"weight; training a merged LoRALinear is refused (call "
                                   f"unmerge() / unmerge_lora(model) to train, or .eval() "
                                   f"to run the merged model)")
            return _base_forward(x, self.weight, self.bias, self.in_features)
        ad = self.adapters()
        return lora_linear(x, self.weight, self.bias, [a for _, a, _ in ad],
                           [b for _, _, b in ad], list(self.slices.values()), self.scale)

    def _delta(self, A, B) -> np.ndarray:
        return (self.scale * (A @ B)).astype(self.weight.dtype)           # (in, w)

    def merge(self) -> None:
        """W[:, lo:hi] += s A B for every slice, in place; the forward is then the base's."""
        if self.merged:
            raise RuntimeError(f"{self._name()}: already merged; merging twice would add the "
                               f"adapters twice (unmerge() first)")
        saved = {}
        for name, A, B in self.adapters():
            lo, hi = self.slices[name]
            saved[name] = (A.data.copy(), B.data.copy())
            self.weight.data[:, lo:hi] += self._delta(*saved[name])
        self._merged_ab, self.merged = saved, True

    def unmerge(self) -> None:
        """Subtract what ``merge()`` added (from the A, B it saw), so W is back within
        rounding and the adapters act separately again."""
        if not self.merged:
            raise RuntimeError(f"{self._name()}: not merged; nothing to unmerge")
        for name, (A, B) in self._merged_ab.items():
            lo, hi = self.slices[name]
            self.weight.data[:, lo:hi] -= self._delta(A, B)
        self._merged_ab, self.merged = None, False

    def _name(self) -> str:
        return f"LoRALinear({self.in_features}, {self.out_features}, r={self.r})"

    def extra_repr(self) -> str:
        sl = ", ".join(f"{n}=({lo}, {hi})" for n, (lo, hi) in self.slices.items())
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
                f"r={self.r}, alpha={self.alpha:g}, slices={{{sl}}}"
                + (", merged" if self.merged else ""))

    def __repr__(self):
        return f"LoRALinear({self.extra_repr()})"


def _base_forward(x, weight, bias, n_in) -> Tensor:
    """The plain Linear forward (one (N, in) @ (in, out) GEMM), as ``Linear.forward``."""
    if x.ndim <= 2:
        return F.linear(x, weight, bias)
    lead = tuple(x.shape[:-1])
    y = F.linear(x.reshape((-1, n_in)), weight, bias)
    return y.reshape(lead + (weight.shape[1],))


# ------------------------------------------------------------------ model-level helpers
def lora_modules(model: Module) -> dict[str, LoRALinear]:
    """Dotted path -> LoRALinear for every one in the model, in module order."""
    return {p: m for p, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: Module, targets: dict, r: int, alpha: float, seed=0) -> list[str]:
    """Replace the Linear at each dotted module path of ``targets`` (path -> slices dict, or
    None for the whole output) by a ``LoRALinear`` with rank r, scale alpha / r, in place.
    The adapters are drawn from one Generator seeded with ``seed``, in the order of
    ``targets``. Returns the adapter parameter names (``<path>.lora_A_<slice>``, ...).
    Every path is checked before anything is replaced."""
    if not isinstance(targets, dict) or not targets:
        raise TypeError(f"apply_lora: targets must be a non-empty dict path -> slices, got "
                        f"{targets!r}")
    bases = {}
    for path, slices in targets.items():
        if not isinstance(path, str) or not path:
            raise KeyError(f"apply_lora: target {path!r} must be a non-empty dotted path "
                           f"(\"encoder.layer.0.attention.qkv\")")
        try:
            m = model.get_submodule(path)
        except KeyError as e:
            raise KeyError(f"apply_lora: no module at {path!r} ({e.args[0]})") from None
        if isinstance(m, LoRALinear):
            raise TypeError(f"apply_lora: {path!r} already has LoRA adapters")
        if not isinstance(m, Linear):
            raise TypeError(f"apply_lora: {path!r} is a {type(m).__name__}, not a Linear")
        _check_slices(f"apply_lora: {path!r}", slices, m.out_features)
        bases[path] = m
    rng = np.random.default_rng(seed)
    names = []
    for path, slices in targets.items():
        new = LoRALinear(bases[path], r, alpha, slices, rng=rng)
        model.set_submodule(path, new)
        for n, _, _ in new.adapters():
            names += [f"{path}.{_A}{n}", f"{path}.{_B}{n}"]
    return names


def lora_state_dict(model: Module) -> dict[str, np.ndarray]:
    """The adapters only: ``<path>.lora_A_<slice>`` / ``lora_B_<slice>`` -> a copy."""
    out = {}
    for path, m in lora_modules(model).items():
        for n, A, B in m.adapters():
            out[f"{path}.{_A}{n}"] = A.data.copy()
            out[f"{path}.{_B}{n}"] = B.data.copy()
    return out


def _layout(model: Module) -> dict:
    return {path: {"r": m.r, "alpha": m.alpha,
                   "slices": {n: [lo, hi] for n, (lo, hi) in m.slices.items()}}
            for path, m in lora_modules(model).items()}


def _need_lora(op: str, model: Module) -> dict[str, LoRALinear]:
    mods = lora_modules(model)
    if not mods:
        raise ValueError(f"{op}: the model has no LoRALinear (call apply_lora first)")
    return mods


def _write_atomic(path: str, data: bytes) -> str:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def save_adapters(model: Module, path: str) -> str:
    """Write the adapters to the folder ``path`` (created): ``adapters.safetensors`` (the
    arrays of ``lora_state_dict``) and ``adapters.json`` (format, r, alpha, targets, per-module
    layout, the array file's SHA-256), each written to a temporary file and renamed, the JSON
    last. Returns the folder. Saving a merged model is fine (the adapters are unchanged)."""
    from safetensors.numpy import save
    _need_lora("save_adapters", model)
    layout = _layout(model)
    rs = {v["r"] for v in layout.values()}
    alphas = {v["alpha"] for v in layout.values()}
    os.makedirs(path, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in lora_state_dict(model).items()}
    digest = _write_atomic(os.path.join(path, "adapters.safetensors"), save(arrays))
    meta = {"format": FORMAT, "version": VERSION,
            "r": rs.pop() if len(rs) == 1 else None,
            "alpha": alphas.pop() if len(alphas) == 1 else None,
            "targets": {p: v["slices"] for p, v in layout.items()},
            "modules": layout, "sha256": digest}
    _write_atomic(os.path.join(path, "adapters.json"), json.dumps(meta, indent=1).encode())
    return path


def load_adapters(model: Module, path: str) -> list[str]:
    """Copy the adapters saved in folder ``path`` into ``model``'s LoRALinears (in place, in
    their dtype); returns the names loaded. The model must carry the same adapters (paths,
    slices, r, alpha): otherwise a ValueError lists every difference, and nothing is changed.
    Refused while merged (unmerge first)."""
    from safetensors.numpy import load
    mods = _need_lora("load_adapters", model)
    merged = [p for p, m in mods.items() if m.merged]
    if merged:
        raise RuntimeError(f"load_adapters: {', '.join(merged)} are merged; unmerge_lora(model) "
                           f"before loading adapters")
    jpath, tpath = os.path.join(path, "adapters.json"), os.path.join(path, "adapters.safetensors")
    for p in (jpath, tpath):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"load_adapters: {p} does not exist (save_adapters writes "
                                    f"adapters.json and adapters.safetensors)")
    try:
        with open(jpath, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except ValueError as e:
        raise ValueError(f"load_adapters: {jpath} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"load_adapters: {jpath} is not a {FORMAT} file")
    if meta.get("version") != VERSION:
        raise ValueError(f"load_adapters: {jpath} has version {meta.get('version')!r}; this "
                         f"tinyllm reads version {VERSION}")
    saved, own = meta.get("modules", {}), _layout(model)
    diffs = [f"{p}: in the file, not in the model" for p in saved if p not in own]
    diffs += [f"{p}: in the model, not in the file" for p in own if p not in saved]
    for p in own:
        if p in saved:
            for key in ("r", "alpha", "slices"):
                if saved[p].get(key) != own[p][key]:
                    diffs.append(f"{p}: {key} is {saved[p].get(key)!r} in the file but "
                                 f"{own[p][key]!r} in the model")
    if diffs:
        raise ValueError(f"load_adapters: {path}: the adapters do not match the model: "
                         + "; ".join(diffs))
    with open(tpath, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise ValueError(f"load_adapters: {tpath} does not match the SHA-256 in adapters.json "
                         f"(truncated, corrupted, or from another save)")
    arrays = load(data)
    targets = {}
    for p, m in mods.items():
        for n, A, B in m.adapters():
            targets[f"{p}.{_A}{n}"], targets[f"{p}.{_B}{n}"] = A, B
    missing = [k for k in targets if k not in arrays]
    extra = [k for k in arrays if k not in targets]
    bad = [f"{k} {arrays[k].shape} vs {targets[k].shape}" for k in targets
           if k in arrays and arrays[k].shape != targets[k].shape]
    bad += [f"{k} has dtype {arrays[k].dtype}" for k in targets
            if k in arrays and arrays[k].dtype.kind != "f"]
    if missing or extra or bad:
        raise ValueError(f"load_adapters: {tpath}: "
                         + "; ".join(filter(None, [
                             missing and f"missing {', '.join(missing)}",
                             extra and f"unexpected {', '.join(extra)}",
                             bad and f"bad arrays: {', '.join(bad)}"])))
    for k, t in targets.items():
        t.data[...] = arrays[k]
    return list(targets)


def merge_lora(model: Module) -> list[str]:
    """``merge()`` every LoRALinear (none may be merged already); returns their paths."""
    mods = _need_lora("merge_lora", model)
    already = [p for p, m in mods.items() if m.merged]
    if already:
        raise RuntimeError(f"merge_lora: {', '.join(already)} already merged")
    for m in mods.values():
        m.merge()
    return list(mods)


def unmerge_lora(model: Module) -> list[str]:
    """``unmerge()`` every LoRALinear (all must be merged); returns their paths."""
    mods = _need_lora("unmerge_lora", model)
    not_merged = [p for p, m in mods.items() if not m.merged]
    if not_merged:
        raise RuntimeError(f"unmerge_lora: {', '.join(not_merged)} not merged")
    for m in mods.values():
        m.unmerge()
    return list(mods)
