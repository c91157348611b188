"""The primitive ops: each a Function with its forward and backward side by side.

Shapes in comments: ``x`` is the input, ``out`` the output, ``dout`` the upstream gradient and
``dx`` the gradient the op returns. Broadcasting follows NumPy; ``unbroadcast`` sums a gradient
back down to an input's shape.

    arith.py        + - * / neg, ** with a scalar exponent, @
    elementwise.py  exp log sqrt tanh sigmoid relu gelu
    reduce.py       sum mean max var
    shape.py        reshape transpose swapaxes, indexing, concat stack split
    select.py       where masked_fill embedding dropout
    device.py       to_device (Tensor.to, a differentiable copy between devices)

Device rule: an op allocates on its inputs' device (``xp(a).zeros``, ``zeros_like``), never
with a bare ``np.zeros``; no ``np.add.at`` on a device (a GPU scatter sums with atomics, in
no fixed order): scatters there are a sort and a segment sum (``select._segment_sum``).
"""
from ._util import broadcast_shape, lift, normalize_axes, unbroadcast
from .device import to_device
from .arith import add, div, linear, matmul, mul, neg, pow, rpow, sub
from .elementwise import exp, gelu, log, relu, sigmoid, sqrt, tanh
from .reduce import max, mean, sum, var
from .select import dropout, embedding, masked_fill, where
from .shape import (concat, getitem, permute, reshape, split, split_heads, stack, swapaxes,
                    transpose)

__all__ = ["broadcast_shape", "lift", "normalize_axes", "unbroadcast", "add", "sub", "mul",
           "div", "neg", "pow", "rpow", "matmul", "linear", "exp", "log", "sqrt", "tanh", "sigmoid",
           "relu", "gelu", "sum", "mean", "max", "var", "reshape", "transpose", "permute",
           "swapaxes", "getitem", "concat", "stack", "split", "split_heads", "where",
           "masked_fill", "embedding", "dropout", "to_device"]
