"""``tl.infer``: the one decode loop (``decode``) over the models' decoding protocol, and what
it serves: generation (sampling with temperature / top-k / top-p, beam search), and
speculative decoding (a draft model or prompt lookup proposing, the target verifying)."""
from .generate import beam_search, decode, filter_logits, generate, log_softmax, sample_next
from .speculative import (PromptLookupDraft, SpecStats, accept_draft_token,
                          expected_tokens_per_round, predicted_speedup, speculative_decode)

__all__ = ["decode", "generate", "beam_search", "filter_logits", "sample_next", "log_softmax",
           "speculative_decode", "PromptLookupDraft", "SpecStats", "accept_draft_token",
           "expected_tokens_per_round", "predicted_speedup"]
