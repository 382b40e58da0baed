"""Helpers for tests that need text: a tiny sentencepiece model trained on the fly, paired
with a random cogcore model whose vocab_size equals the piece count.

The tokenizer is trained like the shipped one (add_dummy_prefix=False, split_digits=True,
unk=0 bos=1 eos=2) and with byte_fallback=True, so characters outside the corpus
(e.g. "日本", "🎉") become byte pieces that split UTF-8 characters.
"""

import io
import os
import random

import cogcore
from cogcore.create import init_model

WORDS = ("the cat sat on a mat dog ran fast slow red blue green apple banana café naïve "
         "what is plus minus answer question hello world").split()


def corpus(n=1500, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        yield f"{words} {a}+{b}={a + b} ###"


def train_tokenizer(path, vocab_size=320):
    """Write a sentencepiece model to `path`; returns its piece count."""
    import sentencepiece as spm
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=corpus(), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=False, split_digits=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return spm.SentencePieceProcessor(model_proto=buf.getvalue()).get_piece_size()


def make_text_model(root, tokenizer_path, n_pieces, name="model", **overrides):
    """A random tiny model directory with the tokenizer copied in; returns its path."""
    out = os.path.join(root, name)
    init_model(out, cogcore.preset("tiny", vocab_size=n_pieces, **overrides), seed=1)
    with open(tokenizer_path, "rb") as src, open(os.path.join(out, "tokenizer.model"), "wb") as dst:
        dst.write(src.read())
    return out
