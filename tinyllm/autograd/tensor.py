"""Tensor, Function and the reverse-mode engine.

A Tensor wraps a NumPy array (``.data``) and, once ``backward()`` has run, the gradient of the
output with respect to it (``.grad``, an ndarray of the same shape and dtype). Every operation
is a ``Function``: ``forward`` maps arrays to an array (or to a tuple of arrays: an op with
several outputs), ``backward`` maps the upstream gradient of each output to one gradient per
input. ``Function.apply`` runs the forward and records the graph; ``Tensor.backward`` walks it
from the output back to the leaves, running each op's backward once, after every use of every
one of its outputs has sent its gradient.

dtypes: float32 and float64 are kept as they are. Python lists and Python numbers become
float32. Integer and boolean arrays are allowed as data (indices, masks) but cannot require
grad. Python and NumPy *scalars* are weak: ``x * 2.0`` and ``x * np.float64(2)`` stay in x's
dtype. Two arrays or Tensors follow NumPy promotion: float32 with float64 gives float64, and the
float32 input still receives a float32 gradient. ``Tensor(ndarray)`` wraps the array without
copying it, as ``torch.from_numpy`` does.

Python numbers: ``float(t)``, ``int(t)`` and ``bool(t)`` work on one-element tensors, as in
PyTorch, and name the shape otherwise. ``argmax`` gives a plain int64 ndarray and the
comparisons (``t > 0``) a boolean one: indices and masks have no gradient. ``view`` is
``reshape`` (a new array, not a view sharing a gradient).

Devices (``tinyllm.backend``): ``Tensor(data, device="cuda")``, ``t.device``, ``t.to(d)`` and
``t.cpu()``. ``to`` is a differentiable copy (an op: the gradient flows back to the source's
device), ``t`` itself when it is on ``d`` already. ``t.numpy()`` on cuda raises, naming
``.cpu()``. Tensors of one op must share a device (DeviceError naming both); non-Tensor host
arrays passed to an op (indices, targets, masks) are copied to the op's device.

Left out on purpose: in-place ops, views that share a gradient, higher-order gradients (the
backward pass is not itself recorded).
"""
from __future__ import annotations

import contextlib
import os
import time
import traceback

import numpy as np

from .. import backend as _dev
from ..errors import AnomalyError, DeviceError, ShapeError
from ..stopwatch import OpProfile, fresh_bytes
from ..precision import _ACTIVE as _PRECISION   # tl.precision.everywhere's output rounding

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

_state = {"grad": True, "anomaly": False}


class no_grad(contextlib.ContextDecorator):
    """Ops inside ``with tl.no_grad():`` record no graph. Also a decorator, with or without
    parentheses: ``@tl.no_grad`` and ``@tl.no_grad()``."""

    def __new__(cls, fn=None):
        self = super().__new__(cls)
        return self(fn) if fn is not None else self

    def _recreate_cm(self):      # a fresh one per call, so recursion restores correctly
        return no_grad()

    def __enter__(self):
        self.prev = _state["grad"]
        _state["grad"] = False
        return self

    def __exit__(self, *exc):
        _state["grad"] = self.prev
        return False


def is_grad_enabled() -> bool:
    return _state["grad"]


@contextlib.contextmanager
def detect_anomaly():
    """Context manager: the first op whose forward or backward makes NaN or Inf raises
    ``AnomalyError`` naming the op, where it was called and where its inputs were created.
    Tensors remember their creation site only while this is on (it costs a stack walk)."""
    prev = _state["anomaly"]
    _state["anomaly"] = True
    try:
        yield
    finally:
        _state["anomaly"] = prev


_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _user_site() -> str:
    """file:line of the innermost stack frame outside the tinyllm package."""
    for frame in reversed(traceback.extract_stack()):
        if not os.path.abspath(frame.filename).startswith(_PKG_DIR):
            return f"{frame.filename}:{frame.lineno}"
    return "<unknown>"


def _to_array(data) -> np.ndarray:
    """Validate and convert constructor input. Lists and Python numbers become float32."""
    if isinstance(data, Tensor):
        return data.data
    if isinstance(data, np.ndarray):
        arr = data
    elif isinstance(data, np.generic):
        # before the Python-number branch: np.float64 is a subclass of float, and a NumPy
        # scalar keeps its own dtype
        arr = np.asarray(data)
    elif isinstance(data, (list, tuple, bool, int, float)):
        try:
            arr = np.array(data, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise TypeError(f"Tensor: cannot turn {type(data).__name__} into float32 "
                            f"numbers ({e})") from None
    elif _dev.is_device(data):                     # a CuPy array
        arr = data
    else:
        raise TypeError(f"Tensor: data must be an ndarray, a list or a number, "
                        f"got {type(data).__name__}")
    kind = arr.dtype.kind
    if kind == "f" and arr.dtype not in _FLOATS:
        raise TypeError(f"Tensor: float dtype {arr.dtype} is not supported; "
                        f"use float32 or float64")
    if kind not in "fiub":
        raise TypeError(f"Tensor: data must be numeric, got dtype {arr.dtype}")
    return arr


class Tensor:
    """An ndarray with a gradient. See the module docstring for the dtype rules."""

    __array_priority__ = 1000  # so ndarray (op) Tensor defers to Tensor's reflected op

    def __init__(self, data, requires_grad: bool = False, device: str | None = None):
        self.data = _to_array(data)
        if device is not None:
            self.data = _dev.to_device(self.data, device)
        if requires_grad and self.data.dtype not in _FLOATS:
            raise TypeError(f"Tensor: only float32/float64 tensors can require grad, "
                            f"got {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad = None       # ndarray, filled by backward()
        self._ctx = None       # the Context of the op that made this tensor, if recorded
        self._out = 0          # which output of that op this tensor is
        self._retain = False   # keep .grad on a non-leaf (retain_grad)
        self._origin = _user_site() if _state["anomaly"] else None

    @classmethod
    def _wrap(cls, arr: np.ndarray, requires_grad: bool) -> "Tensor":
        """Fast constructor for op outputs: arr is already a valid ndarray."""
        t = cls.__new__(cls)
        t.data = arr
        t.requires_grad = requires_grad
        t.grad = None
        t._ctx = None
        t._out = 0
        t._retain = False
        t._origin = _user_site() if _state["anomaly"] else None
        return t

    # --- plain properties -------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self._ctx is None)
    device = property(lambda self: _dev.device_of(self.data))     # "cpu" | "cuda"

    def to(self, device: str) -> "Tensor":
        """This tensor on ``device``: itself if it is there, else a differentiable copy."""
        return _ops.to_device(self, device)

    def cpu(self) -> "Tensor":
        return _ops.to_device(self, "cpu")

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        grad += ", device='cuda'" if self.device == "cuda" else ""
        data = _dev.host_view(self.data)
        return f"Tensor({np.array2string(data, precision=4, threshold=20)}{grad})"

    def numpy(self) -> np.ndarray:
        if self.device != "cpu":
            raise DeviceError(f"Tensor.numpy: the tensor is on {self.device}; copy it to the "
                              f"host first: t.cpu().numpy()")
        return self.data

    def item(self):
        return self.data.item()

    # Python numbers from one-element tensors, as in PyTorch: float(loss), int(t), bool(t).
    def _scalar(self, what: str):
        if self.data.size != 1:
            raise TypeError(f"{what}: only a one-element tensor can be converted to a Python "
                            f"scalar, got shape {self.shape}; use .item() on one element, "
                            f".numpy() for the array")
        return self.data.item()

    def __float__(self): return float(self._scalar("float(tensor)"))
    def __int__(self): return int(self._scalar("int(tensor)"))

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"bool(tensor): the truth value of a tensor of shape {self.shape} "
                             f"is ambiguous; use (t != 0).any() or .all()")
        return bool(self.data.item())

    def argmax(self, axis=None, keepdims: bool = False) -> np.ndarray:
        """Indices of the largest entries (over the flattened tensor when ``axis`` is None)
        as a plain int64 ndarray, not a Tensor: like the comparisons, an index has no
        gradient (PyTorch returns a LongTensor without grad). ``int(t.argmax())`` gives a
        Python int."""
        return np.argmax(self.data, axis=axis, keepdims=keepdims).astype(np.int64)

    def detach(self) -> "Tensor":
        """The same data, cut from the graph (no copy)."""
        return Tensor._wrap(self.data, False)

    def retain_grad(self) -> "Tensor":
        """Keep ``.grad`` on this non-leaf tensor after backward (for teaching and debugging)."""
        self._retain = True
        return self

    def zero_grad(self) -> None:
        self.grad = None

    # --- backward ---------------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``grad`` is the upstream gradient; it may be omitted only for a one-element tensor.
        The graph's saved buffers are freed afterwards unless ``retain_graph=True``.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad (no input had "
                               "requires_grad=True, or it was computed under no_grad())")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward: output has shape {self.shape}; pass a gradient "
                                   f"of that shape, or reduce the output to a scalar first")
            grad = np.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            grad = _dev.to_device(grad if _dev.is_array(grad) else np.asarray(grad),
                                  self.device)
            if grad.dtype.kind not in "fiub":
                raise TypeError(f"backward: the gradient must be numeric, got dtype {grad.dtype}")
            grad = grad.astype(self.dtype, copy=False)
            if grad.shape != self.shape:
                raise ShapeError(f"backward: gradient shape {grad.shape} does not match "
                                 f"tensor shape {self.shape}")
        # Gradients wait in two places until everything upstream of them has been summed:
        # per op output, ``node_grads[id(ctx)][i]`` (what the op's backward receives), and per
        # leaf or retain_grad tensor, ``tensor_grads[id(t)]`` (what lands in ``t.grad``).
        node_grads, tensor_grads = {}, {}
        _send(self, grad, node_grads, tensor_grads)
        for ctx in self._reverse_topo():
            douts = node_grads.pop(id(ctx), None)
            if douts is None:
                continue
            _backward_node(ctx, douts, node_grads, tensor_grads)
            if not retain_graph:
                ctx.free()
        for t, g in tensor_grads.values():
            t._accumulate(g)

    def _accumulate(self, g: np.ndarray) -> None:
        if self.grad is None:
            self.grad = g.astype(self.dtype, copy=True)     # on g's device
        else:
            self.grad += g

    def _reverse_topo(self) -> list:
        """The ops from this output back to the leaves, each before the ops that made its
        inputs (so each runs after all of its consumers). An op with several outputs is one
        node, however many of its outputs lead here.

        Iterative depth-first search, so a 10,000-deep chain cannot hit the recursion limit.
        A freed op is listed (its backward then says so) but not walked through.
        """
        if self._ctx is None:
            return []
        order, seen = [], set()
        stack = [(self._ctx, False)]
        while stack:
            ctx, expanded = stack.pop()
            if expanded:
                order.append(ctx)
                continue
            if id(ctx) in seen:
                continue
            seen.add(id(ctx))
            stack.append((ctx, True))
            if not ctx.freed:
                for p in ctx.parents:
                    if p is not None and p._ctx is not None and id(p._ctx) not in seen:
                        stack.append((p._ctx, False))
        order.reverse()
        return order

    # --- operator sugar (one-liners over the primitives in ops/) --------------------
    def __add__(self, other): return _ops.add(self, other)
    def __radd__(self, other): return _ops.add(other, self)
    def __sub__(self, other): return _ops.sub(self, other)
    def __rsub__(self, other): return _ops.sub(other, self)
    def __mul__(self, other): return _ops.mul(self, other)
    def __rmul__(self, other): return _ops.mul(other, self)
    def __truediv__(self, other): return _ops.div(self, other)
    def __rtruediv__(self, other): return _ops.div(other, self)
    def __pow__(self, p): return _ops.pow(self, p)
    def __rpow__(self, base): return _ops.rpow(base, self)
    def __neg__(self): return _ops.neg(self)
    def __matmul__(self, other): return _ops.matmul(self, other)
    def __rmatmul__(self, other): return _ops.matmul(other, self)
    def __getitem__(self, idx): return _ops.getitem(self, idx)

    def exp(self): return _ops.exp(self)
    def log(self): return _ops.log(self)
    def sqrt(self): return _ops.sqrt(self)
    def tanh(self): return _ops.tanh(self)
    def sigmoid(self): return _ops.sigmoid(self)
    def relu(self): return _ops.relu(self)
    def sum(self, axis=None, keepdims=False): return _ops.sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return _ops.mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return _ops.max(self, axis, keepdims)
    def var(self, axis=None, keepdims=False, ddof=0): return _ops.var(self, axis, keepdims, ddof)
    def reshape(self, *shape): return _ops.reshape(self, *shape)
    def view(self, *shape): return _ops.reshape(self, *shape)     # a reshape: no shared storage

    def softmax(self, axis=-1):
        from .functional import softmax     # functional imports this module
        return softmax(self, axis)
    def transpose(self, *axes): return _ops.transpose(self, *axes)
    def permute(self, *axes): return _ops.transpose(self, *axes)
    def swapaxes(self, a1, a2): return _ops.swapaxes(self, a1, a2)
    T = property(lambda self: _ops.transpose(self))

    # Comparisons give plain boolean arrays (masks), not Tensors: they have no gradient.
    def __lt__(self, other): return self.data < _data(other)
    def __le__(self, other): return self.data <= _data(other)
    def __gt__(self, other): return self.data > _data(other)
    def __ge__(self, other): return self.data >= _data(other)
    __hash__ = object.__hash__


def _data(x):
    return x.data if isinstance(x, Tensor) else x


class Context:
    """What a Function's forward leaves for its backward.

    ``save_for_backward(*arrays)`` stores arrays in ``saved``; any other attribute may be set
    freely (``ctx.axis = axis``). ``needs_input_grad[i]`` says whether input i wants a gradient.
    ``n_outputs`` is how many outputs the forward returned (set by ``apply``; 1 for an array).
    """

    def __init__(self, op, parents, needs_input_grad):
        self.op = op
        self.parents = parents
        self.needs_input_grad = needs_input_grad
        self.saved = ()
        self.n_outputs = 1
        self.freed = False
        self.site = _user_site() if _state["anomaly"] else None

    def save_for_backward(self, *arrays) -> None:
        self.saved = arrays

    def free(self) -> None:
        """Drop the saved buffers and the links to the inputs."""
        op, n = self.op, self.n_outputs
        self.__dict__.clear()
        self.op, self.n_outputs = op, n
        self.freed = True


class Function:
    """Base class of every op, built-in or custom.

    Subclass it with two static methods::

        class Cube(tl.Function):
            @staticmethod
            def forward(ctx, x):            # plain ndarrays in, one ndarray out
                ctx.save_for_backward(x)
                return x * x * x
            @staticmethod
            def backward(ctx, dout):        # one gradient per positional input (None = none)
                (x,) = ctx.saved
                return 3 * x * x * dout

        y = Cube.apply(t)

    ``backward`` must not modify ``dout`` in place: the engine may hand the same array to
    several inputs' gradients.

    Several outputs: a forward that returns a tuple of arrays makes ``apply`` return a tuple
    of Tensors, one per array, and ``backward(ctx, *douts)`` then receives one upstream
    gradient per output, in the same order. An output that sent no gradient (it was not used
    on the way to what ``backward()`` was called on) gets ``None``, not an array of zeros, so
    the op can skip that part of its work; at least one of them is always an array. Outputs
    used several times have their gradients summed first, as for any tensor::

        class SinCos(tl.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return np.sin(x), np.cos(x)
            @staticmethod
            def backward(ctx, ds, dc):      # either may be None
                (x,) = ctx.saved
                g = np.zeros_like(x)
                if ds is not None: g = g + ds * np.cos(x)
                if dc is not None: g = g - dc * np.sin(x)
                return g

        s, c = SinCos.apply(t)

    Positional arguments that are Tensors take part in the graph; anything else (integer
    arrays, masks, numbers) is passed to forward as it is and gets ``None`` as its gradient.
    Keyword arguments are passed to forward as options.
    """

    _moves = False          # True for the one op whose output leaves its inputs' device

    @staticmethod
    def forward(ctx: Context, *arrays, **options):
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Context, *douts):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **options):
        arrays = tuple(a.data if isinstance(a, Tensor) else a for a in args)
        dev = "cpu"
        if any(type(a) is not np.ndarray and _dev.is_device(a) for a in arrays):
            dev = _dev.op_device(cls.__name__, arrays, [isinstance(a, Tensor) for a in args])
            arrays = tuple(_dev.follow(a, dev) for a in arrays)
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        track = _state["grad"] and any(needs)
        parents = tuple(a if n else None for a, n in zip(args, needs))
        ctx = Context(cls, parents, needs)
        prof = OpProfile._active                 # tinyllm bench --profile: None otherwise
        if prof is not None:
            prof.node = f"{options['kernel']} (kernel)" if "kernel" in options else cls.__name__
            t0 = time.perf_counter()
        out = cls.forward(ctx, *arrays, **options)
        several = isinstance(out, tuple)
        outs = out if several else (out,)
        if several and not outs:
            raise RuntimeError(f"{cls.__name__}.forward returned an empty tuple; it must "
                               f"return an array or a tuple of arrays")
        outs = tuple(o if _dev.is_array(o) else np.asarray(o) for o in outs)
        if prof is not None:
            prof.add(prof.node, time.perf_counter() - t0, fresh_bytes(outs))
            prof.node = None
        if dev != "cpu" and not cls._moves and not all(_dev.is_device(o) for o in outs):
            raise DeviceError(f"{cls.__name__}.forward returned a host array for {dev} inputs")
        rnd = _PRECISION["round"]
        if rnd is not None:     # inside tl.precision.everywhere(fmt): round every output
            outs = tuple(rnd(o) for o in outs)
        ctx.n_outputs = len(outs)
        results = []
        for i, o in enumerate(outs):
            if _state["anomaly"]:
                which = f"output {i}" if several else "its output"
                _check_finite(o, f"{cls.__name__} forward produced {{bad}} in {which}", ctx,
                              args, passed=arrays)
            r = Tensor._wrap(o, track)
            if track:
                r._ctx, r._out = ctx, i
            results.append(r)
        return tuple(results) if several else results[0]


def _op_name(ctx: Context) -> str:
    """A node's name in a profile: its Function's, or for a kernel node the kernel's."""
    k = ctx.__dict__.get("kernel")
    return f"{k.name} (kernel)" if getattr(k, "name", None) else ctx.op.__name__


def _send(t: Tensor, g: np.ndarray, node_grads: dict, tensor_grads: dict) -> None:
    """Add gradient g into what tensor t has received: into its op's slot for t's output,
    and, for a leaf or a ``retain_grad`` tensor, into what will land in ``t.grad``."""
    if t._ctx is None or t._retain:
        key = id(t)
        if key in tensor_grads:
            tensor_grads[key][1] = tensor_grads[key][1] + g
        else:
            tensor_grads[key] = [t, g]
    if t._ctx is not None:
        slots = node_grads.get(id(t._ctx))
        if slots is None:
            slots = node_grads[id(t._ctx)] = [None] * t._ctx.n_outputs
        i = t._out
        slots[i] = g if slots[i] is None else slots[i] + g


def _backward_node(ctx: Context, douts: list, node_grads: dict, tensor_grads: dict) -> None:
    """Run one op's backward on its outputs' summed gradients (None where an output got
    none) and send each input's gradient on."""
    if ctx.freed:
        raise RuntimeError(f"backward: the graph through {ctx.op.__name__} was already freed "
                           f"by an earlier backward(); pass retain_graph=True to the first call")
    prof = OpProfile._active
    if prof is not None:
        prof.node = _op_name(ctx)
        t0 = time.perf_counter()
    in_grads = ctx.op.backward(ctx, *douts)
    if not isinstance(in_grads, (tuple, list)):
        in_grads = (in_grads,)
    if prof is not None:
        prof.add(prof.node, time.perf_counter() - t0, fresh_bytes(in_grads))
        prof.node = None
    if len(in_grads) != len(ctx.parents):
        raise RuntimeError(f"{ctx.op.__name__}.backward returned {len(in_grads)} gradients "
                           f"for {len(ctx.parents)} inputs")
    passed = tuple(d for d in douts if d is not None)
    for i, (p, g) in enumerate(zip(ctx.parents, in_grads)):
        if p is None or g is None:
            continue
        g = g if _dev.is_array(g) else np.asarray(g)
        if (type(g) is not np.ndarray or type(p.data) is not np.ndarray) \
                and _dev.device_of(g) != p.device:
            raise DeviceError(f"{ctx.op.__name__}.backward: the gradient of input {i} is on "
                              f"{_dev.device_of(g)}, the input on {p.device}")
        if g.shape != p.shape:
            raise ShapeError(f"{ctx.op.__name__}.backward: gradient for input {i} has shape "
                             f"{g.shape}, but the input has shape {p.shape}")
        if g.dtype != p.dtype:
            g = g.astype(p.dtype)
        if _state["anomaly"]:
            _check_finite(g, f"{ctx.op.__name__} backward produced {{bad}} in the gradient of "
                             f"input {i}", ctx, ctx.parents, passed=passed)
        _send(p, g, node_grads, tensor_grads)


_KINDS = {"NaN": np.isnan, "+Inf": np.isposinf, "-Inf": np.isneginf}


def _new_nonfinite(out: np.ndarray, inputs) -> list:
    """The kinds of non-finite value (NaN, +Inf, -Inf) that ``out`` holds at a position where
    no input held the same kind: those the op made, as opposed to passed on.

    An input that broadcasts to out's shape is matched position by position; any other input
    (a reduction's, a matmul's) excuses its kinds everywhere.
    """
    if out.dtype.kind != "f" or np.isfinite(out).all():
        return []
    arrays = [np.asarray(a) for a in inputs
              if isinstance(a, (float, np.floating)) or
              (isinstance(a, np.ndarray) and a.dtype.kind == "f")]
    new = []
    for kind, test in _KINDS.items():
        made = test(out)
        for a in arrays:
            if not made.any():
                break
            try:
                same_shape = np.broadcast_shapes(a.shape, out.shape) == out.shape
            except ValueError:
                same_shape = False
            if same_shape:
                made &= ~np.broadcast_to(test(a), out.shape)
            elif test(a).any():
                made[...] = False
        if made.any():
            new.append(kind)
    return new


def _check_finite(arr: np.ndarray, what: str, ctx: Context, inputs, passed=()) -> None:
    """Raise AnomalyError if ``arr`` holds a NaN or Inf that the op made itself.

    What is passed on from ``passed`` (the op's inputs, or its upstream gradient) is not an
    anomaly: a -inf attention mask flowing through a softmax is fine, exp overflowing to +inf
    or -inf minus -inf making NaN is not.
    """
    new = _new_nonfinite(_dev.to_host(arr), [_dev.to_host(a) for a in passed])
    if not new:
        return
    bad = " and ".join(new)
    sites = [f"input {i} created at {t._origin or '<unknown>'}"
             for i, t in enumerate(inputs) if isinstance(t, Tensor)]
    raise AnomalyError(f"{what.format(bad=bad)}; the op was called at {ctx.site}; "
                       + "; ".join(sites))


from . import ops as _ops  # noqa: E402  (ops needs Tensor and Function defined first)
