"""Reverse-mode autodiff: Tensor, Function, the ops, and the gradient-check lab."""
from . import functional
from .creation import default_generator, manual_seed, ones, randn, tensor, zeros
from .gradcheck import InputReport, check_gradients, gradcheck
from .lab import EpsSweep, TaylorResult, eps_sweep, taylor_test
from .ops import (concat, dropout, embedding, exp, gelu, log, masked_fill, matmul, relu,
                  sigmoid, split, sqrt, stack, tanh, where)
from .tensor import Context, Function, Tensor, detect_anomaly, is_grad_enabled, no_grad

__all__ = ["Tensor", "Function", "Context", "no_grad", "is_grad_enabled", "detect_anomaly",
           "gradcheck", "check_gradients", "InputReport", "eps_sweep", "EpsSweep",
           "taylor_test", "TaylorResult", "functional", "concat", "stack", "split", "where",
           "masked_fill", "embedding", "dropout", "exp", "log", "sqrt", "tanh", "sigmoid",
           "relu", "gelu", "matmul", "tensor", "zeros", "ones", "randn", "manual_seed",
           "default_generator"]
