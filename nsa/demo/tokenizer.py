"""Byte-level BPE tokenizer for the demo model, trained with `tokenizers` and wrapped as a transformers
`PreTrainedTokenizerFast` (BOS `<s>`, EOS `</s>`, PAD `<pad>`). Byte-level means unseen words still
tokenize (into smaller pieces), which `demo-unseen` relies on."""
from __future__ import annotations

from typing import Iterable

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """Train a byte-level BPE on `texts`; returns a PreTrainedTokenizerFast (no special tokens added on encode)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=1024)
