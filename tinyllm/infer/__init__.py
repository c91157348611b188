"""``tl.infer``: the one decode loop (``decode``) over the models' decoding protocol, and what
it serves: generation (sampling with temperature / top-k / top-p, beam search)."""
from .generate import beam_search, decode, filter_logits, generate, log_softmax, sample_next

__all__ = ["decode", "generate", "beam_search", "filter_logits", "sample_next", "log_softmax"]
