"""A tokenizer for random-init models, built here: no download, no model package.

A byte-level BPE (GPT-2's byte alphabet, so every string encodes and decodes back exactly) whose
merges are fitted in memory on the bundled prompts' own text, which gives about 3.5 characters a
token on prose, close to a real tokenizer, so prompts sized with ``--tokens`` and the pass-key
templates keep their usual proportions. Ids the merges do not reach are filled with
``<|unused_N|>`` tokens up to the model's vocabulary size: the encoder never produces them, and a
random model's generated ids still decode. Fitting takes about a second; it is done once a process.
"""
from __future__ import annotations

import functools
import json

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2
MERGED_VOCAB = 4096  # byte alphabet + specials + learned merges; the rest up to the model's vocab is filler
_CORPUS_CHARS = (200_000, 100_000)  # prose, code


@functools.lru_cache(maxsize=4)
def _fitted_json(vocab_size: int) -> str:
    """The padded tokenizer as JSON (the ``tokenizers`` serialisation), fitted once a process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from ..files.prompts import code_text, prose_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=MERGED_VOCAB, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=list(SPECIAL_TOKENS))
    prose, code = _CORPUS_CHARS
    tok.train_from_iterator([prose_text(prose), code_text(code)], trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    vocab.update({f"<|unused_{i}|>": i for i in range(len(vocab), vocab_size)})
    return json.dumps(data)


def local_tokenizer(vocab_size: int):
    """A ``PreTrainedTokenizerFast`` with exactly ``vocab_size`` ids (at least ``MERGED_VOCAB``)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MERGED_VOCAB:
        raise ValueError(f"the local tokenizer needs a vocabulary of at least {MERGED_VOCAB} ids, got {vocab_size}")
    pad, bos, eos = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_fitted_json(vocab_size)),
                                   bos_token=bos, eos_token=eos, pad_token=pad, unk_token=pad,
                                   model_max_length=1 << 30)
