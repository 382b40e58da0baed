"""GGUF files (llama.cpp's format): read against transformers' and GGML's own numbers, written
as llama.cpp's converter writes them, and refused clearly when malformed.

The fixtures in tests/fixtures/gguf/ were made from the family fixtures by llama.cpp's own
converter and llama-quantize (tests/fixtures/make_gguf.py; made_by.json says which file
came from which tool).
"""

import json
import os
import random
import shutil
import struct

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cogcore
from cogcore.errors import CogcoreError, ConfigError, WeightsError
from cogcore.gguf_export import export_gguf
from cogcore.gguf_model import open_gguf, read_gguf
from cogcore.gguf_names import permute_rows, unpermute_rows
from cogcore.model import Model
from cogcore.quant import QuantTensor
from cogcore.weights import Weights

HERE = os.path.join(os.path.dirname(__file__), "fixtures")
GGUF_DIR = os.path.join(HERE, "gguf")
FAMILIES = ("llama", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
CONVERTED = ("llama", "qwen2", "qwen3", "mixtral", "olmoe")          # by llama.cpp's converter
QUANTIZED = [(f, q) for f in ("llama", "qwen2", "mixtral") for q in ("q8_0", "q4_0")]
RWKV7 = "rwkv7-hd64"            # fla's RWKV-7 (tests/fixtures/make_rwkv7.py), by the converter at BF16
READ = FAMILIES + (RWKV7,)
with open(os.path.join(GGUF_DIR, "made_by.json")) as _f:
    MADE_BY = json.load(_f)


def fixture(family, kind=None):
    kind = kind or ("bf16" if family == RWKV7 else "f32")      # the RWKV-7 weights are bfloat16 values
    return os.path.join(GGUF_DIR, f"{family}-{kind}.gguf")


def reference(family):
    d = os.path.join(HERE, "families", family)
    with open(os.path.join(d, "reference.json")) as f:
        return d, json.load(f), np.load(os.path.join(d, "logits.npy"))


def relative(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_the_fixtures_come_from_llama_cpp():
    for family in CONVERTED + (RWKV7,):
        assert MADE_BY[os.path.basename(fixture(family))].startswith("convert_hf_to_gguf.py")
    for family, qtype in QUANTIZED:
        assert MADE_BY[f"{family}-{qtype}.gguf"].startswith(("convert_hf_to_gguf.py", "llama-quantize"))


# ---- reading -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("family", READ)
def test_float_gguf_matches_the_reference_library(family, backend):        # transformers; fla for RWKV-7
    _, ref, want = reference(family)
    model = cogcore.load(fixture(family), backend=backend)
    assert relative(model.forward(ref["prompt"]), want) < 1e-4
    cache, greedy = model.new_cache(), []
    logits = model.forward(ref["prompt"], cache=cache)
    for _ in ref["greedy"]:
        greedy.append(int(np.argmax(logits[-1])))
        logits = model.forward([greedy[-1]], cache=cache)
    assert greedy == ref["greedy"]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("family", ["llama", "mixtral", RWKV7])
def test_f32_gguf_matches_llama_cpps_own_logits(family, backend):        # RWKV7: llama.cpp ran its F32 conversion
    _, ref, _ = reference(family)
    want = np.load(os.path.join(GGUF_DIR, "llama_cpp_logits.npz"))[family]     # llama.cpp, F32 KV cache
    got = cogcore.load(fixture(family), backend=backend).forward(ref["prompt"])
    assert relative(got, want) < 1e-4


@pytest.mark.parametrize("family", READ)
def test_a_gguf_file_gives_the_config_of_its_hugging_face_directory(family):
    d, _, _ = reference(family)
    from_hf = cogcore.load(d, backend="numpy").config.to_dict()
    from_gguf = cogcore.load(fixture(family), backend="numpy").config.to_dict()
    if family == "llama":        # Llama-3 RoPE scaling arrives as the converter's rope_freqs divisors
        assert from_hf["rope_scaling"]["rope_type"] == "llama3"
        assert from_gguf["rope_scaling"]["rope_type"] == "factors"
        from_hf.pop("rope_scaling"), from_gguf.pop("rope_scaling")
    if family == RWKV7:          # llama.cpp normalises kk as x / max(|x|, eps), fla's fused kernel x / sqrt(|x|^2 + eps)
        assert (from_hf.pop("rwkv_kk_norm"), from_gguf.pop("rwkv_kk_norm")) == ("epsilon", "clamp")
    assert from_gguf == from_hf


def dequantized_by_gguf(path):
    """The model of a quantized GGUF file with every block dequantized by gguf.quants (not cogcore)."""
    config, tensors, _ = read_gguf(path)
    floats = {}
    for name, a in tensors.items():
        if isinstance(a, QuantTensor):
            a = gguf.quants.dequantize(a.data, gguf.GGMLQuantizationType[a.qtype.upper()]).reshape(a.shape)
        floats[name] = a
    return Model(config, Weights(floats), backend="numpy")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("family, qtype", QUANTIZED)
def test_quantized_gguf_matches_ggml_dequantization(family, qtype, backend):
    _, ref, _ = reference(family)
    model = cogcore.load(fixture(family, qtype), backend=backend)
    kinds = {a.qtype for a in model.weights.tensors.values() if isinstance(a, QuantTensor)}
    assert kinds == {qtype}
    want = dequantized_by_gguf(fixture(family, qtype)).forward(ref["prompt"])
    assert relative(model.forward(ref["prompt"]), want) < 1e-5


def views_the_mapped_file(a) -> bool:
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = getattr(a, "base", None)
    return False


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(GGUF_DIR) if f.endswith(".gguf")))
def test_the_reader_gives_what_gguf_reader_gives(name):
    """open_gguf's GGUFReader reads through a plain view of the memory map (faster): the same
    fields and tensors, each tensor still a view of the mapped file."""
    mine, theirs = open_gguf(os.path.join(GGUF_DIR, name)), gguf.GGUFReader(os.path.join(GGUF_DIR, name))
    assert {k: f.contents() for k, f in mine.fields.items()} == {k: f.contents() for k, f in theirs.fields.items()}
    assert len(mine.tensors) == len(theirs.tensors)
    for a, b in zip(mine.tensors, theirs.tensors):
        assert (a.name, a.tensor_type, list(a.shape)) == (b.name, b.tensor_type, list(b.shape))
        assert np.array_equal(a.data, b.data) and views_the_mapped_file(a.data) and not a.data.flags.writeable


def test_quantized_tensors_are_views_of_the_file_but_llamas_q_and_k():
    config, tensors, _ = read_gguf(fixture("llama", "q8_0"))
    reader = gguf.GGUFReader(fixture("llama", "q8_0"))
    raw = {t.name: t.data for t in reader.tensors}
    up = tensors["model.layers.0.mlp.up_proj.weight"]
    assert isinstance(up, QuantTensor) and views_the_mapped_file(up.data)      # the mapped file itself
    assert np.array_equal(up.data, raw["blk.0.ffn_up.weight"])
    q = tensors["model.layers.0.self_attn.q_proj.weight"]           # rows gathered: a copy, still q8_0
    assert isinstance(q, QuantTensor) and not views_the_mapped_file(q.data)
    H, hd = config.num_attention_heads, config.head_dim
    want = raw["blk.0.attn_q.weight"].reshape(H, hd // 2, 2, -1).swapaxes(1, 2).reshape(H * hd, -1)
    assert np.array_equal(q.data, want)


def per_expert_copy(src, out):
    """`src` rewritten in llama.cpp's older Mixtral layout: blk.{i}.ffn_gate.{e}.weight per expert."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(out, "llama")
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    for t in reader.tensors:
        if "_exps." in t.name:
            for e in range(t.data.shape[0]):
                name = t.name.replace("_exps.", f".{e}.")
                writer.add_tensor(name, np.ascontiguousarray(t.data[e]), raw_dtype=t.tensor_type)
        else:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_the_older_per_expert_layout_reads_as_the_stacked_one(kind, tmp_path):
    _, ref, _ = reference("mixtral")
    per_expert_copy(fixture("mixtral", kind), tmp_path / "old.gguf")
    assert "blk.0.ffn_up.3.weight" in {t.name for t in gguf.GGUFReader(tmp_path / "old.gguf").tensors}
    want = cogcore.load(fixture("mixtral", kind), backend="numpy").forward(ref["prompt"])
    for backend in ("numpy", "numba"):
        got = cogcore.load(tmp_path / "old.gguf", backend=backend).forward(ref["prompt"])
        assert relative(got, want) < 1e-5


def converter_permute(w, n_head, n_head_kv):
    """llama.cpp's LlamaModel.permute (convert_hf_to_gguf), in NumPy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("heads, hd", [(1, 2), (4, 8), (3, 16), (2, 64)])
def test_the_qk_permutation_is_llama_cpps_and_is_undone(heads, hd):
    w = np.random.default_rng(heads).standard_normal((heads * hd, 5))
    gg = converter_permute(w, heads, heads)
    assert np.array_equal(w[permute_rows(heads, heads * hd)], gg)
    assert np.array_equal(gg[unpermute_rows(heads, heads * hd)], w)


@pytest.mark.parametrize("family", ["llama", "qwen2_moe"])           # converter-made, cogcore-exported
def test_a_gguf_file_reads_text_as_its_hugging_face_directory(family):
    d, _, _ = reference(family)
    hf, gg = cogcore.load(d, backend="numpy"), cogcore.load(fixture(family), backend="numpy")
    text = "Hello wörld, 12+345= 東京 🙂"
    ids = gg.tokenizer.encode(text)
    assert ids == hf.tokenizer.encode(text) and gg.tokenizer.decode(ids) == hf.tokenizer.decode(ids)
    np.testing.assert_allclose(gg.forward(ids), hf.forward(ids), rtol=0, atol=1e-4)


def test_rwkv7_gguf_reads_text_as_its_directory_and_llama_cpp():
    with open(os.path.join(HERE, "rwkv_world", "reference.json"), encoding="utf-8") as f:
        texts = list(json.load(f)["encodings"])          # the texts whose pieces the fixture's vocabulary has
    d, _, _ = reference(RWKV7)
    hf, gg = cogcore.load(d, backend="numpy"), cogcore.load(fixture(RWKV7), backend="numpy")
    assert gg.config.bos_token_id == gg.config.eos_token_id == 0           # <s>, the end of text
    for text in texts + ["Hello, world!", "naïve café — 東京 🙂"]:
        ids = gg.tokenizer.encode(text)
        assert ids == hf.tokenizer.encode(text) and gg.tokenizer.decode(ids) == text
    # llama.cpp's trie holds every token's text: `llama-tokenize -m rwkv7-hd64-bf16.gguf --ids
    # -p "<s> [PAD300] x"` (with or without --no-parse-special) gives these ids
    assert gg.tokenizer.encode("<s> [PAD300] x") == [0, 33, 300, 33, 121]
    assert gg.tokenizer.decode([0, 33, 300, 33, 121]) == "  x"                # control and unused: nothing
    from cogcore.chat_template import chat_prompt_ids, model_chat_template
    ids, _ = chat_prompt_ids(gg, [{"role": "user", "content": "Hi"}], model_chat_template(gg))
    assert ids[0] == 0 and gg.tokenizer.decode(ids) == "User: Hi\n\nAssistant:"     # llama.cpp's rwkv-world template


def test_the_rwkv_unescape_inverts_the_converters_repr():
    from cogcore.errors import InputError
    from cogcore.gguf_vocab import tokenizer_from_gguf, unescape_rwkv
    pieces = [bytes([b]) for b in range(256)] + ["naïve 東京".encode(), b"it's \\ \"x\"", b"\t\n\r\x00\xff"]
    for piece in pieces:
        assert unescape_rwkv(repr(piece)[2:-1]) == piece          # convert_hf_to_gguf's _set_vocab_rwkv_world
    meta = {"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["<s>"] + [repr(p)[2:-1] for p in pieces]}
    assert tokenizer_from_gguf(meta, "m.gguf").encode("naïve 東京!") == [257, 34]
    for bad in ("\\x4", "ab\\", "\\xZZ"):
        with pytest.raises(InputError, match=r"m.gguf: tokenizer.ggml.tokens\[3\]"):
            tokenizer_from_gguf(dict(meta, **{"tokenizer.ggml.tokens": meta["tokenizer.ggml.tokens"][:3] + [bad]}),
                                "m.gguf")
    with pytest.raises(InputError, match="every single byte"):
        tokenizer_from_gguf(dict(meta, **{"tokenizer.ggml.tokens": meta["tokenizer.ggml.tokens"][:200]}), "m.gguf")


def test_a_gguf_file_has_the_chat_template_of_its_directory():
    from cogcore.chat_template import chat_prompt_ids, model_chat_template
    d, _, _ = reference("qwen2")
    hf, gg = cogcore.load(d, backend="numpy"), cogcore.load(fixture("qwen2"), backend="numpy")
    template = model_chat_template(gg)
    assert template is not None and template[0] == model_chat_template(hf)[0]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi ü"}]
    assert chat_prompt_ids(gg, messages, template) == chat_prompt_ids(hf, messages, model_chat_template(hf))


# ---- writing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_export_then_load_gives_the_same_logits(family, tmp_path):
    d, ref, want = reference(family)
    out = tmp_path / "m.gguf"
    export_gguf(d, out)
    assert relative(cogcore.load(out, backend="numpy").forward(ref["prompt"]), want) < 1e-4


@pytest.mark.parametrize("family, qtype", [("mixtral", "q4_0"), ("qwen2", "q8_0"), ("llama", "q4_0")])
def test_a_cogcore_quantized_model_exports_its_blocks_unchanged(family, qtype, tmp_path):
    d, ref, _ = reference(family)
    cogcore.quantize(d, tmp_path / "q", qtype)
    types = export_gguf(tmp_path / "q", tmp_path / "q.gguf")
    assert types["blk.0.attn_q.weight"] == qtype.upper()
    before = cogcore.load(tmp_path / "q", backend="numpy")
    after = cogcore.load(tmp_path / "q.gguf", backend="numba")
    assert relative(after.forward(ref["prompt"]), before.forward(ref["prompt"])) < 1e-5
    reader = gguf.GGUFReader(tmp_path / "q.gguf")                   # the blocks themselves, q/k permuted
    raw = {t.name: t for t in reader.tensors}
    q = before.weights.tensors["model.layers.1.self_attn.q_proj.weight"]
    stored = raw["blk.1.attn_q.weight"].data
    if family in ("llama", "mixtral"):                                # GGUF's llama architecture
        stored = stored[unpermute_rows(before.config.num_attention_heads, stored.shape[0])]
    assert np.array_equal(stored, q.data)


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_16_bit_weights_export_and_read_back_unchanged(dtype, tmp_path):
    from cogcore.dtypes import f32, to_storage
    from cogcore.tensorfile import read_safetensors, write_safetensors
    d, ref, _ = reference("qwen3_moe")
    shutil.copytree(d, tmp_path / "m")
    tensors, _ = read_safetensors(tmp_path / "m" / "model.safetensors")
    write_safetensors(tmp_path / "m" / "model.safetensors", {n: to_storage(f32(a), dtype) for n, a in tensors.items()})
    types = export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    assert types["blk.0.attn_q.weight"] == dtype and types["blk.0.attn_norm.weight"] == "F32"
    want = cogcore.load(tmp_path / "m", backend="numpy").forward(ref["prompt"])
    for backend in ("numpy", "numba"):
        got = cogcore.load(tmp_path / "m.gguf", backend=backend).forward(ref["prompt"])
        assert relative(got, want) < 1e-5


MODEL_KEYS_SKIPPED = {"general.name", "general.size_label", "GGUF.kv_count"}    # cosmetic, or the vocabulary's


@pytest.mark.parametrize("family", CONVERTED)
def test_export_is_laid_out_as_llama_cpps_converter(family, tmp_path):
    d, _, _ = reference(family)
    export_gguf(d, tmp_path / "m.gguf")
    mine, theirs = gguf.GGUFReader(tmp_path / "m.gguf"), gguf.GGUFReader(fixture(family))
    a, b = {t.name: t for t in mine.tensors}, {t.name: t for t in theirs.tensors}
    assert set(a) == set(b)
    for name, t in b.items():
        assert (a[name].tensor_type, list(a[name].shape)) == (t.tensor_type, list(t.shape)), name
        assert np.array_equal(a[name].data, t.data), name
    fa = {k: f.contents() for k, f in mine.fields.items()}
    fb = {k: f.contents() for k, f in theirs.fields.items()
          if not k.startswith("tokenizer.") or k.endswith(("bos_token_id", "eos_token_id"))}
    for key, value in fb.items():
        if key not in MODEL_KEYS_SKIPPED:
            assert fa.get(key) == value, key


def test_convert_command(tmp_path, capsys):
    from cogcore.cli import main
    d, ref, want = reference("olmoe")
    assert main(["convert", "--to", "gguf", d, str(tmp_path / "o.gguf")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert relative(cogcore.load(tmp_path / "o.gguf", backend="numpy").forward(ref["prompt"]), want) < 1e-4
    assert main(["convert", "--to", "gguf", os.path.join(os.path.dirname(HERE), "..", "weights", "cogcore-tiny"),
                 str(tmp_path / "t.gguf")]) == 1                      # NSA/RWKV: no GGUF architecture
    assert not os.path.exists(tmp_path / "t.gguf")
    assert "cogcore model" in capsys.readouterr().err
    assert main(["inspect", fixture("mixtral", "q4_0")]) == 0
    assert "q4_0" in capsys.readouterr().out


def test_rwkv7_widths_come_from_the_tensors(tmp_path):
    """The converter writes feed_forward_length = 4 x hidden for fla's intermediate_size: null."""
    _, ref, want = reference(RWKV7)
    path = rewritten(tmp_path, fixture(RWKV7), {"general.architecture": "rwkv7", "rwkv7.feed_forward_length": 512})
    model = cogcore.load(path, backend="numpy")
    assert model.config.intermediate_size == 64
    assert relative(model.forward(ref["prompt"]), want) < 1e-4


def test_rwkv7_is_read_but_not_written(tmp_path):
    with pytest.raises(ConfigError, match="found rwkv7"):
        export_gguf(reference(RWKV7)[0], tmp_path / "r.gguf")
    assert not os.listdir(tmp_path)


def test_a_norm_topk_prob_llama_cpp_would_ignore_is_refused(tmp_path):
    d = tmp_path / "qwen3_moe"
    shutil.copytree(reference("qwen3_moe")[0], d)
    with open(d / "config.json") as f:
        raw = json.load(f)
    raw["norm_topk_prob"] = False
    with open(d / "config.json", "w") as f:
        json.dump(raw, f)
    with pytest.raises(ConfigError, match="'norm_topk_prob'"):
        export_gguf(d, tmp_path / "x.gguf")


# ---- malformed files ---------------------------------------------------------------------------
def field_offset(path, key):
    """The byte offset of a metadata key's value (after its name and type)."""
    f = gguf.GGUFReader(path).fields[key]
    return f.offset + 8 + len(key.encode()) + 4


def tensor_info(path, name):
    """Byte offsets of a tensor info's dims, type and data offset."""
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    dims = t.field.offset + 8 + len(name.encode()) + 4
    return dims, dims + 8 * len(t.shape), dims + 8 * len(t.shape) + 4


def patched(tmp_path, at, fmt, value, src=None):
    src = src or fixture("llama", "q4_0")
    data = bytearray(open(src, "rb").read())
    struct.pack_into(fmt if fmt[0] in "<>" else "<" + fmt, data, at, value)
    out = tmp_path / "bad.gguf"
    out.write_bytes(bytes(data))
    return out


def rewritten(tmp_path, src, change=None, drop=(), add=None):
    """A copy of a GGUF file written by gguf.GGUFWriter with metadata keys changed, dropped or added."""
    reader = gguf.GGUFReader(src)
    out = tmp_path / "rewritten.gguf"
    writer = gguf.GGUFWriter(out, (change or {}).get("general.architecture", "llama"))
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in drop or key == "general.architecture":
            continue
        value = (change or {}).get(key, field.contents())
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        vtype = field.types[0] if key not in (change or {}) else gguf.GGUFValueType.get_type(value)
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for key, value in (add or {}).items():
        writer.add_key_value(key, value, gguf.GGUFValueType.get_type(value))
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def refused(path, error=WeightsError, match=None):
    with pytest.raises(error, match=match):
        cogcore.load(path, backend="numpy")


def test_a_truncated_file_is_refused_at_every_length(tmp_path):
    data = open(fixture("llama", "q4_0"), "rb").read()
    for n in (0, 3, 4, 20, 100, 1000, 5000, len(data) - 1000, len(data) - 1):
        (tmp_path / "t.gguf").write_bytes(data[:n])
        refused(tmp_path / "t.gguf", match="t.gguf")


def test_lying_offsets_and_sizes_name_the_tensor(tmp_path):
    src = fixture("llama", "q4_0")
    dims, _, offset = tensor_info(src, "blk.1.ffn_up.weight")
    refused(patched(tmp_path, offset, "Q", 2 ** 40, src), match="blk.1.ffn_up.weight")
    refused(patched(tmp_path, offset, "Q", 7, src), match="blk.1.ffn_up.weight.*aligned")
    refused(patched(tmp_path, dims + 8, "Q", 10 ** 6, src), match="blk.1.ffn_up.weight")     # rows beyond the file
    refused(patched(tmp_path, dims + 8, "Q", 47, src), match="blk.1.ffn_up.weight|up_proj")  # fits, wrong shape
    refused(patched(tmp_path, dims, "Q", 33, src), match="blk.1.ffn_up.weight.*multiple of 32")
    refused(patched(tmp_path, dims - 4, "I", 9, src), match="dimension count")


def test_an_unsupported_tensor_type_is_named(tmp_path):
    _, kind, _ = tensor_info(fixture("llama", "q4_0"), "blk.0.ffn_gate.weight")
    refused(patched(tmp_path, kind, "I", int(gguf.GGMLQuantizationType.Q6_K)), match="blk.0.ffn_gate.weight.*Q6_K")
    refused(patched(tmp_path, kind, "I", 999), match="blk.0.ffn_gate.weight.*999")


def test_lying_lengths_never_hang_the_reader(tmp_path):
    src = fixture("llama", "q4_0")
    tokens = field_offset(src, "tokenizer.ggml.tokens")
    refused(patched(tmp_path, tokens + 4, "Q", 2 ** 62, src), match="tokenizer.ggml.tokens")   # array length
    refused(patched(tmp_path, tokens + 12, "Q", 2 ** 40, src), match="tokenizer.ggml.tokens")  # its first string
    refused(patched(tmp_path, 8, "Q", 2 ** 50, src), match="counts")                            # tensor count
    refused(patched(tmp_path, tokens - 4, "I", 77, src), match="value type")


def test_bad_headers(tmp_path):
    refused(patched(tmp_path, 0, "4s", b"GGUG"), match="magic")
    refused(patched(tmp_path, 4, ">I", 3), match="big-endian")
    refused(patched(tmp_path, 4, "I", 1), match="version")
    name = fixture("llama", "q4_0")
    refused(rewritten(tmp_path, name, add={"general.alignment": 48}), match="general.alignment")


@pytest.mark.parametrize("change, drop, error, match", [
    ({"general.architecture": "gpt2"}, (), ConfigError, "'general.architecture'.*gpt2"),
    ({}, ("llama.embedding_length",), ConfigError, "'llama.embedding_length'"),
    ({}, ("llama.attention.layer_norm_rms_epsilon",), ConfigError, "layer_norm_rms_epsilon"),
    ({"llama.block_count": "two"}, (), ConfigError, "'llama.block_count'"),
    ({"llama.block_count": 3}, (), ConfigError, "'llama.block_count': expected 2"),
    ({"llama.attention.head_count": 3}, (), ConfigError, "head"),
    ({"llama.vocab_size": 999}, (), ConfigError, "vocab_size"),
    ({"llama.rope.dimension_count": 4}, (), ConfigError, "rope.dimension_count"),
    ({"tokenizer.ggml.eos_token_id": 5000}, (), ConfigError, "eos_token_id"),
])
def test_bad_metadata_is_named(tmp_path, change, drop, error, match):
    refused(rewritten(tmp_path, fixture("llama", "q4_0"), change, drop), error, match)


@pytest.mark.parametrize("change, drop, match", [
    ({}, ("rwkv7.wkv.head_size",), "'rwkv7.wkv.head_size'"),
    ({"rwkv7.wkv.head_size": 48}, (), "rwkv_head_size.*divisor of hidden_size=128"),
    ({"rwkv7.block_count": 3}, (), "'rwkv7.block_count': expected 2"),
    ({"rwkv7.attention.layer_norm_epsilon": "small"}, (), "'rwkv7.attention.layer_norm_epsilon'"),
])
def test_bad_rwkv7_metadata_is_named(tmp_path, change, drop, match):
    change = {"general.architecture": "rwkv7", **change}
    refused(rewritten(tmp_path, fixture(RWKV7), change, drop), ConfigError, match)


def test_an_unknown_tensor_is_named(tmp_path):
    src = fixture("llama", "q4_0")
    data = open(src, "rb").read().replace(b"blk.1.ffn_up.weight", b"blk.1.ffn_xx.weight")
    (tmp_path / "u.gguf").write_bytes(data)
    refused(tmp_path / "u.gguf", match="blk.1.ffn_xx.weight")


METADATA_VALUES = (st.none() | st.booleans() | st.integers(-3, 2 ** 64) | st.floats(allow_nan=True)
                   | st.text(max_size=6) | st.lists(st.integers(-1, 70), max_size=4))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(["llama", "mixtral", "qwen2_moe", "qwen3", "olmoe", RWKV7]), data=st.data())
def test_fuzzed_metadata_gives_a_config_or_a_clear_error(family, data):
    """Any metadata key set to any value (or removed): a Config or a CogcoreError, nothing else."""
    from cogcore.gguf_model import metadata, open_gguf, read_config, read_tensors
    path = fixture(family)
    reader = open_gguf(path)
    meta = metadata(reader, path, vocabulary=False)
    arch = meta["general.architecture"]
    keys = sorted(meta) + [f"{arch}.rope.scaling.type"]
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(keys))
        value = data.draw(METADATA_VALUES)
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    tensors, _ = read_tensors(reader, path, arch)
    try:
        read_config(meta, tensors, path)
    except CogcoreError:
        pass


FUZZ_CASES = int(os.environ.get("COGCORE_FUZZ_CASES", "240"))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # NaN blocks, dequantized by the load-time check
def test_fuzz_the_gguf_reader(tmp_path):
    """Random byte mutations, mostly of the header: a CogcoreError or finite logits, nothing else."""
    from test_fuzz import mutate_bytes
    rng = random.Random(int(os.environ.get("COGCORE_FUZZ_SEED", "0")))
    sources = {}
    for family, kind in (("llama", "q4_0"), ("mixtral", "q8_0"), ("qwen2", "q8_0"), (RWKV7, "bf16")):
        data = open(fixture(family, kind), "rb").read()
        sources[family] = (data, gguf.GGUFReader(fixture(family, kind)).data_offset)
    outcomes = {"ok": 0, "error": 0}
    for case in range(FUZZ_CASES):
        data, header_end = sources[rng.choice(sorted(sources))]
        region = (0, header_end) if rng.random() < 0.8 else (header_end, len(data))
        path = tmp_path / f"case{case}.gguf"
        path.write_bytes(mutate_bytes(data, rng, region))
        backend = rng.choice(["numpy", "numba"])
        try:
            model = cogcore.load(path, backend=backend)
            assert np.isfinite(model.forward([1, 5, 9, 3])).all()
            model.generate("12+3 é", max_new_tokens=2)               # the vocabulary, read from the metadata
            outcomes["ok"] += 1
        except CogcoreError:
            outcomes["error"] += 1
        except Exception as e:
            raise AssertionError(f"case {case} ({backend}) escaped as {type(e).__name__}: {e}") from e
        finally:
            os.remove(path)
    assert outcomes["ok"] and outcomes["error"]
