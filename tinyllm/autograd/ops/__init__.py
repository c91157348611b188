"""The primitive ops: each a Function with its forward and backward side by side.

Shapes in comments: ``x`` is the input, ``out`` the output, ``dout`` the upstream gradient and
``dx`` the gradient the op returns. Broadcasting follows NumPy; ``unbroadcast`` sums a gradient
back down to an input's shape.

    arith.py        + - * / neg, ** with a scalar exponent, @
    elementwise.py  exp log sqrt tanh sigmoid relu gelu
    reduce.py       sum mean max var
    shape.py        reshape transpose swapaxes, indexing, concat stack split
    select.py       where masked_fill embedding dropout
"""
from ._util import broadcast_shape, lift, normalize_axes, unbroadcast
from .arith import add, div, linear, matmul, mul, neg, pow, rpow, sub
from .elementwise import exp, gelu, log, relu, sigmoid, sqrt, tanh
from .reduce import max, mean, sum, var
from .select import dropout, embedding, masked_fill, where
from .shape import (concat, getitem, permute, reshape, split, split_heads, stack, swapaxes,
                    transpose)

__all__ = ["broadcast_shape", "lift", "normalize_axes", "unbroadcast", "add", "sub", "mul", "div",
           "neg", "pow", "rpow", "matmul", "linear", "exp", "log", "sqrt", "tanh", "sigmoid",
           "relu", "gelu", "sum", "mean", "max", "var", "reshape", "transpose", "permute",
           "swapaxes", "getitem", "concat", "stack", "split", "split_heads", "where",
           "masked_fill", "embedding", "dropout"]
