"""Exceptions that tinyllm raises on bad input.

Every layer imports from here, so this module imports nothing from tinyllm.
"""


class ShapeError(ValueError):
    """Shapes that an operation cannot combine. The message names the op and the shapes."""


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with finite differences.

    Attributes (also in the message): ``input_index``, ``index`` (the worst element),
    ``analytic``, ``numeric``, ``abs_err``, ``rel_err``.
    """

    def __init__(self, message, *, input_index=None, index=None, analytic=None,
                 numeric=None, abs_err=None, rel_err=None):
        super().__init__(message)
        self.input_index = input_index
        self.index = index
        self.analytic = analytic
        self.numeric = numeric
        self.abs_err = abs_err
        self.rel_err = rel_err


class AnomalyError(FloatingPointError):
    """Raised under ``detect_anomaly()`` by the first op that produces NaN or Inf."""


class DeviceError(RuntimeError):
    """A device that is not here (``"cuda"`` without a GPU or the simulator), an unknown
    device name, or Tensors on different devices meeting in one op. The message names the
    devices, the op or argument, and the fix."""
