"""The RWKV "world" tokenizer: `rwkv_vocab_v20230424.txt`, as RWKV-7 directories ship it.

The fla-hub RWKV-7 directories have no tokenizer.json: their tokenizer is this
vocabulary file (read by Python code of their own, `trust_remote_code`). It is the
`rwkv` package's TRIE_TOKENIZER (rwkv/rwkv_tokenizer.py): each line is

    <id> <Python literal of the piece: a str (its UTF-8 bytes) or bytes> <byte length>

and encoding is greedy over the UTF-8 bytes of the text: at each position the longest
piece that matches (every single byte is a piece, so any text encodes). Decoding joins
the pieces' bytes. Id 0 (`<|endoftext|>`) is not in the file: it is the end-of-text
token and decodes to nothing; as in the reference, encode adds no BOS.

The literals are read with `ast.literal_eval` (strings and bytes only, never code).
"""

from __future__ import annotations

import ast
import os

from .errors import InputError
from .tokenizer import _TokenizerBase, check_text

RWKV_VOCAB_FILE = "rwkv_vocab_v20230424.txt"


class RWKVWorldTokenizer(_TokenizerBase):
    """encode/decode over the RWKV world vocabulary; the interface of `cogcore.tokenizer.Tokenizer`."""

    def __init__(self, pieces: dict[int, bytes], config=None, source: str = RWKV_VOCAB_FILE,
                 silent: frozenset[int] = frozenset()):
        self.source = source
        self.pieces = pieces
        self.silent = silent           # matched in text, but decode to nothing (a GGUF's <s> and [PADn])
        self.chat_template, self.special = None, {}     # a GGUF file's tokenizer.chat_template, <s> as bos/eos
        self.ids = {piece: i for i, piece in pieces.items()}
        missing = [b for b in range(256) if bytes([b]) not in self.ids]
        if missing:              # greedy matching needs them: any text then encodes
            raise InputError(f"{source}: expected a piece for every single byte, found none for byte {missing[0]}")
        self.longest = max(map(len, pieces.values()), default=1)
        self.n_tokens = max(pieces, default=0) + 1
        self.vocab_size = self.n_tokens
        self.bos_id = self.eos_id = None
        if config is not None:
            if self.n_tokens > config.vocab_size:
                raise InputError(f"{source}: has ids up to {self.n_tokens - 1} but the model's vocab_size is "
                                 f"{config.vocab_size}; the tokenizer does not belong to this model")
            self.vocab_size, self.bos_id, self.eos_id = config.vocab_size, config.bos_token_id, config.eos_token_id

    @classmethod
    def from_file(cls, path, config=None) -> "RWKVWorldTokenizer":
        path = os.fspath(path)
        pieces: dict[int, bytes] = {}
        try:
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        i, piece = _parse_line(line.rstrip("\n"), path, n)
                        pieces[i] = piece
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: expected UTF-8 text, found an undecodable byte at offset {e.start}") from None
        except OSError as e:
            raise InputError(f"{path}: cannot read the RWKV vocabulary: {e.strerror}") from None
        return cls(pieces, config, source=path)

    @classmethod
    def from_model_dir(cls, model_dir, config=None) -> "RWKVWorldTokenizer":
        return cls.from_file(os.path.join(os.fspath(model_dir), RWKV_VOCAB_FILE), config)

    def special_tokens(self) -> dict[str, str]:
        """The special token texts a chat template reads (bos_token, eos_token)."""
        return dict(self.special)

    # ---- text <-> ids ----------------------------------------------------------
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Greedy longest match over the UTF-8 bytes (bos adds nothing, as the reference)."""
        if not isinstance(text, str):
            raise InputError(f"text: expected a str, found {type(text).__name__}")
        check_text(text)
        src, ids, at = text.encode("utf-8"), [], 0
        while at < len(src):
            for n in range(min(self.longest, len(src) - at), 0, -1):
                i = self.ids.get(src[at:at + n])
                if i is not None:
                    ids.append(i)
                    at += n
                    break
        if eos:
            ids.append(self._need(self.eos_id, "eos"))
        return ids

    def decode(self, ids) -> str:
        return b"".join(self.piece_bytes(i) for i in self._check_ids(ids)).decode("utf-8", errors="replace")

    def id_to_piece(self, i: int) -> str:
        return repr(self.pieces.get(int(i), b""))

    def piece_bytes(self, i: int) -> bytes:
        """The bytes token `i` adds to a text (b"" for id 0, silent ids and ids past the vocabulary)."""
        return b"" if int(i) in self.silent else self.pieces.get(int(i), b"")


def _parse_line(line: str, path: str, n: int) -> tuple[int, bytes]:
    where = f"{path}: line {n}"
    try:
        first, last = line.index(" "), line.rindex(" ")
        i, literal, length = int(line[:first]), line[first:last].strip(), int(line[last:])
        plain = len(literal) >= 2 and literal[0] in "'\"" and literal[-1] == literal[0] and "\\" not in literal
        piece = literal[1:-1] if plain else ast.literal_eval(literal)      # most lines: a quoted str, no escapes
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise InputError(f"{where}: expected '<id> <str or bytes literal> <length>', found {line[:80]!r}") from None
    if isinstance(piece, str):
        piece = piece.encode("utf-8", errors="surrogatepass")
    if not isinstance(piece, bytes) or len(piece) != length or not piece or i < 1:
        raise InputError(f"{where}: expected id >= 1 and a non-empty piece of {length} bytes, found id {i}, "
                         f"{piece!r:.60}")
    return i, piece
