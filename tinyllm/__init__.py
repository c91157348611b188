"""tinyllm: a from-scratch engine for learning how language models work, down to the last
derivative, and for measuring how fast that math runs.

    import tinyllm as tl
    x = tl.Tensor([[1.0, 2.0]], requires_grad=True)
    y = tl.functional.softmax(x); (y * y).sum().backward(); x.grad

    model, tok = tl.load("runs/latest")           # a trained checkpoint: model + tokenizer
    tl.save(model, "my-gpt", tokenizer=tok)       # the same format, for `tinyllm generate`
"""
from .autograd import *  # noqa: F401,F403
from .autograd import __all__ as _autograd_all
from .autograd import functional
from .errors import AnomalyError, DeviceError, GradcheckError, ShapeError
from . import runtime, kernels, nn, models, optim, data, train, infer, viz  # noqa: E402,I001
from . import precision  # noqa: E402,F401
from .infer import beam_search, generate
from .train.persist import load, save



__version__ = "0.1.0"
__all__ = list(_autograd_all) + ["ShapeError", "GradcheckError", "AnomalyError", "DeviceError",
                                 "functional",
                                 "runtime", "kernels", "nn", "models", "optim", "data", "train",
                                 "infer", "viz", "generate", "beam_search", "load", "save"]
