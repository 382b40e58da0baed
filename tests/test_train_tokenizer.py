"""The training recipe's tokenizer (cogcore/train/tokenizer.py) and the shipped one.

The expected pieces of each text are spelled out here from the text alone, by a
regular expression per piece set: one piece per character (a space is "▁"); with
the key pieces a space followed by a two-letter word is one piece; with the assign
pieces "=" and the digit after it are one piece, and so are a space and "=".
"""

import os
import re
import string

import pytest

from cogcore import tasks
from cogcore.train.tokenizer import SHIPPED_TOKENIZER, TOKENIZERS, train_tokenizer

spm = pytest.importorskip("sentencepiece")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "weights", "cogcore-tiny", "tokenizer.model")
LETTERS = string.ascii_lowercase
SINGLES = set(string.digits + LETTERS + "+=?\u2581")
KEYS = {"\u2581" + a + b for a in LETTERS for b in LETTERS}
ASSIGNS = {"=" + d for d in string.digits} | {"\u2581="}
# name -> (one piece, as a regex alternative tried before a single character; the inventory beyond SINGLES)
SETS = {"char": ("", set()),
        "keys": (r" [a-z]{2}(?![a-z])|", KEYS),
        "recall": (r" [a-z]{2}(?![a-z])| =|=[0-9]|", KEYS | ASSIGNS)}


def expected_pieces(text: str, name: str) -> list[str]:
    return [m.group(0).replace(" ", "\u2581") for m in re.finditer(SETS[name][0] + ".", text)]


def test_the_sets_are_the_ones_tested():
    assert sorted(TOKENIZERS) == sorted(SETS) and SHIPPED_TOKENIZER in SETS


_TRAINED = {}


def train(name, tmp_path_factory):
    """The tokenizer of piece set `name`, trained once per session."""
    if name not in _TRAINED:
        path = str(tmp_path_factory.mktemp("tok") / "tokenizer.model")
        n = train_tokenizer(path, seed=tasks.TRAIN_SEED, extra=TOKENIZERS[name])
        _TRAINED[name] = spm.SentencePieceProcessor(model_file=path), n, name
    return _TRAINED[name]


@pytest.fixture(params=sorted(SETS))
def trained(request, tmp_path_factory):
    return train(request.param, tmp_path_factory)


def test_piece_inventory(trained):
    sp, n, name = trained
    pieces = [sp.id_to_piece(i) for i in range(n)]
    assert pieces[:3] == ["<unk>", "<s>", "</s>"]
    extra = SETS[name][1]
    assert set(pieces[3:]) == SINGLES | extra and n == 3 + len(SINGLES) + len(extra)


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_prompts_split_as_expected(trained, task):
    sp, _, name = trained
    for prompt, answer in tasks.examples(task, 200, seed=11):
        for text in (prompt, answer):
            assert sp.encode(text, out_type=str) == expected_pieces(text, name)
            assert sp.decode(sp.encode(text)) == text


def test_recall_set_puts_each_value_right_after_its_key(tmp_path_factory):
    sp, _, _ = train("recall", tmp_path_factory)     # the only set that fuses keys and values
    assert sp.encode("recall ab=3 cd=7 ? cd =", out_type=str) == \
        list("recall") + ["\u2581ab", "=3", "\u2581cd", "=7", "\u2581", "?", "\u2581cd", "\u2581="]


@pytest.mark.skipif(not os.path.exists(SHIPPED), reason="no shipped tokenizer")
def test_recipe_reproduces_the_shipped_tokenizer(tmp_path_factory):
    sp, n, _ = train(SHIPPED_TOKENIZER, tmp_path_factory)
    shipped = spm.SentencePieceProcessor(model_file=SHIPPED)
    assert [shipped.id_to_piece(i) for i in range(shipped.get_piece_size())] == \
        [sp.id_to_piece(i) for i in range(n)]
