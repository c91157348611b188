"""``tl.nn``: Module, Parameter and the layers built on ``tl.functional``."""
from .layers import (MLP, Block, CausalSelfAttention, Dropout, Embedding, LayerNorm, Linear,
                     TransformerConfig, as_rng)
from .module import Module, ModuleList, Parameter

__all__ = ["Module", "ModuleList", "Parameter", "Linear", "Embedding", "LayerNorm", "Dropout",
           "MLP", "CausalSelfAttention", "Block", "TransformerConfig", "as_rng"]
