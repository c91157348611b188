"""``tl.infer``: generation (sampling with temperature / top-k / top-p, beam search), using a
model's KV cache when it has one."""
from .generate import beam_search, filter_logits, generate, sample_next

__all__ = ["generate", "beam_search", "filter_logits", "sample_next"]
