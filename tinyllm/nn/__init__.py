"""``tl.nn``: Module, Parameter, the containers (ModuleList, Sequential, ModuleDict) and the
layers built on ``tl.functional``."""
from .layers import (GELU, MLP, Block, CausalSelfAttention, Dropout, Embedding, LayerNorm,
                     Linear, ReLU, Tanh, TransformerConfig, as_rng)
from .module import Module, ModuleDict, ModuleList, Parameter, Sequential

__all__ = ["Module", "ModuleList", "Sequential", "ModuleDict", "Parameter", "Linear",
           "Embedding", "LayerNorm", "Dropout", "ReLU", "GELU", "Tanh", "MLP",
           "CausalSelfAttention", "Block", "TransformerConfig", "as_rng"]
