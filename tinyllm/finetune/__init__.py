"""``tl.finetune``: the fine-tuning lab (the document's section 5 and its strategies).

A BERT-style encoder (``tl.models.Bert``) pretrained with masked-language modelling on the
embedded corpus, then fine-tuned for extractive question answering on SQuAD-v1.1-format
data, one strategy at a time (full, frozen, last-k, LoRA, from scratch, joint).
"""
