"""The sentencepiece wrapper: encode/decode, BOS/EOS, agreement with the config, streaming bytes."""

import os

import pytest

import cogcore
from cogcore.errors import CogcoreError, InputError
from cogcore.tokenizer import Tokenizer

try:
    from textmodel import make_text_model, train_tokenizer
except ImportError:  # tests/ imported as a package
    from tests.textmodel import make_text_model, train_tokenizer

TEXTS = ["the cat sat on a mat", "12+345=357", "café naïve", "日本語 ✓ 🎉 é", "x  y", "hello, world!"]


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    path = str(root / "tokenizer.model")
    n = train_tokenizer(path)
    return path, n, root


@pytest.fixture(scope="module")
def tok(spm_file):
    path, n, _ = spm_file
    return Tokenizer.from_file(path, cogcore.preset("tiny", vocab_size=n))


def test_ids_and_specials(tok, spm_file):
    assert tok.vocab_size == spm_file[1] == len(tok)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    ids = tok.encode("12+3")
    assert tok.encode("12+3", bos=True) == [1] + ids
    assert tok.encode("12+3", bos=True, eos=True) == [1] + ids + [2]
    assert [tok.id_to_piece(i) for i in ids] == ["1", "2", "+", "3"]   # split_digits


@pytest.mark.parametrize("text", TEXTS)
def test_roundtrip(tok, text):
    ids = tok.encode(text)
    expected = " ".join(text.split())            # the normaliser folds runs of spaces
    assert tok.decode(ids) == expected
    assert tok.decode([1] + ids + [2]) == expected   # control tokens print nothing
    assert b"".join(tok.piece_bytes(i) for i in ids).decode() == expected


def test_byte_fallback_pieces_split_characters(tok):
    ids = tok.encode("日本")
    assert all(tok.sp.is_byte(i) for i in ids) and len(ids) == 6


@pytest.mark.parametrize("text", TEXTS)
def test_stream_decoder_never_prints_garbage(tok, text):
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in tok.encode(text)] + [dec.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == " ".join(text.split())


def test_stream_decoder_holds_back_partial_character(tok):
    dec = tok.stream_decoder()
    ids = tok.encode("🎉")                        # four byte pieces
    assert len(ids) == 4
    assert [dec.push(i) for i in ids] == ["", "", "", "🎉"]
    dec.push(ids[0])                              # an incomplete character at the very end
    assert dec.flush() == "\ufffd"


def test_unknown_and_control_pieces(tok):
    assert tok.piece_bytes(tok.bos_id) == b"" and tok.piece_bytes(tok.eos_id) == b""
    assert tok.piece_bytes(0).decode() == tok.decode([0])      # <unk> prints as sentencepiece does


def test_vocab_size_mismatch(spm_file):
    path, n, _ = spm_file
    with pytest.raises(InputError, match=f"{n} pieces.*vocab_size is {n + 1}"):
        Tokenizer.from_file(path, cogcore.preset("tiny", vocab_size=n + 1))


@pytest.mark.parametrize("key,name", [("bos_token_id", "bos"), ("eos_token_id", "eos")])
def test_special_id_mismatch(spm_file, key, name):
    path, n, _ = spm_file
    with pytest.raises(InputError, match=f"{name} id is .* {key} is 7"):
        Tokenizer.from_file(path, cogcore.preset("tiny", vocab_size=n, **{key: 7}))


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(InputError, match="tokenizer.model"):
        Tokenizer.from_model_dir(str(tmp_path))
    with pytest.raises(InputError, match="no tokenizer"):
        Tokenizer.from_model_dir(None)
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(CogcoreError, match="sentencepiece"):
        Tokenizer.from_file(str(bad))


def test_model_tokenizer_property(spm_file):
    path, n, root = spm_file
    d = make_text_model(str(root), path, n)
    model = cogcore.load(d, backend="numpy")
    assert model.tokenizer is model.tokenizer                  # loaded once
    assert model.tokenizer.encode("hello") == Tokenizer.from_file(path).encode("hello")
    os.remove(os.path.join(d, "tokenizer.model"))
    with pytest.raises(InputError, match="tokenizer.model"):
        cogcore.load(d, backend="numpy").tokenizer
