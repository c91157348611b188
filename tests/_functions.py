"""Custom Functions that several test files use: a right cube and a planted wrong one."""
import tinyllm as tl


class Cube(tl.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x * x

    @staticmethod
    def backward(ctx, dout):
        (x,) = ctx.saved
        return 3 * x * x * dout


class WrongCube(Cube):
    """x^3 with a planted wrong derivative: 2x^2 instead of 3x^2."""

    @staticmethod
    def backward(ctx, dout):
        (x,) = ctx.saved
        return 2 * x * x * dout
