"""Text in and out: a thin wrapper over a sentencepiece model (`tokenizer.model`, SPEC Section 1).

    tok = Tokenizer.from_model_dir("weights/cogcore-tiny", model.config)
    ids = tok.encode("12+345=", bos=True)        # [bos] + sp.encode(text)
    tok.decode(ids)                              # sentencepiece's decode (control tokens dropped)
    dec = tok.stream_decoder()                   # incremental: dec.push(id) -> text ready to print

The tokenizer must agree with the model: its piece count equals `vocab_size`, and
its BOS and EOS ids equal `bos_token_id` and `eos_token_id` (when the tokenizer has
them). Anything else is an InputError that says which number disagrees.

Streaming works on bytes: each piece becomes the UTF-8 bytes it stands for (`▁`
becomes a space, a byte-fallback piece `<0xE6>` its one byte, control pieces
nothing, the unknown piece " ⁇ " as sentencepiece prints it), and an incremental
UTF-8 decoder holds back a character until all its bytes have arrived, so a piece
that splits a character never prints garbage. Bytes that can never form a character
come out as U+FFFD.
"""

from __future__ import annotations

import codecs
import os

from .errors import InputError

TOKENIZER_FILE = "tokenizer.model"
UNKNOWN_TEXT = " \u2047 "   # what sentencepiece prints for <unk>


class Tokenizer:
    """encode/decode over a sentencepiece model, checked against the model's config."""

    def __init__(self, sp, config=None, source: str = "tokenizer"):
        self.sp, self.source = sp, source
        self.vocab_size = sp.get_piece_size()
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.eos_id = sp.eos_id() if sp.eos_id() >= 0 else None
        if config is not None:
            self.check(config)
        if config is not None:   # the model's ids rule when the tokenizer has none of its own
            self.bos_id = config.bos_token_id if self.bos_id is None else self.bos_id
            self.eos_id = config.eos_token_id if self.eos_id is None else self.eos_id
        try:   # every piece read now: a corrupt file fails here, naming itself, not mid-generation
            self._piece_bytes = [self._bytes_of(j) for j in range(self.vocab_size)]
        except (UnicodeDecodeError, ValueError, RuntimeError) as e:
            raise InputError(f"{source}: a piece of this sentencepiece model cannot be read ({e})") from None

    # ---- loading -----------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike, config=None) -> "Tokenizer":
        import sentencepiece as spm
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise InputError(f"{path}: tokenizer file not found")
        sp = spm.SentencePieceProcessor()
        try:
            sp.load(path)
        except (OSError, RuntimeError) as e:
            raise InputError(f"{path}: expected a sentencepiece model, found a file it cannot load ({e})") from None
        return cls(sp, config, source=path)

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike | None, config=None) -> "Tokenizer":
        """The tokenizer.model of a model directory, or an InputError saying text needs one."""
        if model_dir is None:
            raise InputError("this model was not loaded from a directory, so it has no tokenizer "
                             "(text in/out needs tokenizer.model; model.forward takes token ids)")
        path = os.path.join(os.fspath(model_dir), TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise InputError(f"{model_dir}: expected {TOKENIZER_FILE} for text in/out, found none "
                             f"(model.forward still takes token ids)")
        return cls.from_file(path, config)

    def check(self, config) -> None:
        """An InputError when the tokenizer and the model's config disagree."""
        if self.vocab_size != config.vocab_size:
            raise InputError(f"{self.source}: has {self.vocab_size} pieces but the model's vocab_size is "
                             f"{config.vocab_size}; the tokenizer does not belong to this model")
        for name, mine, theirs in (("bos", self.bos_id, config.bos_token_id),
                                   ("eos", self.eos_id, config.eos_token_id)):
            if mine is not None and mine != theirs:
                raise InputError(f"{self.source}: {name} id is {mine} but the model's {name}_token_id is "
                                 f"{theirs}; the tokenizer does not belong to this model")

    # ---- text <-> ids --------------------------------------------------------
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """`[bos]? + sp.encode(text) + [eos]?` as a list of ints."""
        if not isinstance(text, str):
            raise InputError(f"text: expected a str, found {type(text).__name__}")
        check_text(text)
        ids = list(self.sp.encode(text))
        if bos:
            ids.insert(0, self._need(self.bos_id, "bos"))
        if eos:
            ids.append(self._need(self.eos_id, "eos"))
        return ids

    def decode(self, ids) -> str:
        """sentencepiece's decode of token ids (control tokens such as BOS/EOS print nothing)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InputError(f"token id {bad[0]}: expected 0..{self.vocab_size - 1}")
        return self.sp.decode(ids)

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def piece_bytes(self, i: int) -> bytes:
        """The UTF-8 bytes token `i` adds to a text (b"" for control tokens)."""
        return self._piece_bytes[int(i)]

    def _bytes_of(self, i: int) -> bytes:
        sp = self.sp
        if sp.is_control(i):
            return b""
        if sp.is_unknown(i):
            return UNKNOWN_TEXT.encode()
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):                      # "<0xAB>"
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)

    def _need(self, value, name):
        if value is None:
            raise InputError(f"{self.source}: has no {name} token")
        return value

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id})"


def check_text(text: str, what: str = "text") -> None:
    """An InputError when `text` cannot be UTF-8 (a lone surrogate, e.g. from non-UTF-8 bytes on argv)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{what}: expected valid UTF-8 text, found {text[e.start]!r} at character {e.start} "
                         f"(a lone surrogate: undecodable bytes in the input?)") from None


class StreamDecoder:
    """Token ids in, printable text out: a character is held back until all its bytes arrived."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text that token completes (possibly "" while a character is incomplete)."""
        return self._utf8.decode(self.tokenizer.piece_bytes(token_id))

    def flush(self) -> str:
        """At the end: what is still held back (an incomplete character comes out as U+FFFD)."""
        return self._utf8.decode(b"", final=True)
