"""The RWKV world tokenizer against the `rwkv` package's recorded encodings.

tests/fixtures/rwkv_world/ holds a slice of rwkv_vocab_v20230424.txt and what the
package's TRIE_TOKENIZER made of some texts with it (tests/fixtures/make_rwkv_world.py).
"""

import json
import os
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cogcore.errors import InputError
from cogcore.rwkv_tokenizer import RWKV_VOCAB_FILE, RWKVWorldTokenizer
from cogcore.tokenizer import load_tokenizer

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "rwkv_world")
VOCAB = os.path.join(HERE, RWKV_VOCAB_FILE)
with open(os.path.join(HERE, "reference.json"), encoding="utf-8") as f:
    REF = json.load(f)["encodings"]


@pytest.fixture(scope="module")
def tok():
    return RWKVWorldTokenizer.from_file(VOCAB)


@pytest.mark.parametrize("text", sorted(REF))
def test_encodings_match_the_rwkv_package(tok, text):
    ids = tok.encode(text)
    assert ids == REF[text]
    assert tok.encode(text, bos=True) == ids                 # the reference adds no BOS
    assert tok.decode(ids) == text
    dec = tok.stream_decoder()
    assert "".join(dec.push(i) for i in ids) + dec.flush() == text


def test_id_0_and_ids_past_the_vocabulary_decode_to_nothing(tok):
    absent = next(i for i in range(257, tok.n_tokens) if i not in tok.pieces)     # not in this slice
    assert tok.decode([0, *tok.encode("hi"), absent]) == "hi"


def test_a_model_directory_with_only_the_vocabulary_gets_it(tmp_path):
    shutil.copy(VOCAB, tmp_path / RWKV_VOCAB_FILE)
    assert isinstance(load_tokenizer(tmp_path), RWKVWorldTokenizer)


@pytest.mark.parametrize("line, problem", [
    ("12 'ab' 3", "line 1"),                  # length disagrees
    ("x 'a' 1", "line 1"),
    ("5 __import__('os') 1", "line 1"),       # not a literal: never evaluated
    ("0 'a' 1", "line 1"),                    # id 0 is end-of-text, not a piece
])
def test_bad_vocabulary_lines_are_named(tmp_path, line, problem):
    path = tmp_path / RWKV_VOCAB_FILE
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=problem):
        RWKVWorldTokenizer.from_file(path)


def test_a_vocabulary_missing_a_byte_is_refused(tmp_path):
    path = tmp_path / RWKV_VOCAB_FILE
    path.write_text("".join(f"{b + 1} {bytes([b])!r} 1\n" for b in range(255)), encoding="utf-8")
    with pytest.raises(InputError, match="byte 255"):
        RWKVWorldTokenizer.from_file(path)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_text_round_trips(tok, text):
    try:
        ids = tok.encode(text)
    except InputError:                        # a lone surrogate is not UTF-8
        return
    assert tok.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_fuzzed_vocabulary_lines_parse_or_fail_clearly(tmp_path_factory, line):
    path = tmp_path_factory.mktemp("v") / RWKV_VOCAB_FILE
    path.write_text(open(VOCAB, encoding="utf-8").read() + line.replace("\r", "") + "\n", encoding="utf-8",
                    errors="surrogatepass")
    try:
        RWKVWorldTokenizer.from_file(path)
    except InputError:
        pass
