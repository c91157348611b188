"""``tl.nn``: Module, Parameter, the containers (ModuleList, Sequential, ModuleDict) and the
layers built on ``tl.functional``."""
from .layers import (GELU, MLP, Block, CausalSelfAttention, Dropout, Embedding, LayerNorm,
                     Linear, ReLU, Tanh, TransformerConfig, as_rng)
from .lora import (LoRALinear, apply_lora, load_adapters, lora_state_dict, merge_lora,
                   save_adapters, unmerge_lora)
from .module import Module, ModuleDict, ModuleList, Parameter, Sequential
from .quant import QuantEmbedding, QuantLinear, quantize_model

__all__ = ["Module", "ModuleList", "Sequential", "ModuleDict", "Parameter", "Linear",
           "Embedding", "LayerNorm", "Dropout", "ReLU", "GELU", "Tanh", "MLP",
           "CausalSelfAttention", "Block", "TransformerConfig", "as_rng", "LoRALinear",
           "apply_lora", "lora_state_dict", "save_adapters", "load_adapters", "merge_lora",
           "unmerge_lora", "QuantLinear", "QuantEmbedding", "quantize_model"]
