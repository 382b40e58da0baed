"""Train the sentencepiece tokenizer of the shipped model on a generated task corpus.

The tokenizer is a sentencepiece ``char`` model: every character of the corpus is one
piece (``split_digits`` is also set), so a number is one token per digit whatever its
neighbours. ``extra`` adds user-defined pieces on top of the characters
(sentencepiece matches them first, longest first): ``KEY_PIECES`` makes every
space-led two-letter word one token, ``ASSIGN_PIECES`` makes ``=`` with the digit
after it one token and `` =`` one token, so that in

    recall ab=3 cd=7 ? cd =   ->   r e c a l l ▁ab =3 ▁cd =7 ▁ ? ▁cd ▁=

a value sits right after its key and the final ``▁=`` right after the asked key
(``TOKENIZERS`` names the sets; the shipped model uses ``recall``, and
docs/training.md says why). Conventions shared with the runtime:
``add_dummy_prefix=False``, identity normalization, no whitespace rewriting, ids
``unk=0 bos=1 eos=2`` and no pad; the config's ``vocab_size`` is the piece count.
"""

from __future__ import annotations

import io
import os
import random
import string
from typing import Sequence

from ..tasks import LETTERS, TASKS

KEY_PIECES = ["\u2581" + a + b for a in LETTERS for b in LETTERS]       # ▁aa .. ▁zz
ASSIGN_PIECES = ["=" + d for d in string.digits] + ["\u2581="]          # =0 .. =9, ▁=
TOKENIZERS = {"char": [], "keys": KEY_PIECES, "recall": KEY_PIECES + ASSIGN_PIECES}
SHIPPED_TOKENIZER = "recall"    # the set weights/cogcore-tiny was trained with


def corpus(n_per_task: int = 2000, seed: int = 0) -> list[str]:
    """Lines ``prompt + answer`` of every task, seeded."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_per_task):
        for make in TASKS.values():
            p, a = make(rng)
            lines.append(p + a)
    return lines


def train_tokenizer(out_path: str, n_per_task: int = 2000, seed: int = 0, extra: Sequence[str] = ()) -> int:
    """Write ``out_path`` (atomically) and return its piece count."""
    import sentencepiece as spm

    lines = corpus(n_per_task, seed)
    if extra:           # extra pieces may swallow every use of a character: keep each one a piece
        lines.append(LETTERS + "=")
    chars = set("".join(lines))
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="char",
        vocab_size=len(chars) + len(extra) + 3,
        user_defined_symbols=list(extra),
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
