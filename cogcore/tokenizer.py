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


class _TokenizerBase:
    """What both tokenizers share once they have `source`, `vocab_size`, `bos_id`, `eos_id`, `piece_bytes`."""

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)

    def _need(self, value, name):
        if value is None:
            raise InputError(f"{self.source}: has no {name} token")
        return value

    def __len__(self) -> int:
        return self.vocab_size

    def _check_ids(self, ids) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InputError(f"token id {bad[0]}: expected 0..{self.vocab_size - 1}")
        return ids

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.source!r}, vocab_size={self.vocab_size}, bos={self.bos_id}, "
                f"eos={self.eos_id})")


class Tokenizer(_TokenizerBase):
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
        ids = self._check_ids(ids)
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
        self._strip_space = getattr(tokenizer, "strip_first_space", False)   # as decode does

    def push(self, token_id: int) -> str:
        """The text that token completes (possibly "" while a character is incomplete)."""
        text = self._utf8.decode(self.tokenizer.piece_bytes(token_id))
        if self._strip_space and text:
            self._strip_space = False
            text = text[1:] if text.startswith(" ") else text
        return text

    def flush(self) -> str:
        """At the end: what is still held back (an incomplete character comes out as U+FFFD)."""
        return self._utf8.decode(b"", final=True)


# ---- Hugging Face tokenizer.json -----------------------------------------------

HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"


def read_tokenizer_config(model_dir: str):
    """The parsed tokenizer_config.json of model_dir ({} when there is none), or an InputError
    saying what is wrong with the file."""
    from .config import read_json
    path = os.path.join(model_dir, HF_TOKENIZER_CONFIG)
    return read_json(path, InputError, "tokenizer config") if os.path.isfile(path) else {}
CHAT_TEMPLATE_FILE, CHAT_TEMPLATE_DIR = "chat_template.jinja", "additional_chat_templates"


def chat_template_files(model_dir):
    """The chat templates transformers 5 saves as files beside tokenizer_config.json, which take
    priority over its `chat_template` (as in transformers' from_pretrained): chat_template.jinja
    (the default) and additional_chat_templates/NAME.jinja (named ones). A string when there is
    only the default, else [{"name", "template"}, ...] as tokenizer_config.json lists several;
    None when there are none."""
    model_dir = os.fspath(model_dir)
    named = os.path.join(model_dir, CHAT_TEMPLATE_DIR)
    paths = [("default", os.path.join(model_dir, CHAT_TEMPLATE_FILE))] + [
        (name[:-len(".jinja")], os.path.join(named, name))
        for name in (sorted(os.listdir(named)) if os.path.isdir(named) else []) if name.endswith(".jinja")]
    templates = []
    for name, path in paths:
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    templates.append({"name": name, "template": f.read()})
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(f"{path}: expected a UTF-8 Jinja chat template, found a file that "
                                 f"cannot be read ({e})") from None
    if len(templates) == 1 and templates[0]["name"] == "default":
        return templates[0]["template"]
    return templates or None


def load_tokenizer(model_dir, config=None):
    """The tokenizer of a model directory: tokenizer.model (sentencepiece) for cogcore's own
    models, tokenizer.json (the `tokenizers` library) for a public family's, or one of them
    when only one is there; else the RWKV world vocabulary (cogcore.rwkv_tokenizer); of a GGUF
    file, the one its metadata holds."""
    if model_dir is None:
        return Tokenizer.from_model_dir(None)
    from .gguf_model import is_gguf, load_tokenizer as gguf_tokenizer
    if is_gguf(model_dir):              # a GGUF file: the vocabulary in its metadata
        return gguf_tokenizer(model_dir, config)
    has_json = os.path.isfile(os.path.join(os.fspath(model_dir), HF_TOKENIZER_FILE))
    has_sp = os.path.isfile(os.path.join(os.fspath(model_dir), TOKENIZER_FILE))
    if has_json and (getattr(config, "family", None) or not has_sp):
        return HFTokenizer.from_model_dir(model_dir, config)
    from .rwkv_tokenizer import RWKV_VOCAB_FILE, RWKVWorldTokenizer      # RWKV-7 directories of fla-hub
    if not has_sp and os.path.isfile(os.path.join(os.fspath(model_dir), RWKV_VOCAB_FILE)):
        return RWKVWorldTokenizer.from_model_dir(model_dir, config)
    return Tokenizer.from_model_dir(model_dir, config)


# transformers' tokenizer classes whose constructor defaults name special tokens that a
# tokenizer_config.json may leave unset (models/qwen2/tokenization_qwen2.py) ...
CLASS_SPECIAL_DEFAULTS = {"Qwen2Tokenizer": {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                                             "pad_token": "<|endoftext|>"}}
# ... and the model types for which transformers 5's AutoTokenizer loads its own class whatever
# tokenizer_config.json's tokenizer_class says (MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS)
MODEL_TYPE_TOKENIZER_CLASS = {"qwen2": "Qwen2Tokenizer"}
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def token_content(entry) -> str | None:
    """A tokenizer_config.json special token: a string or {"content": ...}; None for anything else."""
    entry = entry.get("content") if isinstance(entry, dict) else entry
    return entry if isinstance(entry, str) and entry else None


def add_transformers_special_tokens(tok, model_dir, settings: dict) -> None:
    """Add to `tok` (a tokenizers.Tokenizer) the special tokens transformers 5's AutoTokenizer
    appends to a tokenizer.json that lacks them, in its order, at the next ids:
    tokenizer_config.json's (`settings`) bos..mask tokens, for an unset one its tokenizer class's
    default, then its extra (or additional) special tokens."""
    import json

    from tokenizers import AddedToken

    try:
        with open(os.path.join(os.fspath(model_dir), "config.json"), encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):   # no or a bad config.json: its reader says so
        model_type = None
    cls = settings.get("tokenizer_class")
    cls = cls.removesuffix("Fast") if isinstance(cls, str) else None
    defaults = CLASS_SPECIAL_DEFAULTS.get(MODEL_TYPE_TOKENIZER_CLASS.get(model_type, cls), {})
    extra = settings.get("extra_special_tokens") or settings.get("additional_special_tokens") or []
    extra = extra.values() if isinstance(extra, dict) else extra if isinstance(extra, list) else []
    names = [token_content(settings.get(name)) or defaults.get(name) for name in SPECIAL_TOKEN_NAMES]
    names += [token_content(t) for t in extra]
    missing = dict.fromkeys(t for t in names if t is not None and tok.token_to_id(t) is None)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character of every byte (what ByteLevel pieces are spelled in) -> byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


class HFTokenizer(_TokenizerBase):
    """encode/decode over a `tokenizer.json`, as transformers' fast tokenizers do, and the chat
    template of `tokenizer_config.json`. The same interface as `Tokenizer`.

    encode(text, bos=True) is transformers' `tokenizer.encode(text)`: the special tokens
    the tokenizer's own post-processor adds (a BOS for Llama, nothing for Qwen);
    bos=False is `add_special_tokens=False`.
    """

    def __init__(self, tok, settings: dict, config=None, source: str = "tokenizer", byte_level: bool = True,
                 strip_first_space: bool = False, unused_ids=()):
        self.tok, self.settings, self.source = tok, settings, source
        self.byte_level = byte_level       # pieces spelled in GPT-2's byte characters (else sentencepiece's)
        self.strip_first_space = strip_first_space   # decode drops the space encode put before the text
        self.n_tokens = tok.get_vocab_size(with_added_tokens=True)
        self.vocab_size = self.n_tokens     # the model's, once checked: ids past the tokenizer's
                                            # (embedding rows padded, as in Qwen) decode to nothing
        self.special = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        self.special_ids = set(self.special.values())
        # placeholders that print nothing, as ids past the tokenizer's do (a GGUF file's [PADn] tokens)
        self.unused_ids = frozenset(unused_ids)
        self.bos_id, self.eos_id = self._token_id("bos_token"), self._token_id("eos_token")
        if config is not None:
            if self.n_tokens > config.vocab_size:
                raise InputError(f"{source}: has {self.n_tokens} tokens but the model's vocab_size is "
                                 f"{config.vocab_size}; the tokenizer does not belong to this model")
            self.vocab_size = config.vocab_size
            self.bos_id = config.bos_token_id if self.bos_id is None else self.bos_id
            self.eos_id = config.eos_token_id if self.eos_id is None else self.eos_id
        self.chat_template = self._chat_template(settings.get("chat_template"))
        self._piece_bytes: list[bytes] | None = None

    @classmethod
    def from_model_dir(cls, model_dir, config=None) -> "HFTokenizer":
        import json

        from tokenizers import Tokenizer as _Tokenizer
        model_dir = os.fspath(model_dir)
        path = os.path.join(model_dir, HF_TOKENIZER_FILE)
        try:
            tok = _Tokenizer.from_file(path)
        except Exception as e:      # the library raises a bare Exception for a file it cannot parse
            raise InputError(f"{path}: expected a tokenizers-library tokenizer.json, found a file it "
                             f"cannot load ({e})") from None
        settings_path = os.path.join(model_dir, HF_TOKENIZER_CONFIG)
        settings = read_tokenizer_config(model_dir)
        if not isinstance(settings, dict):
            raise InputError(f"{settings_path}: expected a JSON object, found {type(settings).__name__}")
        add_transformers_special_tokens(tok, model_dir, settings)
        template = chat_template_files(model_dir)
        if template is not None:
            settings = {**settings, "chat_template": template}
        with open(path, encoding="utf-8") as f:
            decoder = json.load(f).get("decoder") or {}
        steps = decoder.get("decoders", [decoder]) if isinstance(decoder, dict) else []
        strip = any(isinstance(d, dict) and d.get("type") == "Strip" and d.get("start") for d in steps)
        return cls(tok, settings, config, source=path, byte_level="ByteLevel" in json.dumps(decoder),
                   strip_first_space=strip)

    def _chat_template(self, value):
        """The template: a string, or the one named "default" of a list of {name, template}."""
        if isinstance(value, list):
            named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
            value = named.get("default")
        if value is not None and not isinstance(value, str):
            raise InputError(f"{self.source}: tokenizer_config.json 'chat_template': expected a string, "
                             f"found {type(value).__name__}")
        return value

    def _token_id(self, key: str):
        """The id of tokenizer_config.json's bos_token / eos_token (a string or {"content": ...})."""
        value = self.settings.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        return self.tok.token_to_id(value) if isinstance(value, str) else None

    def special_tokens(self) -> dict[str, str]:
        """transformers' special_tokens_map: the names chat templates read (bos_token, eos_token, ...)."""
        out = {}
        for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
            value = self.settings.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                out[key] = value
        return out

    # ---- text <-> ids --------------------------------------------------------
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"text: expected a str, found {type(text).__name__}")
        ids = list(self.tok.encode(text, add_special_tokens=bos).ids)
        if eos:
            ids.append(self._need(self.eos_id, "eos"))
        return ids

    def decode(self, ids) -> str:
        """The text of token ids, special tokens (BOS, EOS, ...) printing nothing."""
        ids = self._check_ids(ids)
        return self.tok.decode([i for i in ids if i < self.n_tokens and i not in self.unused_ids],
                               skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        return self.tok.id_to_token(int(i))

    def piece_bytes(self, i: int) -> bytes:
        """The UTF-8 bytes token `i` adds to a text (b"" for special tokens)."""
        if self._piece_bytes is None:
            byte_of = _gpt2_byte_decoder()
            self._piece_bytes = [self._bytes_of(j, byte_of) for j in range(self.n_tokens)]
        return self._piece_bytes[int(i)] if 0 <= int(i) < self.n_tokens else b""

    def _bytes_of(self, i: int, byte_of: dict[str, int]) -> bytes:
        piece = self.tok.id_to_token(i)
        if piece is None or i in self.special_ids or i in self.unused_ids:
            return b""
        if self.byte_level:                      # GPT-2 style: one stand-in character per byte
            if all(c in byte_of for c in piece):
                return bytes(byte_of[c] for c in piece)
            return piece.encode("utf-8")         # an added (non-special) token, spelled plainly
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):   # byte fallback
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")     # sentencepiece style

