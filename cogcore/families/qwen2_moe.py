"""Qwen1.5-MoE / Qwen2-MoE: transformers' Qwen2MoeForCausalLM.

Qwen2's attention (biases on q, k, v); MoE layers every `decoder_sparse_step`-th
layer except those in `mlp_only_layers` (dense SwiGLU of intermediate_size), each
with routed experts (softmax, top-k, renormalised only if norm_topk_prob) plus one
shared expert scaled by sigmoid(x shared_expert_gate^T). Tensor names are
cogcore's already, but for the per-expert tensors, which are stacked.
"""

from .hf import Reader, common, sparse_layers

MODEL_TYPE = "qwen2_moe"
DEFAULTS = {"num_hidden_layers": 24, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
            "rope_theta": 10000.0, "hidden_act": "silu", "use_sliding_window": False,
            "intermediate_size": 5632, "moe_intermediate_size": 1408, "num_experts": 60,
            "num_experts_per_tok": 4, "norm_topk_prob": False, "shared_expert_intermediate_size": 5632,
            "qkv_bias": True}
RENAMES = ()


def config(raw: dict, source: str) -> dict:
    r = Reader(raw, source, DEFAULTS)
    r.require("use_sliding_window", (False,), "Qwen2-MoE's sliding-window layers are not implemented")
    r.require("qkv_bias", (True,), "Qwen2-MoE's attention has q/k/v biases")
    shared = r("shared_expert_intermediate_size")
    return {**common(r), "mlp_types": sparse_layers(r), "intermediate_size": r("intermediate_size"),
            "num_experts": r.first("num_experts", "num_local_experts"),
            "num_experts_per_tok": r("num_experts_per_tok"),
            "moe_intermediate_size": r("moe_intermediate_size"), "norm_topk_prob": r("norm_topk_prob"),
            "num_shared_experts": 1 if shared else 0, "shared_expert_intermediate_size": shared,
            "attention_bias": True}
