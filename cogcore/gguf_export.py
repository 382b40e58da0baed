"""Writing a model directory as a GGUF file, laid out as llama.cpp's converter lays it out.

    cogcore convert --to gguf IN_DIR OUT.gguf        cogcore.gguf_export.export_gguf(in_dir, out)

IN_DIR is a Hugging Face directory of a family GGUF has an architecture for (llama,
mixtral, qwen2, qwen3, qwen2_moe, qwen3_moe, olmoe), float or quantized by `cogcore
quantize`. The names, metadata keys and tensor types follow convert_hf_to_gguf.py (the
table in gguf_names.py): 1-D tensors, norms and routers as F32, every other tensor in the
type it is stored in (F32, F16, BF16, or its q8_0 / q4_0 blocks unchanged, so that a model
quantized by cogcore runs in llama.cpp as it runs here); Llama's attn_q / attn_k rows
permuted into GGML's RoPE order; Llama-3 RoPE scaling as the rope_freqs tensor.

The file is written tensor by tensor (experts stacked one tensor at a time) under a
temporary name and renamed at the end: an interrupted export leaves nothing behind.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np

from .dtypes import f32
from .errors import ConfigError, WeightsError
from .gguf_names import ARCH_OF_FAMILY, ARCHES, METADATA, ROPE_FREQS, gguf_name, permute_rows
from .gguf_vocab import add_vocab_to_gguf
from .quant import QuantTensor, packed_shape
from .tensorfile import temporary_name
from .weights import ExpertStack

KEPT_F32 = (".mlp.gate.weight", ".shared_expert_gate.weight")    # routers: the converter keeps them F32


def llama3_rope_factors(config) -> np.ndarray:
    """rope_freqs [head_dim / 2] float32: the converter's LlamaModel.generate_extra_tensors."""
    s, dim = config.rope_scaling, config.head_dim
    freqs = np.float32(1.0) / (np.float32(config.rope_theta) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)))
    L = s["original_max_position_embeddings"]
    low, high, factor = L / s["low_freq_factor"], L / s["high_freq_factor"], s["factor"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high:
            out.append(1.0)
        elif wavelen > low:
            out.append(factor)
        else:
            smooth = (L / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


def check_exportable(config, source: str) -> str:
    """The GGUF architecture of `config`, or a ConfigError naming what llama.cpp would run differently."""
    arch_name = ARCH_OF_FAMILY.get(config.family)
    if arch_name is None:
        raise ConfigError(f"{source}: expected a model of a family GGUF has an architecture for "
                          f"({', '.join(sorted(ARCH_OF_FAMILY))}), found "
                          f"{config.family or 'a cogcore model (NSA and RWKV-7 layers have no GGUF form)'}")
    if arch_name == "rwkv7":
        raise ConfigError(f"{source}: expected a model of a family cogcore writes as GGUF "
                          f"({', '.join(sorted(f for f in ARCH_OF_FAMILY if f != 'rwkv7'))}), found rwkv7: "
                          f"GGUF rwkv7 files are read, not written (llama.cpp's converter writes them from fla's "
                          f"directory)")
    if set(config.layer_types) != {"full_attention"}:
        raise ConfigError(f"{source}: key 'layer_types': expected only full-attention layers (GGUF's "
                          f"{arch_name} has no sliding window), found {sorted(set(config.layer_types))}")
    want = ARCHES[arch_name].norm_topk_prob
    if "moe" in config.mlp_types and config.norm_topk_prob != want:
        raise ConfigError(f"{source}: key 'norm_topk_prob': expected {want} (llama.cpp's {arch_name} always "
                          f"{'renormalises' if want else 'keeps'} the top-k weights), found {config.norm_topk_prob}")
    return arch_name


def metadata(config, arch_name: str) -> dict:
    """{GGUF key: value} of the hyper-parameters, as the converter writes them."""
    hf = {"num_hidden_layers": config.num_hidden_layers, "max_position_embeddings": config.max_position_embeddings,
          "hidden_size": config.hidden_size, "num_attention_heads": config.num_attention_heads,
          "num_key_value_heads": config.num_key_value_heads, "head_dim": config.head_dim,
          "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
          "intermediate_size": config.intermediate_size or config.moe_intermediate_size}
    if "moe" in config.mlp_types:
        hf |= {"num_experts": config.num_experts, "num_experts_per_tok": config.num_experts_per_tok}
        if config.family in ("qwen2_moe", "qwen3_moe"):
            hf["moe_intermediate_size"] = config.moe_intermediate_size
        if config.num_shared_experts:
            hf["shared_expert_intermediate_size"] = config.shared_expert_intermediate_size
    if arch_name == "llama":
        hf["vocab_size"] = config.vocab_size
    out = {f"{arch_name}.{key}": hf[hf_key] for key, hf_key in METADATA if hf.get(hf_key) is not None}
    out[f"{arch_name}.attention.value_length"] = config.head_dim
    if arch_name == "llama":
        out[f"{arch_name}.rope.dimension_count"] = config.head_dim
    out["tokenizer.ggml.bos_token_id"] = config.bos_token_id
    out["tokenizer.ggml.eos_token_id"] = config.eos_token_id
    return out


def _gguf_type(a, name: str):
    """(GGML type, the array to write) of a cogcore tensor, as the converter would store it."""
    from gguf import GGMLQuantizationType as T
    if len(a.shape) == 1 or name.endswith("norm.weight") or name.endswith(KEPT_F32):
        return T.F32, lambda: f32(a if isinstance(a, QuantTensor) else np.asarray(a))   # exact: widened
    if isinstance(a, QuantTensor):
        return T[a.qtype.upper()], lambda: a.data
    if isinstance(a, ExpertStack) and isinstance(a[0], QuantTensor):   # a family's quantized experts
        return T[a[0].qtype.upper()], lambda: np.stack([p.data for p in a.parts])
    kind = {np.dtype(np.float32): T.F32, np.dtype(np.float16): T.F16, np.dtype(np.uint16): T.BF16}[np.dtype(a.dtype)]
    return kind, lambda: np.asarray(a)       # an ExpertStack is stacked here, one tensor at a time


def _permuted(make: Callable, heads: int) -> Callable:
    """`make` with its rows (of floats or of q8_0 / q4_0 blocks) in GGML's RoPE order."""
    def permuted():
        a = make()
        return np.ascontiguousarray(a[permute_rows(heads, a.shape[0])])
    return permuted


def plan(model, arch_name: str) -> list[tuple[str, object, tuple[int, ...], Callable]]:
    """[(GGUF name, GGML type, shape of the array written, make)]: the embedding and rope_freqs
    first, the output norm and head last, as the converter's files hold them."""
    from gguf import GGMLQuantizationType as T
    config, out = model.config, []
    if config.rope_scaling is not None:          # Llama-3's, or the factors a GGUF file gave
        factors = (np.array(config.rope_scaling["factors"], np.float32)
                   if config.rope_scaling["rope_type"] == "factors" else llama3_rope_factors(config))
        out.append((ROPE_FREQS, T.F32, factors.shape, lambda: factors))
    for name, a in model.weights.tensors.items():
        if name not in model.weights.used:
            continue
        target = gguf_name(name)
        if target is None:
            raise WeightsError(f"{model.path}: tensor '{name}': GGUF has no name for it")
        kind, make = _gguf_type(a, name)
        shape = tuple(a.shape)
        if kind.name in ("Q8_0", "Q4_0"):                    # blocks: their bytes
            shape = packed_shape(shape, kind.name.lower())
        if ARCHES[arch_name].permute_qk and target.endswith(("attn_q.weight", "attn_k.weight", "attn_q.bias",
                                                              "attn_k.bias")):
            heads = config.num_attention_heads if ".attn_q." in target else config.num_key_value_heads
            make = _permuted(make, heads)
        out.append((target, kind, shape, make))
    order = {n: i for i, n in enumerate(("token_embd.weight", ROPE_FREQS))}
    return sorted(out, key=lambda t: (order.get(t[0], 2), t[0] in ("output_norm.weight", "output.weight")))


def file_type(entries) -> int:
    """general.file_type: the type of most of the 2-D weights' bytes (llama.cpp's LlamaFileType)."""
    from gguf import GGMLQuantizationType as T, LlamaFileType as F
    of = {T.F32: F.ALL_F32, T.F16: F.MOSTLY_F16, T.BF16: F.MOSTLY_BF16, T.Q8_0: F.MOSTLY_Q8_0, T.Q4_0: F.MOSTLY_Q4_0}
    weight = {}
    for _, kind, shape, _ in entries:
        if len(shape) >= 2:
            weight[kind] = weight.get(kind, 0) + math.prod(shape)
    return int(of[max(weight, key=weight.get)]) if weight else int(F.ALL_F32)


def export_gguf(in_dir, out_path, progress: Callable[[int, int], None] | None = None) -> dict[str, str]:
    """Write the model in `in_dir` as the GGUF file `out_path`; returns {GGUF tensor name: type}.

    `progress(bytes_written, bytes_total)` is called per tensor.
    """
    import gguf
    from .model import load
    out_path = os.fspath(out_path)
    model = load(in_dir, backend="numpy")             # every tensor checked against the config first
    arch_name = check_exportable(model.config, model.path)
    entries = plan(model, arch_name)
    values = metadata(model.config, arch_name)
    folder = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(folder):
        raise WeightsError(f"{out_path}: cannot write there ({folder} is not a directory)")
    tmp, writer = temporary_name(out_path), None
    try:
        writer = gguf.GGUFWriter(tmp, arch_name)
        writer.add_type("model")
        writer.add_name(os.path.basename(os.path.normpath(model.path)))
        writer.add_file_type(file_type(entries))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_vocab_to_gguf(writer, model.path)            # tokenizer.ggml.*, its special ids included
        for key, value in values.items():
            if key not in writer.kv_data[0]:              # the config's ids where the tokenizer has none
                (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(key, value)
        sizes = []
        for name, kind, shape, _ in entries:
            block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
            logical = (*shape[:-1], shape[-1] // block_bytes * block) if block > 1 else shape
            nbytes = math.prod(logical) // block * block_bytes
            writer.add_tensor_info(name, logical, np.dtype(np.float32), nbytes, raw_dtype=kind)
            sizes.append(nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        done, total = 0, sum(sizes)
        for (name, kind, shape, make), nbytes in zip(entries, sizes):
            array = make()
            if array.nbytes != nbytes:
                raise WeightsError(f"{model.path}: tensor '{name}': expected {nbytes} bytes, found {array.nbytes}")
            writer.write_tensor_data(np.ascontiguousarray(array))
            done += nbytes
            if progress:
                progress(done, total)
        writer.close()
        os.replace(tmp, out_path)
    except OSError as e:
        raise WeightsError(f"{out_path}: cannot write the GGUF file: {e.strerror}") from None
    finally:
        if writer is not None:
            writer.close()
        if os.path.exists(tmp):
            os.remove(tmp)
    return {name: kind.name for name, kind, _, _ in entries}
