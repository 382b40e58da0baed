"""The GGUF tokenizer (cogcore/gguf_vocab.py) against the libraries' own ids, both directions.

The fixtures (tests/fixtures/gguf_vocab/, made by tests/fixtures/make_gguf_vocab.py) are three
small trained tokenizers (Llama-3-style and Qwen2-style byte-level BPE, Llama-2-style
sentencepiece BPE with byte fallback), each with the vocab-only GGUF llama.cpp's
convert_hf_to_gguf.py wrote for it and, per text of a corpus (ASCII, accented Latin, CJK, emoji,
whitespace runs, digits, special tokens in text), the ids of the `tokenizers` library on its
tokenizer.json, of transformers, of sentencepiece, and of llama.cpp's own tokenizer.
"""

import glob
import json
import os
import shutil

import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cogcore.errors import CogcoreError, InputError  # noqa: E402
from cogcore.gguf_vocab import PRE_TOKENIZERS, add_vocab_to_gguf, tokenizer_from_gguf  # noqa: E402
from cogcore.tokenizer import HFTokenizer, Tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "gguf_vocab")
NAMES = ["llama3_bpe", "qwen2_bpe", "llama2_spm"]


def read_meta(path):
    return {key: field.contents() for key, field in gguf.GGUFReader(path).fields.items()}


def tokenizer_keys(meta):
    return {k: v for k, v in meta.items() if k.startswith("tokenizer.")}


def write_vocab(model_dir, out):
    writer = gguf.GGUFWriter(str(out), "llama")
    add_vocab_to_gguf(writer, model_dir)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return read_meta(str(out))


_META, _TOK = {}, {}


def fixture_meta(name):
    if name not in _META:
        _META[name] = read_meta(os.path.join(FIXTURES, name, "vocab.gguf"))
    return _META[name]


def fixture_tok(name):
    if name not in _TOK:
        _TOK[name] = tokenizer_from_gguf(fixture_meta(name), os.path.join(FIXTURES, name, "vocab.gguf"))
    return _TOK[name]


def reference(name):
    with open(os.path.join(FIXTURES, name, "reference.json"), encoding="utf-8") as f:
        return json.load(f)["texts"]


CASES = [(name, text) for name in NAMES for text in reference(name)]


# ---- reading: the GGUF's tokenizer gives the libraries' ids ---------------------------------------

@pytest.mark.parametrize("name, text", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_ids_and_text_as_the_original_tokenizer(name, text):
    tok, ref = fixture_tok(name), reference(name)[text]
    ids = tok.encode(text, bos=True)
    assert ids == ref["ids"]                              # tokenizers on the tokenizer.json it came from
    assert ids == ref["llama_cpp"]                        # llama.cpp's llama-tokenize on the same GGUF
    if "sentencepiece" in ref:                            # the sentencepiece model itself (Llama-2 style)
        assert ids == ref["sentencepiece"]
    if name != "llama2_spm":                              # transformers 5 rebuilds Llama's pre-tokenizer
        assert ids == ref["transformers"]                 # (see docs/gguf.md)
    assert tok.encode(text) == ref["no_special"]
    assert tok.decode(ids) == ref["decoded"]
    dec = tok.stream_decoder()
    assert "".join(dec.push(i) for i in ids) + dec.flush() == ref["decoded"]


def test_special_ids_and_settings_come_from_the_metadata():
    llama3, qwen2, spm = (fixture_tok(n) for n in NAMES)
    assert isinstance(llama3, HFTokenizer) and llama3.byte_level and not spm.byte_level
    assert llama3.id_to_piece(llama3.bos_id) == "<|begin_of_text|>" and llama3.id_to_piece(llama3.eos_id) == "<|eot_id|>"
    assert qwen2.bos_id is None and qwen2.id_to_piece(qwen2.eos_id) == "<|im_end|>"
    assert (spm.bos_id, spm.eos_id) == (1, 2)
    assert "<|im_start|>" in qwen2.chat_template and "[INST]" in spm.chat_template
    assert qwen2.special_tokens()["pad_token"] == "<|endoftext|>"
    # user-defined tokens are matched whole but are not special: decode keeps them
    think = qwen2.encode("<think>")
    assert len(think) == 1 and qwen2.decode(think) == "<think>"


LLAMA_CPP = os.environ.get("COGCORE_LLAMA_CPP")   # a llama.cpp source tree: its models/ggml-vocab-*.gguf
LLAMA_CPP_VOCABS = sorted(glob.glob(os.path.join(LLAMA_CPP, "models", "ggml-vocab-*.gguf"))) if LLAMA_CPP else []


@pytest.mark.skipif(not LLAMA_CPP_VOCABS, reason="set COGCORE_LLAMA_CPP to a llama.cpp source tree")
@pytest.mark.parametrize("path", LLAMA_CPP_VOCABS or [""], ids=os.path.basename)
def test_llama_cpp_vocab_files(path):
    """Opt-in: llama.cpp's own tokenizer tests (published models' vocab-only GGUFs, texts, ids
    without BOS); a tokenizer cogcore does not build is refused naming the key."""
    meta = read_meta(path)
    try:
        tok = tokenizer_from_gguf(meta, path)
    except InputError as e:
        assert "tokenizer.ggml.model" in str(e) or "tokenizer.ggml.pre" in str(e)
        return
    if not os.path.exists(path + ".inp"):
        return
    with open(path + ".inp", encoding="utf-8") as f:
        texts = f.read().split("\n__ggml_vocab_test__\n")
    with open(path + ".out", encoding="utf-8") as f:
        outs = f.read().split("\n")
    for text, out in zip(texts, outs):
        assert tok.encode(text) == [int(i) for i in out.split()], text


def test_a_sentencepiece_style_tokenizer_json_streams_as_it_decodes():
    """The space sentencepiece puts before the text: decode strips it, so the stream does too."""
    tok = HFTokenizer.from_model_dir(os.path.join(FIXTURES, "llama2_spm"))
    assert tok.strip_first_space and not fixture_tok("qwen2_bpe").strip_first_space
    for text, ref in reference("llama2_spm").items():
        dec = tok.stream_decoder()
        assert "".join(dec.push(i) for i in ref["ids"]) + dec.flush() == tok.decode(ref["ids"]) == ref["decoded"]


def test_the_model_config_is_checked():
    class Config:
        vocab_size, bos_token_id, eos_token_id = 10, 1, 2
    with pytest.raises(InputError, match="vocab_size"):
        tokenizer_from_gguf(fixture_meta("qwen2_bpe"), "q.gguf", Config())


# ---- writing: add_vocab_to_gguf writes what llama.cpp's converter writes ------------------------

@pytest.mark.parametrize("name", NAMES)
def test_written_keys_equal_llama_cpp_converters(name, tmp_path):
    theirs = tokenizer_keys(fixture_meta(name))
    mine = tokenizer_keys(write_vocab(os.path.join(FIXTURES, name), tmp_path / "v.gguf"))
    if name == "llama2_spm":   # read from the sentencepiece model; llama.cpp's defaults when absent
        assert mine.pop("tokenizer.ggml.add_space_prefix") is True
        assert mine.pop("tokenizer.ggml.remove_extra_whitespaces") is False
    assert mine.keys() == theirs.keys()
    for key in theirs:
        assert mine[key] == theirs[key], key


GGUF_DIR = os.path.join(ROOT, "tests", "fixtures", "gguf")
FAMILIES = os.path.join(ROOT, "tests", "fixtures", "families")
with open(os.path.join(GGUF_DIR, "made_by.json"), encoding="utf-8") as f:
    CONVERTED = sorted(name.removesuffix("-f32.gguf") for name, tool in json.load(f).items()
                       if name.endswith("-f32.gguf") and tool.startswith("convert_hf_to_gguf.py"))


@pytest.mark.parametrize("family", CONVERTED)
def test_every_family_writes_the_keys_of_llama_cpps_converter(family, tmp_path):
    """The family fixtures' GGUF files made by llama.cpp's converter: the same tokenizer.* keys.
    The converter lists transformers' AutoTokenizer's vocabulary, which for model type qwen2 is
    its Qwen2Tokenizer: a pad token "<|endoftext|>" by default, appended after the vocabulary."""
    theirs = tokenizer_keys(read_meta(os.path.join(GGUF_DIR, f"{family}-f32.gguf")))
    mine = tokenizer_keys(write_vocab(os.path.join(FAMILIES, family), tmp_path / "v.gguf"))
    assert mine == theirs
    with open(os.path.join(FAMILIES, family, "tokenizer.json"), encoding="utf-8") as f:
        n = len(json.load(f)["model"]["vocab"])
    appended = ["<|endoftext|>"] if family == "qwen2" else []
    assert theirs["tokenizer.ggml.tokens"][n:] == appended + [f"[PAD{i}]" for i in range(n + len(appended), 320)]


@pytest.mark.parametrize("family", CONVERTED)
def test_the_directory_and_the_converters_file_read_text_alike(family):
    """HFTokenizer on the family directory appends what transformers' AutoTokenizer appends, so it
    reads text as the file llama.cpp's converter wrote from that vocabulary: for qwen2
    "<|endoftext|>" is the one special token 312 (transformers 5: [1, 42, 75, 312, 223, ...])."""
    path = os.path.join(GGUF_DIR, f"{family}-f32.gguf")
    text = "Hi<|endoftext|> wörld"
    hf, gg = HFTokenizer.from_model_dir(os.path.join(FAMILIES, family)), tokenizer_from_gguf(read_meta(path), path)
    ids = hf.encode(text, bos=True)
    assert ids == gg.encode(text, bos=True) and (312 in ids) == (family == "qwen2")
    assert hf.decode(ids) == gg.decode(ids) == ("Hi wörld" if family == "qwen2" else text)


def test_special_tokens_transformers_appends_are_written_after_the_vocabulary(tmp_path):
    """Special tokens tokenizer_config.json names but tokenizer.json lacks: transformers appends
    them (bos..mask, then the extra ones), so llama.cpp's converter lists them there, as control."""
    shutil.copytree(os.path.join(FAMILIES, "llama"), tmp_path / "m")
    settings = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text(encoding="utf-8"))
    settings.update(mask_token="<mask>", pad_token="<pad>", extra_special_tokens=["<x>", "<pad>"])
    (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    meta = write_vocab(tmp_path / "m", tmp_path / "v.gguf")
    assert meta["tokenizer.ggml.tokens"][312:316] == ["<pad>", "<mask>", "<x>", "[PAD315]"]
    assert meta["tokenizer.ggml.token_type"][312:316] == [3, 3, 3, 5]


@pytest.mark.parametrize("family", CONVERTED)
def test_unused_tokens_decode_to_nothing(family):
    """The converter's [PADn] placeholders (ids past the tokenizer, up to the model's vocab_size)
    print nothing, as those ids do in the `tokenizers` library on the original tokenizer.json
    (transformers' decode) and in llama.cpp's token_to_piece (an UNUSED token is no text)."""
    from tokenizers import Tokenizer as Reference
    path = os.path.join(GGUF_DIR, f"{family}-f32.gguf")
    meta = read_meta(path)
    tok, ref = tokenizer_from_gguf(meta, path), Reference.from_file(os.path.join(FAMILIES, family, "tokenizer.json"))
    unused = [i for i, t in enumerate(meta["tokenizer.ggml.token_type"]) if t == 5]
    assert unused and all(meta["tokenizer.ggml.tokens"][i].startswith("[PAD") for i in unused)
    ids = [40, *unused[:2], 50, unused[-1], 60, 312, 2]
    assert tok.decode(ids) == ref.decode(ids) == ref.decode([40, 50, 60])
    dec = tok.stream_decoder()
    assert "".join(dec.push(i) for i in ids) + dec.flush() == ref.decode(ids)
    assert not set(tok.encode(" ".join(f"[PAD{i}]" for i in unused))) & set(unused)   # never produced


def test_a_byte_fallback_tokenizer_json_alone_writes_scores_that_replay_its_merges(tmp_path):
    """No tokenizer.model: the "llama" vocabulary comes from tokenizer.json, each token scored by
    the rank of its merge, and reads back to the same ids."""
    for f in ("tokenizer.json", "tokenizer_config.json", "config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(FIXTURES, "llama2_spm", f), tmp_path / f)
    meta = write_vocab(tmp_path, tmp_path / "v.gguf")
    theirs = fixture_meta("llama2_spm")
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.tokens"] == theirs["tokenizer.ggml.tokens"]
    assert meta["tokenizer.ggml.token_type"] == theirs["tokenizer.ggml.token_type"]
    tok = tokenizer_from_gguf(meta, "v.gguf")
    for text, ref in reference("llama2_spm").items():
        assert tok.encode(text, bos=True) == ref["ids"], text


def test_a_family_directory_round_trips():
    """The family fixtures' GPT-2-style tokenizer.json: written as pre "gpt-2", read back to
    transformers' recorded encodings."""
    with open(os.path.join(ROOT, "tests", "fixtures", "families", "tokenizer_reference.json"), encoding="utf-8") as f:
        ref = json.load(f)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        meta = write_vocab(os.path.join(ROOT, "tests", "fixtures", "families", "qwen2"), os.path.join(tmp, "v.gguf"))
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    tok = tokenizer_from_gguf(meta, "v.gguf")
    for text, ids in ref["encodings"].items():
        assert tok.encode(text, bos=True) == ids
        assert tok.encode(text) == ref["no_special"][text]
        assert tok.decode(ids) == ref["decodings"][text]


def test_cogcore_sentencepiece_model_round_trips(tmp_path):
    """cogcore's own char-level sentencepiece model: no dummy prefix, ids as sentencepiece's."""
    shipped = os.path.join(ROOT, "weights", "cogcore-tiny")
    meta = write_vocab(shipped, tmp_path / "v.gguf")
    assert meta["tokenizer.ggml.add_space_prefix"] is False
    tok = tokenizer_from_gguf(meta, "v.gguf")
    sp = Tokenizer.from_file(os.path.join(shipped, "tokenizer.model"))
    for text in ("12+345=357", "sort: dcba -> abcd", "  two  spaces ", "é?"):
        ids = sp.encode(text, bos=True)
        assert tok.encode(text, bos=True) == ids, text
        if sp.bos_id is not None and 0 not in ids:     # sentencepiece prints <unk> as " \u2047 ", decode drops it
            assert tok.decode(ids) == sp.decode(ids)


def test_what_cannot_be_written_is_named(tmp_path):
    with pytest.raises(InputError, match="tokenizer.model or tokenizer.json"):
        write_vocab(tmp_path, tmp_path / "v.gguf")
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": []}}))
    with pytest.raises(InputError, match="model.type.*Unigram"):
        write_vocab(tmp_path, tmp_path / "v.gguf")
    spec = json.load(open(os.path.join(FIXTURES, "qwen2_bpe", "tokenizer.json"), encoding="utf-8"))
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+"
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match="pre_tokenizer"):
        write_vocab(tmp_path, tmp_path / "v.gguf")


def test_every_known_pre_tokenizer_builds():
    meta = dict(fixture_meta("qwen2_bpe"))
    for pre in PRE_TOKENIZERS:
        meta["tokenizer.ggml.pre"] = pre
        assert tokenizer_from_gguf(meta, "q.gguf").encode("Hello 12345 wörld 中文 🦙!") != []


# ---- malformed metadata: an InputError that names the key ---------------------------------------

def broken(name, **changes):
    meta = dict(fixture_meta(name))
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is KeyError:
            del meta[key]
        else:
            meta[key] = value
    return meta


N = 1024
MALFORMED = [
    ("qwen2_bpe", {"tokenizer__ggml__model": KeyError}, "tokenizer.ggml.model: missing"),
    ("qwen2_bpe", {"tokenizer__ggml__model": "t5"}, "tokenizer.ggml.model: .*'t5'"),
    ("qwen2_bpe", {"tokenizer__ggml__model": 3}, "tokenizer.ggml.model: expected a string, found int 3"),
    ("qwen2_bpe", {"tokenizer__ggml__tokens": KeyError}, "tokenizer.ggml.tokens: missing"),
    ("qwen2_bpe", {"tokenizer__ggml__tokens": "abc"}, "tokenizer.ggml.tokens: expected an array"),
    ("qwen2_bpe", {"tokenizer__ggml__tokens": []}, "tokenizer.ggml.tokens: expected at least one"),
    ("qwen2_bpe", {"tokenizer__ggml__tokens": ["a", 5]}, r"tokenizer.ggml.tokens\[1\]: expected a string, found int 5"),
    ("qwen2_bpe", {"tokenizer__ggml__tokens": ["a", "b", "a"] + ["x%d" % i for i in range(N - 3)]},
     r"tokenizer.ggml.tokens\[2\]: .*again"),
    ("qwen2_bpe", {"tokenizer__ggml__token_type": [1] * (N - 1)}, "tokenizer.ggml.token_type: has 1023 entries"),
    ("qwen2_bpe", {"tokenizer__ggml__token_type": [1] * (N - 1) + [9]}, r"tokenizer.ggml.token_type\[1023\]: .*9"),
    ("qwen2_bpe", {"tokenizer__ggml__merges": KeyError}, "tokenizer.ggml.merges: missing"),
    ("qwen2_bpe", {"tokenizer__ggml__merges": ["Ġ t", "no_space"]}, r"tokenizer.ggml.merges\[1\]: .*no space"),
    ("qwen2_bpe", {"tokenizer__ggml__merges": ["Ġ t", "Ġt zzzz"]}, r"tokenizer.ggml.merges\[1\]: .*'zzzz' is not"),
    ("qwen2_bpe", {"tokenizer__ggml__pre": "mystery"}, "tokenizer.ggml.pre: .*'mystery'"),
    ("qwen2_bpe", {"tokenizer__ggml__eos_token_id": N}, "tokenizer.ggml.eos_token_id: expected a token id in 0..1023"),
    ("qwen2_bpe", {"tokenizer__ggml__eos_token_id": -1}, "tokenizer.ggml.eos_token_id: .*-1"),
    ("qwen2_bpe", {"tokenizer__ggml__eos_token_id": "7"}, "tokenizer.ggml.eos_token_id: expected an int, found str '7'"),
    ("qwen2_bpe", {"tokenizer__ggml__add_bos_token": True}, "add_bos_token is true but .*bos_token_id is missing"),
    ("qwen2_bpe", {"tokenizer__ggml__add_eos_token": 1}, "tokenizer.ggml.add_eos_token: expected a bool, found int 1"),
    ("qwen2_bpe", {"tokenizer__chat_template": ["x"]}, "tokenizer.chat_template: expected a string, found list"),
    ("llama2_spm", {"tokenizer__ggml__scores": KeyError}, "tokenizer.ggml.scores: missing"),
    ("llama2_spm", {"tokenizer__ggml__scores": [0.0] * 5}, "tokenizer.ggml.scores: has 5 entries"),
    ("llama2_spm", {"tokenizer__ggml__scores": [float("nan")] * N}, r"tokenizer.ggml.scores\[0\]: expected a finite number, found float nan"),
    ("llama2_spm", {"tokenizer__ggml__bos_token_id": 10 ** 9}, "tokenizer.ggml.bos_token_id"),
    ("llama2_spm", {"tokenizer__ggml__add_space_prefix": "yes"}, "tokenizer.ggml.add_space_prefix: expected a bool"),
]


@pytest.mark.parametrize("name, changes, message", MALFORMED)
def test_malformed_metadata_is_named(name, changes, message):
    with pytest.raises(InputError, match=message):
        tokenizer_from_gguf(broken(name, **changes), "bad.gguf")


def test_a_file_without_a_tokenizer_says_so():
    meta = {k: v for k, v in fixture_meta("qwen2_bpe").items() if not k.startswith("tokenizer.")}
    with pytest.raises(InputError, match="has no tokenizer .*token ids"):
        tokenizer_from_gguf(meta, "bare.gguf")


def test_not_a_mapping():
    with pytest.raises(InputError, match="mapping"):
        tokenizer_from_gguf([("tokenizer.ggml.model", "gpt2")], "bad.gguf")


ODD = st.one_of(st.none(), st.booleans(), st.integers(-3, 2 ** 40), st.floats(allow_nan=True), st.text(max_size=8),
                st.lists(st.one_of(st.integers(-2, 2000), st.text(max_size=4), st.floats()), max_size=6))
KEYS = ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["qwen2_bpe", "llama2_spm"]), key=st.sampled_from(KEYS), value=ODD,
       cut=st.one_of(st.none(), st.integers(0, 1100)))
def test_fuzzed_metadata_gives_a_tokenizer_or_a_cogcore_error(name, key, value, cut):
    meta = dict(fixture_meta(name))
    if cut is not None and isinstance(meta.get(key), list):
        meta[key] = meta[key][:cut]            # an array cut short
    else:
        meta[key] = value
    try:
        tok = tokenizer_from_gguf(meta, "fuzz.gguf")
    except CogcoreError as e:
        assert "fuzz.gguf" in str(e)
        return
    ids = tok.encode("Hello wörld 中 🦙 <s>", bos=True)
    assert all(0 <= i < tok.vocab_size for i in ids)
    tok.decode(ids)


JSON_ODD = st.one_of(st.none(), st.booleans(), st.integers(-2, 5000), st.text(max_size=6),
                     st.lists(st.one_of(st.integers(0, 3), st.text(max_size=3), st.none()), max_size=3),
                     st.dictionaries(st.sampled_from(["type", "id", "content", "single", "processors", "special"]),
                                     st.one_of(st.none(), st.text(max_size=3), st.integers(0, 3)), max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(NAMES), file=st.sampled_from(["tokenizer.json", "tokenizer_config.json", "config.json"]),
       key=st.sampled_from(["model", "post_processor", "pre_tokenizer", "added_tokens", "normalizer", "bos_token",
                            "eos_token", "added_tokens_decoder", "chat_template", "add_bos_token", "vocab_size",
                            "bos_token_id", "text_config"]), value=JSON_ODD)
def test_fuzzed_tokenizer_files_write_or_give_a_cogcore_error(tmp_path, name, file, key, value):
    work = tmp_path / f"{name}-{file}-{key}"
    shutil.copytree(os.path.join(FIXTURES, name), work, dirs_exist_ok=True)
    spec = json.loads((work / file).read_text(encoding="utf-8"))
    spec[key] = value
    (work / file).write_text(json.dumps(spec), encoding="utf-8")
    try:
        meta = write_vocab(work, work / "v.gguf")
    except CogcoreError as e:
        assert str(work) in str(e)
        return
    assert meta["tokenizer.ggml.tokens"]


def test_named_chat_templates_are_written_and_read_back(tmp_path):
    """additional_chat_templates/NAME.jinja: written as gguf-py writes a list of templates
    (tokenizer.chat_template.NAME, their names in tokenizer.chat_templates), read back beside
    the default, which stays the one used."""
    for f in ("tokenizer.json", "tokenizer_config.json", "config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(FIXTURES, "llama2_spm", f), tmp_path / f)
    (tmp_path / "additional_chat_templates").mkdir()
    (tmp_path / "additional_chat_templates" / "tool_use.jinja").write_text("T {{ tools }}")
    meta = write_vocab(tmp_path, tmp_path / "v.gguf")
    default = (tmp_path / "chat_template.jinja").read_text(encoding="utf-8")
    assert meta["tokenizer.chat_template"] == default and meta["tokenizer.chat_templates"] == ["tool_use"]
    assert meta["tokenizer.chat_template.tool_use"] == "T {{ tools }}"
    tok = tokenizer_from_gguf(meta, "v.gguf")
    assert tok.chat_template == default
    assert tok.settings["chat_template"] == [{"name": "default", "template": default},
                                             {"name": "tool_use", "template": "T {{ tools }}"}]
    with pytest.raises(InputError, match="tokenizer.chat_template.tool_use: expected a string"):
        tokenizer_from_gguf({**meta, "tokenizer.chat_template.tool_use": 3}, "v.gguf")
