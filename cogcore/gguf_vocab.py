"""The tokenizer of a GGUF file, both directions: `tokenizer.ggml.*` metadata <-> a `tokenizers` tokenizer.

A GGUF file carries no tokenizer.json: llama.cpp's converter writes the vocabulary as metadata
(llama.cpp's gguf-py names the keys; `src/llama-vocab.cpp` reads them):

    tokenizer.ggml.model         "llama" (sentencepiece-style BPE ranked by score, byte-fallback
                                 tokens <0xNN>), "gpt2" (byte-level BPE with merges) or "rwkv"
                                 (RWKV's world vocabulary: each token repr-escaped bytes, matched
                                 greedily; cogcore.rwkv_tokenizer)
    tokenizer.ggml.pre           which pre-tokenizer regexes split the text ("gpt2" only)
    tokenizer.ggml.tokens        every token's text; ids are positions
    tokenizer.ggml.scores        float per token ("llama": a merge's priority is its result's score)
    tokenizer.ggml.token_type    int per token: 1 normal, 2 unknown, 3 control, 4 user-defined,
                                 5 unused, 6 byte
    tokenizer.ggml.merges        "left right" per merge, best first ("gpt2")
    tokenizer.ggml.{bos,eos,unknown,padding}_token_id, add_bos_token, add_eos_token,
    add_space_prefix, remove_extra_whitespaces; tokenizer.chat_template

    tok = tokenizer_from_gguf(meta, "model.gguf", config)   # -> cogcore.tokenizer.HFTokenizer
    add_vocab_to_gguf(writer, "hf_model_dir")               # the keys above, as llama.cpp writes them

`meta` is `{key: field.contents()}` of a `gguf.GGUFReader`. The tokenizer built encodes as
llama.cpp does: control, unknown and user-defined tokens are matched whole in the text (control
and unknown ones are special: decode drops them), unused ones (the converter's `[PADn]`) are
never produced and decode to nothing, a "llama" vocabulary gets a space before its
text and after each special token, the BOS/EOS flags say what `encode(text, bos=True)` adds.
Anything malformed is an InputError naming the key.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import read_json
from .errors import InputError
from .tokenizer import (CHAT_TEMPLATE_FILE, HF_TOKENIZER_CONFIG, HF_TOKENIZER_FILE, TOKENIZER_FILE, HFTokenizer,
                        add_transformers_special_tokens, chat_template_files, token_content)

# gguf.TokenType, spelled here so that reading a file needs no gguf import
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"   # sentencepiece's visible space

# ---- llama.cpp's pre-tokenizers (src/llama-vocab.cpp, llm_tokenizer_bpe) -------------------------
# Each name maps to the regexes llama.cpp splits the text with, one after the other; a piece no
# regex matches stays a piece of its own (tokenizers' Split "isolated" does the same).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_LETTERS = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_LETTERS}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_LETTERS}+{_LOWER}*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_LETTERS}*{_LOWER}+{_CONTRACTIONS}?"
          rf"|[^\r\n\p{{L}}\p{{N}}]?{_LETTERS}+{_LOWER}*{_CONTRACTIONS}?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _names(names: str, regexes: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return dict.fromkeys(names.split(), regexes)


PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
    **_names("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 dbrx smaug-bpe", (_LLAMA3,)),
    **_names("gpt-2 phi-2 mpt olmo jais exaone4 trillion mellum modern-bert", (_GPT2,)),
    **_names("qwen2 deepseek-r1-qwen stablelm2 megrez hunyuan kormo", (_QWEN2,)),
    "qwen35": (_QWEN35,),
    **_names("starcoder refact command-r smollm codeshell exaone minerva-7b", (r"\p{N}", _GPT2)),
    "tekken": (_TEKKEN,),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}"),
    **_names("gpt-4o llama4 kanana2", (_GPT4O,)),
}
# llama.cpp looks a whole pre-token up in the vocabulary before merging (HF: BPE ignore_merges)
IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "tekken"}
# ... and adds a BOS to these unless the file says otherwise
ADD_BOS = IGNORE_MERGES


# ---- reading the metadata ----------------------------------------------------------------------

_MISSING = object()   # no default: the key is required


def _a(kind: type) -> str:
    return {int: "an int", float: "a finite number", str: "a string", bool: "a bool"}[kind]


def _found(value) -> str:
    """What a wrong value is, for a message: its type, and the value itself when short."""
    text = repr(value)
    return f"{type(value).__name__} {text}" if len(text) <= 40 else type(value).__name__


class _Meta:
    """Typed access to the metadata: every problem is an InputError naming `source` and the key."""

    def __init__(self, meta: Mapping[str, Any], source: str):
        if not isinstance(meta, Mapping):
            raise InputError(f"{source}: expected the GGUF metadata as a mapping, found {type(meta).__name__}")
        self.meta, self.source = meta, source

    def fail(self, key: str, expected: str, found: str) -> InputError:
        return InputError(f"{self.source}: {key}: expected {expected}, found {found}")

    def _raw(self, key: str, default):
        value = self.meta.get(key)
        if value is None and default is _MISSING:
            raise InputError(f"{self.source}: {key}: missing (a GGUF tokenizer needs it)")
        return value

    @staticmethod
    def _is(value, kind: type) -> bool:
        if isinstance(value, bool):
            return kind is bool
        if kind is float:
            return isinstance(value, (int, float)) and math.isfinite(value)
        return isinstance(value, kind)

    def get(self, key: str, kind: type, default=_MISSING):
        value = self._raw(key, default)
        if value is None:
            return default
        if not self._is(value, kind):
            raise self.fail(key, _a(kind), _found(value))
        return value

    def array(self, key: str, kind: type, length: int | None = None, default=_MISSING) -> list | None:
        value = self._raw(key, default)
        if value is None:
            return default
        if not isinstance(value, (list, tuple)):
            raise self.fail(key, f"an array of {kind.__name__}", _found(value))
        for i, v in enumerate(value):
            if not self._is(v, kind):
                raise self.fail(f"{key}[{i}]", _a(kind), _found(v))
        if length is not None and len(value) != length:
            raise InputError(f"{self.source}: {key}: has {len(value)} entries but tokenizer.ggml.tokens has "
                             f"{length}; expected one per token")
        return list(value)

    def token_id(self, key: str, n_tokens: int, default=None) -> int | None:
        value = self.get(key, int, None)
        if value is None:
            return default
        if not 0 <= value < n_tokens:
            raise self.fail(key, f"a token id in 0..{n_tokens - 1}", str(value))
        return value


def tokenizer_from_gguf(meta: Mapping[str, Any], source: str, config=None):
    """The tokenizer a GGUF file's `tokenizer.ggml.*` metadata describes, built as llama.cpp reads it
    (an HFTokenizer; for model "rwkv" a cogcore.rwkv_tokenizer.RWKVWorldTokenizer).

    `meta` maps each key to `ReaderField.contents()`; `source` (the file's path) names it in errors;
    `config` (the model's) is checked against it as for a tokenizer.json.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    m = _Meta(meta, source)
    if not any(str(key).startswith("tokenizer.ggml.") for key in meta):
        raise InputError(f"{source}: has no tokenizer (no tokenizer.ggml.* keys): text in/out needs one; "
                         f"model.forward still takes token ids")
    kind = m.get("tokenizer.ggml.model", str)
    if kind not in ("llama", "gpt2", "rwkv"):
        raise m.fail("tokenizer.ggml.model", "'llama' (sentencepiece), 'gpt2' (byte-level BPE) or 'rwkv' (RWKV "
                     "world)", repr(kind))
    tokens = m.array("tokenizer.ggml.tokens", str)
    n = len(tokens)
    if n == 0:
        raise m.fail("tokenizer.ggml.tokens", "at least one token", "an empty array")
    if kind == "rwkv":
        return _rwkv_world(m, tokens, config)
    vocab = {}
    for i, t in enumerate(tokens):
        if t in vocab:
            raise m.fail(f"tokenizer.ggml.tokens[{i}]", "every token's text once", f"{t!r} again (also id {vocab[t]})")
        vocab[t] = i
    types = m.array("tokenizer.ggml.token_type", int, n, default=[NORMAL] * n)
    for i, t in enumerate(types):
        if not NORMAL <= t <= BYTE:
            raise m.fail(f"tokenizer.ggml.token_type[{i}]", "a token type 1..6", str(t))

    spm = kind == "llama"
    bos = m.token_id("tokenizer.ggml.bos_token_id", n, 1 if spm and n > 1 else None)   # llama.cpp's defaults
    eos = m.token_id("tokenizer.ggml.eos_token_id", n, 2 if spm and n > 2 else None)
    unk = m.token_id("tokenizer.ggml.unknown_token_id", n, 0 if spm else None)
    pad = m.token_id("tokenizer.ggml.padding_token_id", n)
    pre = None
    if spm:
        merges = _spm_merges(m, tokens, types, vocab)
        add_bos_default = True
    else:
        pre = m.get("tokenizer.ggml.pre", str, "default")
        if pre not in PRE_TOKENIZERS:
            raise m.fail("tokenizer.ggml.pre", f"a pre-tokenizer cogcore knows ({', '.join(sorted(PRE_TOKENIZERS))})",
                         repr(pre))
        merges = _bpe_merges(m, vocab)
        add_bos_default = pre in ADD_BOS
    add_bos = m.get("tokenizer.ggml.add_bos_token", bool, add_bos_default)
    add_eos = m.get("tokenizer.ggml.add_eos_token", bool, False)
    for flag, key, tid in ((add_bos, "bos", bos), (add_eos, "eos", eos)):
        if flag and tid is None:
            raise InputError(f"{source}: tokenizer.ggml.add_{key}_token is true but tokenizer.ggml."
                             f"{key}_token_id is missing")
    chat_template = _chat_templates(m)

    has_bytes = BYTE in types
    model = models.BPE(vocab=vocab, merges=merges, byte_fallback=spm and has_bytes, fuse_unk=spm,
                       unk_token=tokens[unk] if unk is not None else None,
                       ignore_merges=not spm and pre in IGNORE_MERGES)
    tok = Tokenizer(model)
    add_space_prefix = spm and m.get("tokenizer.ggml.add_space_prefix", bool, True)
    if spm:
        steps = []
        if m.get("tokenizer.ggml.remove_extra_whitespaces", bool, False):
            steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
        steps += [normalizers.Prepend(SPACE)] if add_space_prefix else []
        tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", SPACE)])
        tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
                                        + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else []))
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre]]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()

    # matched whole in the text, as llama.cpp does; control and unknown ones print nothing
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty in (CONTROL, UNKNOWN)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == USER_DEFINED])
    if tok.get_vocab_size(with_added_tokens=True) != n:    # cannot happen with unique tokens; guard the ids
        raise InputError(f"{source}: tokenizer.ggml.tokens: the tokenizer built has "
                         f"{tok.get_vocab_size(with_added_tokens=True)} tokens, expected {n}")

    if add_bos or add_eos:      # what encode(text, bos=True) adds, as llama.cpp's tokenize(add_special)
        ends = [(add_bos, bos), (add_eos, eos)]
        tok.post_processor = processors.TemplateProcessing(
            single=([tokens[bos]] if add_bos else []) + ["$A"] + ([tokens[eos]] if add_eos else []),
            special_tokens=[(tokens[i], i) for flag, i in ends if flag])

    settings = {"chat_template": chat_template}
    for name, tid in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)):
        if tid is not None:
            settings[name] = tokens[tid]
    # unused tokens (the converter's [PADn] up to the model's vocab_size) print nothing, as in
    # llama.cpp's token_to_piece and transformers (for which those ids are past the vocabulary)
    return HFTokenizer(tok, settings, config, source=source, byte_level=not spm,
                       strip_first_space=spm and add_space_prefix,
                       unused_ids=[i for i, ty in enumerate(types) if ty == UNUSED])


def _chat_templates(m: _Meta):
    """tokenizer.chat_template, the default; with named ones (tokenizer.chat_template.NAME, as
    gguf-py writes a list of {name, template}; llama.cpp's llama_model_chat_template(model, name)
    reads them), a list of {name, template} as tokenizer_config.json has it: the default stays
    the one used."""
    default = m.get("tokenizer.chat_template", str, None)
    prefix = "tokenizer.chat_template."
    named = [{"name": key[len(prefix):], "template": m.get(key, str)}
             for key in sorted(k for k in m.meta if isinstance(k, str) and k.startswith(prefix))]
    if not named:
        return default
    return ([{"name": "default", "template": default}] if default is not None else []) + named


_RWKV_ESCAPED = re.compile(rb"(?:[^\\]|\\x[0-9a-f]{2}|\\[^x])*", re.S)
_RWKV_ESCAPE = re.compile(rb"\\(x[0-9a-f]{2}|[^x])", re.S)


def unescape_rwkv(text: str) -> bytes | None:
    """A token of a "rwkv" vocabulary as bytes, or None if it is not escaped as the converter
    escapes: it stores `repr(piece_bytes)[2:-1]` (\\xNN, \\t, \\n, \\r, \\\\, \\'), which
    llama.cpp's llama_unescape_rwkv_token undoes as here."""
    raw = text.encode("utf-8")
    if not _RWKV_ESCAPED.fullmatch(raw):
        return None

    def one(m):
        e = m[1]
        return bytes([int(e[1:], 16)]) if e[:1] == b"x" else {b"t": b"\t", b"n": b"\n", b"r": b"\r"}.get(e, e)
    return _RWKV_ESCAPE.sub(one, raw)


def _rwkv_world(m: _Meta, tokens: list[str], config):
    """The RWKV world tokenizer of a "rwkv" vocabulary (llama.cpp's converter `_set_vocab_rwkv_world`:
    id 0 `<s>` (control), the world pieces by line, `[PADn]` (unused) up to the vocab size). As
    llama.cpp's llm_tokenizer_rwkv: greedy longest match over every token's unescaped text (so
    `<s>` and `[PADn]` in a text are those tokens, where the rwkv package spells them in bytes),
    no BOS added; control and unused tokens decode to nothing. The chat template is the file's
    (the converter writes llama.cpp's rwkv-world template, `{{bos_token}}` being `<s>`)."""
    from .rwkv_tokenizer import RWKVWorldTokenizer
    types = m.array("tokenizer.ggml.token_type", int, len(tokens), default=[NORMAL] * len(tokens))
    pieces = {}
    for i, text in enumerate(tokens):
        piece = unescape_rwkv(text)
        if not piece:
            raise m.fail(f"tokenizer.ggml.tokens[{i}]", "a non-empty piece escaped as llama.cpp's converter "
                         "escapes (repr of its bytes)", repr(text))
        pieces[i] = piece
    silent = frozenset(i for i, ty in enumerate(types) if ty in (CONTROL, UNUSED, UNKNOWN))
    tok = RWKVWorldTokenizer(pieces, config, source=m.source, silent=silent)
    tok.chat_template = m.get("tokenizer.chat_template", str, None)
    for name in ("bos", "eos"):
        tid = m.token_id(f"tokenizer.ggml.{name}_token_id", len(tokens))
        if tid is not None:
            tok.special[f"{name}_token"] = tokens[tid]
    return tok


def _bpe_merges(m: _Meta, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """tokenizer.ggml.merges as pairs, each side and its concatenation a token (llama.cpp splits
    "left right" at the first space after the first character)."""
    merges = []
    for i, merge in enumerate(m.array("tokenizer.ggml.merges", str)):
        cut = merge.find(" ", 1)
        left, right = (merge[:cut], merge[cut + 1:]) if cut > 0 else (merge, "")
        missing = [t for t in (left, right, left + right) if t not in vocab]
        if cut <= 0 or missing:
            why = "no space between two tokens" if cut <= 0 else f"{missing[0]!r} is not a token"
            raise m.fail(f"tokenizer.ggml.merges[{i}]", "'left right', both sides and their concatenation "
                         "tokens", f"{merge!r} ({why})")
        merges.append((left, right))
    return merges


def _spm_merges(m: _Meta, tokens: list[str], types: list[int], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """The merges llama.cpp's sentencepiece tokenizer makes, ranked: it joins the adjacent pair whose
    concatenation is the best-scored token (ties: leftmost). Every way of cutting a normal or
    user-defined token in two known tokens is a merge, ranked by the whole token's score, as
    transformers' `generate_merges` (and its GGUF loader) derive them."""
    if "tokenizer.ggml.merges" in m.meta:
        return _bpe_merges(m, vocab)
    scores = m.array("tokenizer.ggml.scores", float, len(tokens))
    merges = []
    for token, ty, score in zip(tokens, types, scores):
        if ty not in (NORMAL, USER_DEFINED):
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.append((-score, vocab[left], vocab[right], left, right))
    merges.sort(key=lambda x: x[:3])
    return [(left, right) for *_, left, right in merges]


# ---- writing: a Hugging Face (or cogcore) tokenizer as tokenizer.ggml.* ---------------------------

def add_vocab_to_gguf(writer, model_dir) -> None:
    """Write the tokenizer.ggml.* keys of a model directory's tokenizer into a gguf.GGUFWriter, as
    llama.cpp's convert_hf_to_gguf.py does: a sentencepiece tokenizer.model as model "llama"
    (`_set_vocab_sentencepiece`), a byte-level BPE tokenizer.json as "gpt2" (`_set_vocab_gpt2`,
    its `pre` read from the tokenizer.json's pre-tokenizer instead of llama.cpp's table of
    hashes), a byte-fallback BPE tokenizer.json as "llama" (`_set_vocab_llama_hf`, with each
    token's score its merge rank, which llama.cpp leaves at -1000), then what gguf-py's SpecialVocab
    adds: the special ids, the add-BOS/EOS flags, the merges and the chat template."""
    model_dir = Path(os.fspath(model_dir))
    try:
        _add_vocab(writer, model_dir)
    except (TypeError, AttributeError, KeyError, IndexError) as e:   # a JSON value of an unexpected shape
        raise InputError(f"{model_dir}: its tokenizer files do not have the structure transformers writes "
                         f"({type(e).__name__}: {e})") from None


def _add_vocab(writer, model_dir: Path) -> None:
    n_vocab = _config_vocab_size(model_dir)
    if (model_dir / TOKENIZER_FILE).is_file():
        kind, pre, (tokens, scores, types) = "llama", "default", _sentencepiece_vocab(model_dir, n_vocab)
    elif (model_dir / HF_TOKENIZER_FILE).is_file():
        kind, pre, tokens, scores, types = _tokenizer_json_vocab(model_dir, n_vocab)
    else:
        raise InputError(f"{model_dir}: expected {TOKENIZER_FILE} or {HF_TOKENIZER_FILE} to write the GGUF "
                         f"vocabulary from, found neither")
    writer.add_tokenizer_model(kind)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    if scores is not None:
        writer.add_token_scores(scores)
    writer.add_token_types(types)
    if kind == "llama" and (model_dir / TOKENIZER_FILE).is_file():
        _add_sentencepiece_normalizer(writer, model_dir)
    _add_special_vocab(writer, model_dir, merges=kind == "gpt2", n_vocab=len(tokens) if kind == "llama" else None)


SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
ID_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
           "unk": "tokenizer.ggml.unknown_token_id", "sep": "tokenizer.ggml.seperator_token_id",   # sic
           "pad": "tokenizer.ggml.padding_token_id", "mask": "tokenizer.ggml.mask_token_id"}


def _add_special_vocab(writer, model_dir: Path, merges: bool, n_vocab: int | None) -> None:
    """What llama.cpp's gguf-py SpecialVocab writes (its current version, which the gguf package on
    PyPI may trail): the merges, the special token ids (tokenizer_config.json's *_token looked up
    in tokenizer.json's added tokens, then config.json's *_token_id), the add-BOS/EOS/SEP flags
    (read off tokenizer.json's post-processor, then tokenizer_config.json's add_*_token), the chat
    template and the normalizer's lowercase / strip-accents flags."""
    path = model_dir / HF_TOKENIZER_FILE
    spec = _read_json(path) if path.is_file() else {}
    settings_path = model_dir / HF_TOKENIZER_CONFIG
    settings = _read_json(settings_path) if settings_path.is_file() else {}
    config = _read_json(model_dir / "config.json") if (model_dir / "config.json").is_file() else {}
    if merges:
        pairs = (spec.get("model") or {}).get("merges") or []
        writer.add_token_merges([m if isinstance(m, str) else " ".join(p.replace(" ", "\u0120") for p in m)
                                 for m in pairs])
    names = {t: token_content(settings.get(f"{t}_token")) for t in SPECIAL_TYPES}
    if settings:                                           # BERT-like: CLS/SEP stand for BOS/EOS
        names["bos"], names["eos"] = names["bos"] or names["cls"], names["eos"] or names["sep"]
    add = _post_processor_flags(spec.get("post_processor"), names, bool(settings)) if spec else {}
    ids: dict[str, int] = {}
    added = [t for t in spec.get("added_tokens") or [] if isinstance(t, dict)]
    for typ in SPECIAL_TYPES if settings else ():          # SpecialVocab reads no more without it
        if isinstance(settings.get(f"add_{typ}_token"), bool):
            add.setdefault(typ, settings[f"add_{typ}_token"])
        if names[typ] is not None:
            _set_special(ids, typ, next((t.get("id") for t in added if t.get("content") == names[typ]), None), n_vocab)
    for typ in SPECIAL_TYPES:
        value = config.get(f"{typ}_token_id", (config.get("text_config") or {}).get(f"{typ}_token_id"))
        _set_special(ids, typ, value, n_vocab)
    for typ, i in ids.items():
        if typ in ID_KEYS:                                 # GGUF has no CLS key: SpecialVocab skips it too
            writer.add_uint32(ID_KEYS[typ], i)
    for typ, value in add.items():
        getattr(writer, f"add_add_{typ}_token")(value)
    template = settings.get("chat_template", _chat_template_files(model_dir)) if settings else None
    if isinstance(template, (str, list)):
        writer.add_chat_template(template)
    lowercase, strip_accents = _normalizer_flags(spec.get("normalizer"))
    if lowercase is not None:
        writer.add_normalizer_lowercase(lowercase)
    if strip_accents is not None:
        writer.add_normalizer_strip_accents(strip_accents)


def _set_special(ids: dict, typ: str, value, n_vocab: int | None) -> None:
    """The first id found for a type wins; ids past the vocabulary are skipped, as SpecialVocab does."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0 and typ not in ids:
        if n_vocab is None or value < n_vocab:
            ids[typ] = value


def _post_processor_flags(post, names: dict, has_settings: bool) -> dict[str, bool]:
    """add_bos/add_eos/add_sep as SpecialVocab reads them off the post-processor; like it, this
    takes the BOS/EOS/SEP names the template adds where tokenizer_config.json names none (it
    changes `names`). Its rewiring of a replaced EOS into an EOT/EOM id is left out."""
    def special(item):
        return item.get("SpecialToken", {}).get("id") if isinstance(item, dict) else None

    add: dict[str, bool] = {}
    steps = post.get("processors", [post]) if isinstance(post, dict) else []
    for step in steps:
        kind = step.get("type") if isinstance(step, dict) else None
        if kind == "ByteLevel":
            add.setdefault("bos", False)
            add.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            add.update(bos=True, eos=True, sep=True)
        elif kind == "TemplateProcessing":
            single, pair = step.get("single") or [], step.get("pair") or []
            first = special(single[0]) if len(single) > 1 else None
            last = special(single[-1]) if len(single) > 1 else None
            if first:
                if not has_settings:
                    names["bos"] = first
                elif first not in (names["bos"], names["cls"]):
                    names["bos"], names["cls"] = names["bos"] or first, names["cls"] or first
                add["bos"] = first in (names["bos"], names["cls"])
            if last:
                names["eos"] = last
                add["eos"] = True
            middle = pair[1 if first and pair and special(pair[0]) == first else 0:
                          -1 if last and pair and special(pair[-1]) == last else None]
            is_ab = middle and all(isinstance(x, dict) for x in (middle[0], middle[-1])) and (
                middle[0].get("Sequence", {}).get("id"), middle[-1].get("Sequence", {}).get("id")) == ("A", "B")
            if is_ab and middle[1:-1]:
                seps = [special(x) for x in middle[1:-1]]
                ends = (names["sep"], names["eos"])
                add["sep"] = bool((seps[0] and seps[0] in ends and not last)
                                  or (len(seps) == 2 and seps[1] and seps[1] in ends))
                if add["sep"] and not names["sep"] and has_settings:
                    names["sep"] = names["eos"]
    return add


def _chat_template_files(model_dir: Path):
    """chat_template.jinja (with additional_chat_templates/*.jinja as named ones) or chat_template.json."""
    if (model_dir / CHAT_TEMPLATE_FILE).is_file():
        return chat_template_files(model_dir)
    if (model_dir / "chat_template.json").is_file():
        return _read_json(model_dir / "chat_template.json").get("chat_template")
    return None


def _normalizer_flags(normalizer) -> tuple[bool | None, bool | None]:
    """(lowercase, strip_accents) of a tokenizer.json normalizer, None where it does not say."""
    lowercase = strip = None
    if not isinstance(normalizer, dict):
        return lowercase, strip
    kind = normalizer.get("type")
    if kind == "Lowercase":
        lowercase = True
    elif kind == "StripAccents":
        strip = True
    elif kind == "BertNormalizer":
        lowercase, strip = normalizer.get("lowercase"), normalizer.get("strip_accents")
    elif kind == "Sequence":
        for step in normalizer.get("normalizers") or []:
            low, acc = _normalizer_flags(step)
            lowercase = low if low is not None else lowercase
            strip = acc if acc is not None else strip
    return lowercase, strip


def _config_vocab_size(model_dir: Path) -> int | None:
    """config.json's vocab_size (the embedding rows: the vocabulary is padded to it), if any."""
    path = model_dir / "config.json"
    if not path.is_file():
        return None
    value = _read_json(path).get("vocab_size")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _read_json(path: Path) -> dict:
    value = read_json(str(path), InputError)
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _looks_special(token: str) -> bool:
    """convert_hf_to_gguf.py's does_token_look_special: added tokens some models forget to mark special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _sentencepiece_vocab(model_dir: Path, n_vocab: int | None):
    """convert_hf_to_gguf.py's _create_vocab_sentencepiece: pieces, scores and types of tokenizer.model,
    then added_tokens.json and tokenizer_config.json's added_tokens_decoder, padded to n_vocab."""
    import sentencepiece

    path = model_dir / TOKENIZER_FILE
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise InputError(f"{path}: expected a sentencepiece model, found a file it cannot load ({e})") from None
    size = n_vocab or sp.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(size)]
    scores = [-10000.0] * size
    types = [UNUSED] * size
    user_defined = _user_defined_pieces(sp)
    for i in range(min(sp.vocab_size(), size)):
        tokens[i], scores[i] = sp.IdToPiece(i), sp.GetScore(i)
        types[i] = (UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else UNUSED if sp.IsUnused(i)
                    else BYTE if sp.IsByte(i) else NORMAL)
        if i in user_defined:   # matched whole in the text, as sentencepiece does (llama.cpp: normal)
            tokens[i], types[i] = tokens[i].replace(SPACE, " "), USER_DEFINED
    added = {}
    if (model_dir / "added_tokens.json").is_file():
        added = _read_json(model_dir / "added_tokens.json")
    for text, i in added.items():
        if isinstance(i, int) and 0 <= i < size:
            tokens[i], scores[i], types[i] = text, -1000.0, USER_DEFINED
    if (model_dir / HF_TOKENIZER_CONFIG).is_file():
        decoder = _read_json(model_dir / HF_TOKENIZER_CONFIG).get("added_tokens_decoder") or {}
        for key, data in (decoder.items() if isinstance(decoder, dict) else ()):
            i, text = int(key) if str(key).isdigit() else -1, (data or {}).get("content")
            if not (0 <= i < size and isinstance(text, str)):
                continue
            special = data.get("special") or _looks_special(text)
            tokens[i] = text if special else text.replace(SPACE, " ")
            types[i], scores[i] = (CONTROL if special else USER_DEFINED), -1000.0
    return tokens, scores, types


def _user_defined_pieces(sp) -> set[int]:
    """The ids of a sentencepiece model's user-defined pieces, read from its serialized ModelProto
    (field 1: the pieces, each {1: text, 2: score, 3: type}, type 4 user-defined): the Python API
    cannot tell them (llama.cpp's converter writes them as normal tokens, which its tokenizer then
    merges from characters by score instead of matching them whole as sentencepiece does)."""
    def varint(buf: bytes, pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = buf[pos]
            value, shift, pos = value | (byte & 0x7F) << shift, shift + 7, pos + 1
            if byte < 0x80:
                return value, pos

    def fields(buf: bytes):
        pos = 0
        while pos < len(buf):
            key, pos = varint(buf, pos)
            wire = key & 7
            if wire == 0:
                value, pos = varint(buf, pos)
            elif wire == 2:
                size, pos = varint(buf, pos)
                value, pos = buf[pos:pos + size], pos + size
            elif wire in (1, 5):
                value, pos = None, pos + (8 if wire == 1 else 4)
            else:
                raise ValueError(f"protobuf wire type {wire}")
            yield key >> 3, value

    try:
        pieces = [piece for field, piece in fields(sp.serialized_model_proto()) if field == 1]
        return {i for i, piece in enumerate(pieces) if dict(fields(piece)).get(3) == USER_DEFINED}
    except (IndexError, ValueError):   # sentencepiece loaded it, so this cannot happen; fall back safely
        return set()


def _add_sentencepiece_normalizer(writer, model_dir: Path) -> None:
    """The two normalizer flags llama.cpp reads (add_space_prefix, remove_extra_whitespaces), from the
    sentencepiece model itself. llama.cpp's converter takes the first from tokenizer_config.json's
    add_prefix_space and never writes the second, whose defaults (true, false) suit Llama-2;
    cogcore's own models have neither a dummy prefix nor whitespace folding."""
    import sentencepiece

    config = model_dir / HF_TOKENIZER_CONFIG
    prefix = _read_json(config).get("add_prefix_space") if config.is_file() else None
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / TOKENIZER_FILE))
    if not isinstance(prefix, bool):
        prefix = sp.normalize("a").startswith(SPACE)
    writer.add_add_space_prefix(prefix)
    writer.add_remove_extra_whitespaces(SPACE * 2 not in sp.normalize("a  b"))


def _tokenizer_json_vocab(model_dir: Path, n_vocab: int | None):
    """(model, pre, tokens, scores, types) of a BPE tokenizer.json, as get_vocab_base (byte-level)
    or LlamaHfVocab (byte fallback) list them."""
    from tokenizers import Tokenizer

    path = model_dir / HF_TOKENIZER_FILE
    spec = _read_json(path)
    bpe = spec.get("model") or {}
    if not isinstance(bpe, dict) or bpe.get("type") != "BPE":
        found = bpe.get("type") if isinstance(bpe, dict) else bpe
        raise InputError(f"{path}: model.type: expected 'BPE' (the only kind GGUF's 'llama' and 'gpt2' "
                         f"vocabularies hold), found {found!r}")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:      # the library raises a bare Exception for a file it cannot parse
        raise InputError(f"{path}: expected a tokenizers-library tokenizer.json, found a file it "
                         f"cannot load ({e})") from None
    settings_path = model_dir / HF_TOKENIZER_CONFIG
    settings = _read_json(settings_path) if settings_path.is_file() else {}
    add_transformers_special_tokens(tok, model_dir, settings)   # the converter lists AutoTokenizer's vocabulary
    added = tok.get_added_tokens_decoder()
    id_to_token = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    size = max(n_vocab or 0, max(id_to_token, default=-1) + 1)
    byte_fallback = bool(bpe.get("byte_fallback"))
    unk = bpe.get("unk_token") or token_content(settings.get("unk_token"))
    tokens, types = [], []
    for i in range(size):
        text = id_to_token.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            if byte_fallback:       # LlamaHfVocab: added tokens keep their text (the unknown one typed
                                    # as sentencepiece types it, where LlamaHfVocab calls it control)
                types.append(UNKNOWN if text == unk else CONTROL if added[i].special else USER_DEFINED)
            else:                   # get_vocab_base: as the tokenizer prints them back
                if not added[i].normalized:
                    text = tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
                if added[i].special or _looks_special(text):
                    types.append(CONTROL)
                else:
                    text = text.replace(SPACE, " ")
                    types.append(USER_DEFINED)
            tokens.append(text)
        else:
            tokens.append(text)
            is_byte = byte_fallback and len(text) == 6 and text.startswith("<0x") and text.endswith(">")
            types.append(BYTE if is_byte else NORMAL)
    if not byte_fallback:
        return "gpt2", _pre_name(path, spec), tokens, None, types
    # llama.cpp's sentencepiece tokenizer merges by score: rank each token by the first merge that
    # makes it, so that it replays the tokenizer.json's merges in order
    scores = [0.0] * size
    ranked = set()
    for rank, merge in enumerate(bpe.get("merges") or []):
        pair = merge.split(" ", 1) if isinstance(merge, str) else merge
        i = tok.token_to_id("".join(pair)) if isinstance(pair, list) and len(pair) == 2 else None
        if i is not None and i not in ranked:
            ranked.add(i)
            scores[i] = -float(rank)
    return "llama", "default", tokens, scores, types


def _pre_name(path: Path, spec: dict) -> str:
    """The llama.cpp pre-tokenizer name whose regexes split text as this tokenizer.json's
    pre-tokenizer does. llama.cpp's converter recognises a tokenizer by hashing its encoding of a
    test string and refuses unknown ones; reading the regex itself works for any retrained one."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    splits = [s.get("pattern", {}).get("Regex") for s in steps if isinstance(s, dict) and s.get("type") == "Split"]
    byte_level = [s for s in steps if isinstance(s, dict) and s.get("type") == "ByteLevel"]
    if not splits and byte_level and byte_level[0].get("use_regex", True):
        return "gpt-2"
    known = {_LLAMA3: "llama-bpe", _QWEN2: "qwen2", _QWEN35: "qwen35", _GPT2: "gpt-2", _TEKKEN: "tekken",
             _GPT4O: "gpt-4o"}
    if len(splits) == 1 and byte_level and _hf_spelling(splits[0]) in known:
        return known[_hf_spelling(splits[0])]
    raise InputError(f"{path}: pre_tokenizer: expected GPT-2's byte-level split or one of llama.cpp's "
                     f"pre-tokenizer regexes, found {json.dumps(pre)[:200]}")


def _hf_spelling(regex) -> str | None:
    """A regex with tokenizer.json's case-insensitive contractions spelled as llama.cpp spells them."""
    if not isinstance(regex, str):
        return None
    return regex.replace("(?i:'s|'t|'re|'ve|'m|'ll|'d)", _CONTRACTIONS)
