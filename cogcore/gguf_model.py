"""Reading a GGUF file (llama.cpp's format) as a cogcore model: `cogcore.load("model.gguf")`.

The file is opened with the `gguf` package's own reader (GGUFReader, memory-mapped), after
`check_layout` has walked its header: GGUFReader trusts the file (a lying array length
makes it loop for ever, a lying offset hands out a short or out-of-range view), so every
count, length, type and tensor byte range is checked against the file's size first.

Then, per architecture (the table in gguf_names.py):

    metadata -> the transformers config.json of the family -> the family's own translation
                (cogcore/families/), so a GGUF file and the Hugging Face directory it was
                converted from give the same cogcore Config, and run the same code
    tensors  -> cogcore names; F32, F16, BF16 arrays and Q8_0 / Q4_0 blocks are views of
                the mapped file (GGML's blocks are cogcore's QuantTensor layout); Llama's
                attn_q / attn_k rows are put back in Hugging Face's order (a row gather:
                those two tensors are copied, still quantized if they were)

Any other tensor type is a WeightsError naming the tensor and its type.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import re
import struct

import numpy as np

from .config import Config
from .errors import ConfigError, WeightsError, reading
from .families import load_config
from .families.hf import PER_EXPERT
from .gguf_names import (ARCHES, METADATA, ROPE_FREQS, RWKV7_GLOBAL, RWKV7_LAYER, RWKV7_LERPS, cogcore_name,
                         unpermute_rows)
from .quant import QuantTensor
from .weights import ExpertStack

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_DIMS = 4                                       # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32
# GGUF value types: id -> (name, bytes of a scalar; strings and arrays are sized as read)
VALUE_TYPES = {0: ("UINT8", 1), 1: ("INT8", 1), 2: ("UINT16", 2), 3: ("INT16", 2), 4: ("UINT32", 4),
               5: ("INT32", 4), 6: ("FLOAT32", 4), 7: ("BOOL", 1), 8: ("STRING", 8), 9: ("ARRAY", 12),
               10: ("UINT64", 8), 11: ("INT64", 8), 12: ("FLOAT64", 8)}
STRING, ARRAY = 8, 9
VOCABULARY_LISTS = {"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                    "tokenizer.ggml.merges"}
MAX_NESTING = 4
# GGML tensor types cogcore runs: id -> (name, values per block, bytes per block)
TENSOR_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2), 8: ("Q8_0", 32, 34), 2: ("Q4_0", 32, 18)}


def is_gguf(path) -> bool:
    """Whether `path` names a file that starts with the GGUF magic (or is called *.gguf)."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return False
    if os.fspath(path).endswith(".gguf"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


# ---- the header, checked before GGUFReader sees it ------------------------------------------
class _Header:
    """A bounds-checked cursor over the mapped file; every read past the end is a WeightsError."""

    def __init__(self, path: str, buf):
        self.path, self.buf, self.size, self.pos = path, buf, len(buf), 0

    def fail(self, what: str, expected: str, found) -> None:
        raise WeightsError(f"{self.path}: {what}: expected {expected}, found {found}")

    def take(self, n: int, what: str) -> int:
        if n > self.size - self.pos:
            self.fail(what, f"{n} bytes at offset {self.pos}", f"the file ends after {self.size - self.pos} "
                      f"(truncated, or a length that lies)")
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str):
        return struct.unpack_from("<" + fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("Q", what + " length")
        start = self.take(n, what)
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError:
            self.fail(what, "UTF-8 text", f"{n} bytes that are not")

    def value(self, vtype: int, what: str, depth: int = 0) -> None:
        """Skip one value of type `vtype`, checking that it lies within the file."""
        if vtype not in VALUE_TYPES:
            self.fail(what, f"a GGUF value type 0..{max(VALUE_TYPES)}", vtype)
        if vtype == STRING:
            self.take(self.unpack("Q", what + " length"), what)
        elif vtype == ARRAY:
            item, count = self.unpack("I", what + " item type"), self.unpack("Q", what + " length")
            if item not in VALUE_TYPES or (item == ARRAY and depth >= MAX_NESTING):
                self.fail(f"{what} item type", f"a GGUF value type (arrays nested at most {MAX_NESTING} deep)", item)
            least = VALUE_TYPES[item][1]            # bytes an item takes at the least
            if count * least > self.size - self.pos:
                self.fail(f"{what} length", f"at most {(self.size - self.pos) // least} items (the bytes left)", count)
            if item in (STRING, ARRAY):
                for i in range(count):
                    self.value(item, f"{what}[{i}]", depth + 1)
            else:
                self.take(count * least, what)
        else:
            self.take(VALUE_TYPES[vtype][1], what)


def check_layout(path: str, buf) -> None:
    """Walk the whole header of the GGUF file mapped in `buf`; a WeightsError for anything out of place."""
    h = _Header(path, buf)
    if bytes(buf[:4]) != MAGIC:
        h.fail("magic", "b'GGUF' (a GGUF file)", repr(bytes(buf[:4])))
    h.take(4, "magic")
    version = h.unpack("I", "version")
    if version & 0xFFFF == 0 and version:
        h.fail("byte order", "a little-endian GGUF file", "a big-endian one")
    if version not in VERSIONS:
        h.fail("version", f"one of {VERSIONS}", version)
    n_tensors, n_kv = h.unpack("Q", "tensor count"), h.unpack("Q", "key-value count")
    if n_kv * 13 > h.size or n_tensors * 24 > h.size:    # the least bytes a key-value / tensor info takes
        h.fail("counts", f"counts that fit a file of {h.size} bytes", f"{n_tensors} tensors, {n_kv} keys")
    keys, alignment = set(), DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = h.string("a metadata key")
        if key in keys:
            h.fail(f"key '{key}'", "each key once", "it twice")
        keys.add(key)
        vtype = h.unpack("I", f"key '{key}' type")
        start = h.pos
        h.value(vtype, f"key '{key}'")
        if key == "general.alignment":
            value = struct.unpack_from("<I", buf, start)[0] if vtype == 4 else None
            if value is None or value == 0 or value & (value - 1):
                h.fail("key 'general.alignment'", "a UINT32 power of two", value if value is not None
                       else f"type {VALUE_TYPES[vtype][0]}")
            alignment = value
    infos, names = [], set()
    for _ in range(n_tensors):
        name = h.string("a tensor name")
        what = f"tensor '{name}'"
        if name in names:
            h.fail(what, "each tensor once", "it twice")
        names.add(name)
        n_dims = h.unpack("I", f"{what} dimension count")
        if not 1 <= n_dims <= MAX_DIMS:
            h.fail(f"{what} dimension count", f"1..{MAX_DIMS}", n_dims)
        dims = [h.unpack("Q", f"{what} dimensions") for _ in range(n_dims)]
        ggml_type, offset = h.unpack("I", f"{what} type"), h.unpack("Q", f"{what} offset")
        infos.append((what, dims, ggml_type, offset))
    data_start = -(-h.pos // alignment) * alignment
    for what, dims, ggml_type, offset in infos:
        if ggml_type not in TENSOR_TYPES:
            from gguf import GGMLQuantizationType
            try:
                kind = GGMLQuantizationType(ggml_type).name
            except ValueError:
                kind = f"an unknown type id {ggml_type}"
            h.fail(f"{what} type", f"one of {', '.join(t[0] for t in TENSOR_TYPES.values())} (the types cogcore "
                   f"runs)", kind)
        kind, block, block_bytes = TENSOR_TYPES[ggml_type]
        if not all(1 <= d < 2 ** 40 for d in dims) or dims[0] % block:
            h.fail(f"{what} dims", f"sizes >= 1, the first a multiple of {block} for {kind}", dims)
        nbytes = math.prod(dims) // block * block_bytes
        if offset % alignment or data_start + offset + nbytes > h.size:
            h.fail(f"{what} data", f"{nbytes} bytes at an offset aligned to {alignment} within the file "
                   f"({h.size - data_start} bytes of data)", f"offset {offset}")


@functools.cache
def _plain_reader():
    """GGUFReader reading through a plain ndarray view of its np.memmap: the same fields and
    tensors, still views of the mapped file, without np.memmap's Python-level __getitem__ and
    __array_finalize__ on each of the two or three small views it makes per string (a 150k-token
    vocabulary and its merges are 300k strings: about 3x faster to open, docs/gguf.md)."""
    from gguf import GGUFReader

    class PlainReader(GGUFReader):
        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, mapped):            # GGUFReader.__init__ assigns its np.memmap here
            self._plain = np.asarray(mapped)   # a base-class view of the same memory, not a copy

    return PlainReader


def open_gguf(path: str):
    """GGUFReader over a file whose header `check_layout` accepted."""
    GGUFReader = _plain_reader()
    with reading(path, "GGUF file", WeightsError):
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise WeightsError(f"{path}: expected a GGUF file, found an empty file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                check_layout(path, buf)
        try:
            return GGUFReader(path, "r")
        except OSError:
            raise
        except Exception as e:      # GGUFReader's own checks (ValueError, KeyError, ...): a file it refuses
            raise WeightsError(f"{path}: the gguf package cannot read this file ({type(e).__name__}: {e})") from None


def metadata(reader, path: str, vocabulary: bool = True) -> dict:
    """{key: value} of the metadata keys (the gguf package's `field.contents()`); without
    `vocabulary`, the tokenizer's long lists are left out (the model does not need them)."""
    try:
        return {key: field.contents() for key, field in reader.fields.items()
                if vocabulary or key not in VOCABULARY_LISTS}
    except (ValueError, UnicodeDecodeError, IndexError) as e:
        raise WeightsError(f"{path}: a metadata value cannot be read ({type(e).__name__}: {e})") from None


# ---- metadata -> config ---------------------------------------------------------------------
def _number(meta: dict, key: str, path: str, kind=int):
    value = meta.get(key)
    if value is None:
        return None
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and (kind is float or float(value).is_integer()))
    if not ok:
        raise ConfigError(f"{path}: key '{key}': expected {'a number' if kind is float else 'an integer'}, "
                          f"found {value!r:.60}")
    return kind(value)


def float32_value(x: float) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (1e-05, not 9.99999974e-06),
    so that the Config equals the one read from the Hugging Face config.json."""
    with np.errstate(over="ignore"):             # too big for float32: inf, which the Config refuses
        return float(str(np.float32(x)))


REQUIRED = ("block_count", "context_length", "embedding_length", "attention.head_count",
            "attention.layer_norm_rms_epsilon")


def hf_config(meta: dict, tensors: dict, path: str) -> dict:
    """The transformers config.json that llama.cpp's converter turned into this metadata."""
    arch_name = meta.get("general.architecture")
    if not isinstance(arch_name, str):
        raise ConfigError(f"{path}: key 'general.architecture': expected a string, found {arch_name!r:.60}")
    arch = ARCHES.get(arch_name)
    if arch is None:
        raise ConfigError(f"{path}: key 'general.architecture': expected one of {', '.join(ARCHES)} (the "
                          f"architectures cogcore reads), found {arch_name!r}")
    if arch_name == "rwkv7":
        return rwkv7_config(meta, tensors, path)
    for key in REQUIRED:
        if f"{arch_name}.{key}" not in meta:
            raise ConfigError(f"{path}: key '{arch_name}.{key}': expected a value (llama.cpp needs it too), "
                              f"found nothing")
    raw = {}
    for key, hf_key in METADATA:
        value = _number(meta, f"{arch_name}.{key}", path, float if hf_key in ("rms_norm_eps", "rope_theta") else int)
        if value is not None:
            raw[hf_key] = float32_value(value) if isinstance(value, float) else value
    scaling = meta.get(f"{arch_name}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ConfigError(f"{path}: key '{arch_name}.rope.scaling.type': expected 'none' (the GGUF RoPE scalings "
                          f"cogcore implements; Llama-3's comes as the tensor {ROPE_FREQS}), found {scaling!r}")
    head_dim = raw.get("head_dim") or raw["hidden_size"] // max(1, raw["num_attention_heads"])
    for key in ("rope.dimension_count", "attention.value_length"):
        if meta.get(f"{arch_name}.{key}") not in (None, head_dim):
            raise ConfigError(f"{path}: key '{arch_name}.{key}': expected the head size {head_dim} (partial RoPE "
                              f"and values unlike keys are not implemented), found {meta[f'{arch_name}.{key}']!r}")
    if meta.get(f"{arch_name}.attention.sliding_window") not in (None, 0):
        raise ConfigError(f"{path}: key '{arch_name}.attention.sliding_window': expected none (sliding-window "
                          f"layers are not implemented), found {meta[f'{arch_name}.attention.sliding_window']!r}")
    embed = tensors.get("model.embed_tokens.weight")
    if embed is not None and len(embed.shape) == 2:
        if raw.setdefault("vocab_size", embed.shape[0]) != embed.shape[0]:
            raise ConfigError(f"{path}: key '{arch_name}.vocab_size': expected the rows of token_embd.weight "
                              f"({embed.shape[0]}), found {raw['vocab_size']}")
    for which in ("bos", "eos"):
        value = _number(meta, f"tokenizer.ggml.{which}_token_id", path)
        if value is not None:
            raw[f"{which}_token_id"] = value
    raw["tie_word_embeddings"] = "lm_head.weight" not in tensors
    n = layer_count(raw["num_hidden_layers"], tensors, f"{arch_name}.block_count", path)
    moe = [i for i in range(n) if f"model.layers.{i}.mlp.gate.weight" in tensors]
    raw["model_type"] = arch.moe_family if moe and arch.moe_family else arch.family
    if arch.norm_topk_prob is not None:
        raw["norm_topk_prob"] = arch.norm_topk_prob
    if raw["model_type"] in ("qwen2_moe", "qwen3_moe"):       # a dense layer is one without a router
        raw["decoder_sparse_step"], raw["mlp_only_layers"] = 1, [i for i in range(n) if i not in moe]
    if raw["model_type"] == "qwen2_moe" and "model.layers.0.mlp.shared_expert_gate.weight" not in tensors:
        raw["shared_expert_intermediate_size"] = 0
    if raw["model_type"] in ("mixtral", "olmoe"):             # their config.json's intermediate_size is the expert's
        raw["intermediate_size"] = raw.pop("moe_intermediate_size", raw.get("intermediate_size"))
    raw.setdefault("rope_theta", 10000.0)           # llama.cpp's default when the file has none
    return raw


def layer_count(n, tensors: dict, key: str, path: str) -> int:
    """block_count, checked against the layers the file's tensors hold (before anything counts up to it)."""
    held = 1 + max((int(name.split(".")[2]) for name in tensors if name.startswith("model.layers.")), default=-1)
    if n != held:
        raise ConfigError(f"{path}: key '{key}': expected {held} (the layers whose blk.N tensors the file "
                          f"holds), found {n}")
    return n


def rwkv7_config(meta: dict, tensors: dict, path: str) -> dict:
    """fla's config.json (cogcore/families/rwkv7.py) of a GGUF rwkv7 file, sizes read off the tensors
    where the converter's metadata can be a guess (its feed_forward_length is 4 * hidden when fla's
    intermediate_size is null), and the kk normalisation llama.cpp's graph applies (ggml_l2_norm,
    x / max(|x|, eps): fla's unfused `clamp`)."""
    for key in ("block_count", "embedding_length", "wkv.head_size", "attention.layer_norm_epsilon"):
        if f"rwkv7.{key}" not in meta:
            raise ConfigError(f"{path}: key 'rwkv7.{key}': expected a value (llama.cpp needs it too), found nothing")
    n = layer_count(_number(meta, "rwkv7.block_count", path), tensors, "rwkv7.block_count", path)

    def rows(name, axis=0, key=None):
        a = tensors.get(name)
        return a.shape[axis] if a is not None and len(a.shape) == 2 else _number(meta, key, path) if key else None

    raw = {"model_type": "rwkv7", "num_hidden_layers": n,
           "hidden_size": _number(meta, "rwkv7.embedding_length", path),
           "head_dim": _number(meta, "rwkv7.wkv.head_size", path),
           "norm_eps": float32_value(_number(meta, "rwkv7.attention.layer_norm_epsilon", path, float)),
           "vocab_size": rows("model.embed_tokens.weight"),
           "intermediate_size": rows("model.layers.0.mlp.key.weight", key="rwkv7.feed_forward_length"),
           "decay_low_rank_dim": rows("model.layers.0.rwkv.w1", 1, "rwkv7.attention.decay_lora_rank"),
           "a_low_rank_dim": rows("model.layers.0.rwkv.a1", 1, "rwkv7.attention.iclr_lora_rank"),
           "v_low_rank_dim": rows("model.layers.1.rwkv.v1", 1, "rwkv7.attention.value_residual_mix_lora_rank"),
           "gate_low_rank_dim": rows("model.layers.0.rwkv.g1", 1, "rwkv7.attention.gate_lora_rank"),
           "tie_word_embeddings": "lm_head.weight" not in tensors,
           "norm_first": "model.embed_norm.weight" in tensors, "norm_bias": "model.norm.bias" in tensors,
           "fuse_norm": False}
    for which in ("bos", "eos"):
        value = _number(meta, f"tokenizer.ggml.{which}_token_id", path)
        if value is not None:
            raw[f"{which}_token_id"] = value
    return raw


RWKV7_GROUP_NORM_EPS = 64e-5      # llama.cpp's rwkv7 graph: fixed (fla's head_dim * norm_eps at head_dim 64)


def read_config(meta: dict, tensors: dict, path: str) -> Config:
    """The cogcore Config of a GGUF file: its family's, plus Llama-3 RoPE factors if it has them."""
    config = load_config(hf_config(meta, tensors, path), path)
    if config.family == "rwkv7":
        config = config.replace(rwkv_group_norm_eps=RWKV7_GROUP_NORM_EPS)
    factors = tensors.pop(ROPE_FREQS, None)
    if factors is not None:
        half = config.head_dim // 2
        if isinstance(factors, QuantTensor) or factors.shape != (half,):
            raise WeightsError(f"{path}: tensor '{ROPE_FREQS}': expected {half} float factors (head_dim / 2), "
                               f"found shape {list(factors.shape)}")
        values = np.asarray(factors, np.float32)
        if not (np.isfinite(values).all() and (values > 0).all()):
            raise WeightsError(f"{path}: tensor '{ROPE_FREQS}': expected finite factors > 0, found {values.tolist()}")
        config = config.replace(rope_scaling={"rope_type": "factors", "factors": values.tolist()})
    return config


# ---- tensors --------------------------------------------------------------------------------
def tensor_array(t):
    """A ReaderTensor as cogcore carries it: a float array or a QuantTensor, viewing the mapped file."""
    kind = TENSOR_TYPES[int(t.tensor_type)][0]
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))      # GGML dims are the NumPy shape reversed
    if kind in ("Q8_0", "Q4_0"):
        return QuantTensor(t.data, kind.lower(), shape)
    if kind == "BF16":                   # the reader hands BF16 out as bytes: cogcore carries bfloat16 as uint16 bits
        return t.data.view("<u2").reshape(shape)
    return t.data.reshape(shape)


def _gather_rows(a, index: np.ndarray):
    """Rows of a 1-D/2-D float array or QuantTensor in a new order (a copy; quantized rows stay quantized)."""
    if isinstance(a, QuantTensor):
        return QuantTensor(np.ascontiguousarray(a.data[index]), a.qtype, a.shape)
    return np.ascontiguousarray(a[index])


def rwkv7_tensors(name: str, array, path: str) -> list[tuple[str, object]]:
    """The cogcore tensors (name, view) of one GGUF rwkv7 tensor (gguf_names.RWKV7_LAYER): the
    fused token-shift mixes split, the LoRA matrices transposed back, layer 0's dummies dropped."""
    if name in dict(RWKV7_GLOBAL):
        return [(dict(RWKV7_GLOBAL)[name], array)]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if m is None:
        return [(cogcore_name(name), array)]
    layer = f"model.layers.{m[1]}"
    if m[2] == "time_mix_lerp_fused.weight":         # [6, 1, 1, D]: x_r, x_w, x_k, x_v, x_a, x_g
        if isinstance(array, QuantTensor) or array.shape[:3] != (len(RWKV7_LERPS), 1, 1):
            raise WeightsError(f"{path}: tensor '{name}': expected {len(RWKV7_LERPS)} float token-shift mixes "
                               f"[{len(RWKV7_LERPS)}, 1, 1, D], found {type(array).__name__} of shape "
                               f"{list(array.shape)}")
        return [(f"{layer}.rwkv.{x}", array[i].reshape(-1)) for i, x in enumerate(RWKV7_LERPS)]
    if m[1] == "0" and re.fullmatch(r"time_mix_v[012]\.weight", m[2]):
        return []                                   # the converter's dummies for llama.cpp (copies of a0..a2)
    for gguf_suffix, cogcore_suffix, transposed in RWKV7_LAYER:
        if m[2] == gguf_suffix:
            if transposed and isinstance(array, np.ndarray) and array.ndim == 2:
                array = array.T
            return [(f"{layer}.{cogcore_suffix}", array)]
    return [(None, array)]


def read_tensors(reader, path: str, arch: str | None = None) -> tuple[dict, dict[str, str]]:
    """{cogcore name: array or QuantTensor} and {cogcore name: GGUF name} of every tensor."""
    tensors, gguf_names, experts = {}, {}, {}
    for t in reader.tensors:
        if arch == "rwkv7":
            for name, array in rwkv7_tensors(t.name, tensor_array(t), path):
                if name is None:
                    raise WeightsError(f"{path}: tensor '{t.name}': expected one of the tensors of llama.cpp's "
                                       f"rwkv7, found a name it does not know")
                tensors[name], gguf_names[name] = array, t.name
            continue
        name = cogcore_name(t.name) if t.name != ROPE_FREQS else ROPE_FREQS
        if name is None:
            raise WeightsError(f"{path}: tensor '{t.name}': expected one of the tensors of the architectures "
                               f"cogcore reads, found a name it does not know")
        array = tensor_array(t)
        per_expert = PER_EXPERT.match(name)             # llama.cpp's older layout: one tensor per expert
        if per_expert:
            experts.setdefault(f"{per_expert[1]}.{per_expert[3]}", {})[int(per_expert[2])] = (array, t.name)
            continue
        tensors[name], gguf_names[name] = array, t.name
    for stacked, by_index in experts.items():
        E = len(by_index)
        if sorted(by_index) != list(range(E)):
            raise WeightsError(f"{path}: per-expert tensors of '{stacked}': expected experts 0..{max(by_index)}, "
                               f"found {sorted(by_index)}")
        arrays, names = zip(*(by_index[e] for e in range(E)))
        tensors[stacked] = ExpertStack(list(arrays), list(names), path)
        gguf_names[stacked] = names[0]
    return tensors, gguf_names


def unpermute_qk(tensors: dict, config: Config) -> None:
    """Llama's attn_q / attn_k rows back from GGML's RoPE order to Hugging Face's (in place in the dict)."""
    for i in range(config.num_hidden_layers):
        for proj, heads in (("q", config.num_attention_heads), ("k", config.num_key_value_heads)):
            for kind in ("weight", "bias"):
                name = f"model.layers.{i}.self_attn.{proj}_proj.{kind}"
                a = tensors.get(name)
                if a is not None and a.shape[0] == heads * config.head_dim:   # misshapen: Weights.take names it
                    tensors[name] = _gather_rows(a, unpermute_rows(heads, a.shape[0]))


def read_gguf(path) -> tuple[Config, dict, dict[str, str]]:
    """(Config, {cogcore name: tensor}, {cogcore name: where it came from}) of a GGUF file."""
    path = os.fspath(path)
    reader = open_gguf(path)
    meta = metadata(reader, path, vocabulary=False)
    tensors, gguf_names = read_tensors(reader, path, meta.get("general.architecture"))
    config = read_config(meta, tensors, path)
    if ARCHES[meta["general.architecture"]].permute_qk:
        unpermute_qk(tensors, config)
    if config.family == "rwkv7":                      # r_k arrives flattened: [heads, head_size]
        N = config.rwkv_head_size
        for name, a in tensors.items():
            if name.endswith(".rwkv.r_k") and isinstance(a, np.ndarray) and a.ndim == 1 and a.size % N == 0:
                tensors[name] = a.reshape(-1, N)
    for name, a in tensors.items():
        if name.endswith("mlp.shared_expert_gate.weight") and isinstance(a, np.ndarray) and a.ndim == 1:   # [D] in some files, [1, D] in HF
            tensors[name] = a.reshape(1, -1)
    origin = {name: f"{path} (tensor '{gguf_names[name]}')" for name in tensors}
    return config, tensors, origin


def load_tokenizer(path, config=None):
    """The tokenizer stored in a GGUF file's metadata (tokenizer.ggml.*: cogcore.gguf_vocab)."""
    from .gguf_vocab import tokenizer_from_gguf
    path = os.fspath(path)
    return tokenizer_from_gguf(metadata(open_gguf(path), path), path, config)
