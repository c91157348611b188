"""``tl.models``: GPT (GPT-2's transformer), Bert (a BERT-style encoder) and AttentionRNN (the
document's model, eq. 4.1-4.2).
"""
from .bert import Bert, BertConfig, lora_targets
from .gpt import GPT, GPTConfig, KVCache

__all__ = ["GPT", "GPTConfig", "KVCache", "Bert", "BertConfig", "lora_targets"]

try:                                    # written separately; the package imports without it
    from .attention_rnn import AttentionRNN, RNNConfig  # noqa: F401
except ModuleNotFoundError as e:        # only a missing file is tolerated, not a broken one
    if e.name != f"{__name__}.attention_rnn":
        raise
else:
    __all__ += ["AttentionRNN", "RNNConfig"]
