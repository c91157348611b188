"""Data for tinyllm: tokenizers, corpora, batches and synthetic tasks (docs/DESIGN.md rank 5).

    from tinyllm.data import BPETokenizer, load_corpus, train_val_split, encode_text, get_batch
    text = load_corpus()                              # embedded ~460 KB default corpus
    tok = BPETokenizer.train(text, vocab_size=512)
    train, val = train_val_split(encode_text(text, tok))
    x, y = get_batch(train, batch_size=8, block_size=64, rng=np.random.default_rng(0))

This package imports only numpy, the stdlib and tinyllm.errors.
"""
from .corpus import default_corpus, encode_text, get_batch, load_corpus, train_val_split
from .gpt2_bpe import GPT2Tokenizer
from .squad import QAExample, SquadFormatError, char_length, load_squad, write_squad
from .stories import (ANSWER_TYPE, ENTITY_TYPES, QTYPES, answer_type, augment, generate_stories,
                      make_qa_files, rename_entities, type_words)
from .tasks import (BOS, EOS, IGNORE_INDEX, PAD, SEP, SeqTask, TaskData, copy_task,
                    exact_match, masked_exact_match, reversal_task)
from .tokenizers import (BPETokenizer, CharTokenizer, Tokenizer, UnknownTokenError,
                         load_tokenizer)

__all__ = ["Tokenizer", "CharTokenizer", "BPETokenizer", "UnknownTokenError", "load_tokenizer",
           "GPT2Tokenizer",
           "load_corpus", "default_corpus", "train_val_split", "encode_text", "get_batch",
           "SeqTask", "TaskData", "reversal_task", "copy_task", "exact_match",
           "masked_exact_match", "PAD", "BOS", "SEP", "EOS", "IGNORE_INDEX",
           "QAExample", "SquadFormatError", "load_squad", "write_squad", "char_length",
           "generate_stories", "make_qa_files", "rename_entities", "augment", "answer_type",
           "type_words", "ENTITY_TYPES", "QTYPES", "ANSWER_TYPE"]
