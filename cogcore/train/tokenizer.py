"""Train the sentencepiece tokenizer of the shipped model on a generated task corpus.

The tokenizer is a sentencepiece ``char`` model: every character of the corpus is one
piece (digits are thus single pieces, ``split_digits`` is also set), so that a
two-letter recall key is always two tokens and a number is always one token per
digit, whatever the neighbours. Conventions shared with the runtime:
``add_dummy_prefix=False``, identity normalization, no whitespace rewriting, ids
``unk=0 bos=1 eos=2`` and no pad; the config's ``vocab_size`` is the piece count.
"""

from __future__ import annotations

import io
import os
import random

from ..tasks import TASKS


def corpus(n_per_task: int = 2000, seed: int = 0) -> list[str]:
    """Lines ``prompt + answer`` of every task, seeded."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_per_task):
        for make in TASKS.values():
            p, a = make(rng)
            lines.append(p + a)
    return lines


def train_tokenizer(out_path: str, n_per_task: int = 2000, seed: int = 0) -> int:
    """Write ``out_path`` (atomically) and return its piece count."""
    import sentencepiece as spm

    lines = corpus(n_per_task, seed)
    chars = sorted(set("".join(lines)))
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="char",
        vocab_size=len(chars) + 3,
        character_coverage=1.0,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        input_sentence_size=0,
        minloglevel=2,
    )
    data = buf.getvalue()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out_path)
    sp = spm.SentencePieceProcessor(model_proto=data)
    return sp.get_piece_size()
