"""Moving a tensor between devices as a graph op.

    out = copy of x on device d          (forward: one transfer)
    dx  = copy of dout on x's device     (backward: the transfer back)

So ``x.to("cuda")`` is differentiable, as in PyTorch: a loss computed on the device sends
its gradient to the host leaf it came from. A tensor already on ``d`` is returned itself.
"""
from __future__ import annotations

from ... import backend
from ..tensor import Function, Tensor


class ToDevice(Function):
    _moves = True

    @staticmethod
    def forward(ctx, x, device):
        ctx.source = backend.device_of(x)
        return backend.to_device(x, device)          # a copy (x is not on device)

    @staticmethod
    def backward(ctx, dout):
        return backend.to_device(dout, ctx.source), None


def to_device(x, device):
    """``x`` (a Tensor) on ``device``: x itself if it is there, else a differentiable copy."""
    device = backend.check_device(device, "Tensor.to")
    if not isinstance(x, Tensor):
        raise TypeError(f"to_device: expected a Tensor, got {type(x).__name__}")
    if x.device == device:
        return x
    if device == "cuda":
        backend.require_cuda("Tensor.to('cuda')")
    return ToDevice.apply(x, device)
