"""GGUF <-> cogcore: the one table of names that reading (gguf_model.py) and writing (gguf_export.py) share.

llama.cpp's converter (convert_hf_to_gguf.py) writes a model of architecture A as

    general.architecture = A, and A.<key> for the hyper-parameters  (METADATA below)
    token_embd / output_norm / output, and blk.{i}.<tensor> per layer  (TENSORS below)

with the tensors' dims in GGML order (fastest first: the reverse of a NumPy shape), and,
for the Llama architecture only (LlamaModel.undo_permute), the rows of attn_q and attn_k
permuted within each head from Hugging Face's rotate-half RoPE layout to GGML's
interleaved pairs (`permute_rows` / `unpermute_rows`).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np


@dataclasses.dataclass(frozen=True)
class Arch:
    """How one GGUF architecture maps onto a cogcore family (cogcore/families/)."""

    family: str                        # the family (transformers model_type) a file of this arch is read as
    moe_family: str | None = None      # the family when the file has experts (llama -> mixtral)
    permute_qk: bool = False           # attn_q / attn_k rows in GGML's RoPE order (llama.cpp's LlamaModel.permute)
    norm_topk_prob: bool | None = None   # what llama.cpp's graph for the arch does with the top-k weights
                                         # (build_moe_ffn's norm_w: fixed per arch, no metadata key)


ARCHES = {
    "rwkv7": Arch("rwkv7"),
    "llama": Arch("llama", moe_family="mixtral", permute_qk=True, norm_topk_prob=True),
    "qwen2": Arch("qwen2"),
    "qwen3": Arch("qwen3"),
    "qwen2moe": Arch("qwen2_moe", norm_topk_prob=False),
    "qwen3moe": Arch("qwen3_moe", norm_topk_prob=True),
    "olmoe": Arch("olmoe", norm_topk_prob=False),
}
ARCH_OF_FAMILY = {a.family: name for name, a in ARCHES.items()} | {"mixtral": "llama"}

# GGUF key (after "<arch>.") <-> transformers config.json key, as the converter writes them
# (TextModel.set_gguf_parameters and the families' own additions).
METADATA = (
    ("block_count", "num_hidden_layers"),
    ("context_length", "max_position_embeddings"),
    ("embedding_length", "hidden_size"),
    ("feed_forward_length", "intermediate_size"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.head_count_kv", "num_key_value_heads"),
    ("attention.key_length", "head_dim"),
    ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    ("rope.freq_base", "rope_theta"),
    ("expert_count", "num_experts"),
    ("expert_used_count", "num_experts_per_tok"),
    ("expert_feed_forward_length", "moe_intermediate_size"),
    ("expert_shared_feed_forward_length", "shared_expert_intermediate_size"),
    ("vocab_size", "vocab_size"),
)

GLOBAL_TENSORS = (
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
)
ROPE_FREQS = "rope_freqs.weight"     # Llama-3 RoPE scaling, as one divisor per frequency [head_dim / 2]

# blk.{i}.<GGUF name> <-> model.layers.{i}.<cogcore name>
LAYER_TENSORS = (
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),          # a dense layer
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
    ("ffn_gate_inp.weight", "mlp.gate.weight"),           # the router of an MoE layer
    ("ffn_gate_exps.weight", "mlp.experts.gate_proj"),    # stacked experts [E, F, D]
    ("ffn_up_exps.weight", "mlp.experts.up_proj"),
    ("ffn_down_exps.weight", "mlp.experts.down_proj"),
    ("ffn_gate_inp_shexp.weight", "mlp.shared_expert_gate.weight"),
    ("ffn_gate_shexp.weight", "mlp.shared_expert.gate_proj.weight"),
    ("ffn_up_shexp.weight", "mlp.shared_expert.up_proj.weight"),
    ("ffn_down_shexp.weight", "mlp.shared_expert.down_proj.weight"),
)
# RWKV-7 (llama.cpp's rwkv7, as its converter writes fla's layout; the cogcore names are those
# cogcore/families/rwkv7.py maps fla's to): blk.{i}.<GGUF name> -> model.layers.{i}.<cogcore name>,
# and whether the converter left the matrix transposed (the LoRAs arrive as nn.Linear stores
# them, [out, in]; cogcore keeps x @ w1 @ w2). Also: time_mix_lerp_fused [6, 1, 1, D] is the six
# token-shift mixes RWKV7_LERPS stacked; r_k arrives flattened [H * N]; layer 0's time_mix_v0..v2
# are dummies the converter copies from time_mix_a* (llama.cpp wants them, cogcore drops them).
RWKV7_LERPS = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")
RWKV7_GLOBAL = (("token_embd_norm.weight", "model.embed_norm.weight"), ("token_embd_norm.bias", "model.embed_norm.bias"),
                ("output_norm.bias", "model.norm.bias"))
RWKV7_LAYER = (
    ("attn_norm.weight", "input_layernorm.weight", False), ("attn_norm.bias", "input_layernorm.bias", False),
    ("attn_norm_2.weight", "post_attention_layernorm.weight", False),
    ("attn_norm_2.bias", "post_attention_layernorm.bias", False),
    ("time_mix_receptance.weight", "rwkv.receptance.weight", False), ("time_mix_key.weight", "rwkv.key.weight", False),
    ("time_mix_value.weight", "rwkv.value.weight", False), ("time_mix_output.weight", "rwkv.output.weight", False),
    *((f"time_mix_{x}0.weight", f"rwkv.{x}0", False) for x in "wav"),
    *((f"time_mix_{x}{i}.weight", f"rwkv.{x}{i}", True) for x in "wavg" for i in (1, 2)),
    ("time_mix_k_k.weight", "rwkv.k_k", False), ("time_mix_k_a.weight", "rwkv.k_a", False),
    ("time_mix_r_k.weight", "rwkv.r_k", False),
    ("time_mix_ln.weight", "rwkv.ln_x.weight", False), ("time_mix_ln.bias", "rwkv.ln_x.bias", False),
    ("channel_mix_lerp_k.weight", "mlp.x_k", False), ("channel_mix_key.weight", "mlp.key.weight", False),
    ("channel_mix_value.weight", "mlp.value.weight", False),
)
_TO_COGCORE = dict(LAYER_TENSORS)
_TO_GGUF = {c: g for g, c in LAYER_TENSORS}
_GLOBAL_TO_COGCORE = dict(GLOBAL_TENSORS)
_GLOBAL_TO_GGUF = {c: g for g, c in GLOBAL_TENSORS}
_GGUF_LAYER = re.compile(r"blk\.(\d+)\.(.+)")
_COGCORE_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
# llama.cpp's older per-expert layout (before the stacked *_exps tensors): blk.{i}.ffn_gate.{e}.weight
_PER_EXPERT = re.compile(r"(ffn_gate|ffn_up|ffn_down)\.(\d+)\.weight")


def cogcore_name(name: str) -> str | None:
    """The cogcore name of a GGUF tensor, or None for one cogcore does not know."""
    if name in _GLOBAL_TO_COGCORE:
        return _GLOBAL_TO_COGCORE[name]
    m = _GGUF_LAYER.fullmatch(name)
    if m is None:
        return None
    per_expert = _PER_EXPERT.fullmatch(m[2])
    if per_expert:         # -> the name hf.map_tensors stacks into an ExpertStack
        return f"model.layers.{m[1]}.mlp.experts.{per_expert[2]}.{_TO_COGCORE[per_expert[1] + '.weight'][4:]}"
    return f"model.layers.{m[1]}.{_TO_COGCORE[m[2]]}" if m[2] in _TO_COGCORE else None


def gguf_name(name: str) -> str | None:
    """The GGUF name of a cogcore tensor, or None for one GGUF has no name for."""
    if name in _GLOBAL_TO_GGUF:
        return _GLOBAL_TO_GGUF[name]
    m = _COGCORE_LAYER.fullmatch(name)
    return f"blk.{m[1]}.{_TO_GGUF[m[2]]}" if m and m[2] in _TO_GGUF else None


def permute_rows(n_heads: int, rows: int) -> np.ndarray:
    """Row order of llama.cpp's LlamaModel.permute: GGUF row g holds Hugging Face row index[g].

    Within each head of hd rows, HF keeps the two rotated halves apart (row s*hd/2 + j,
    s = 0, 1) and GGML interleaves them (row 2j + s).
    """
    hd = rows // n_heads
    return np.arange(rows).reshape(n_heads, 2, hd // 2).transpose(0, 2, 1).reshape(-1)


def unpermute_rows(n_heads: int, rows: int) -> np.ndarray:
    """The inverse of `permute_rows`: Hugging Face row r is GGUF row index[r]."""
    hd = rows // n_heads
    return np.arange(rows).reshape(n_heads, hd // 2, 2).transpose(0, 2, 1).reshape(-1)
