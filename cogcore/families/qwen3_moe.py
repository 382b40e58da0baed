"""Qwen3-MoE: transformers' Qwen3MoeForCausalLM.

Qwen3's attention (RMSNorm of q and k per head, no biases); MoE layers every
`decoder_sparse_step`-th layer except those in `mlp_only_layers`, routed experts
only (no shared expert). Tensor names are cogcore's, per-expert tensors stacked.
"""

from .hf import Reader, common, sparse_layers

MODEL_TYPE = "qwen3_moe"
DEFAULTS = {"num_hidden_layers": 24, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
            "max_position_embeddings": 32768, "rope_theta": 10000.0, "hidden_act": "silu",
            "use_sliding_window": False, "attention_bias": False, "intermediate_size": 6144,
            "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
            "norm_topk_prob": False}
RENAMES = ()


def config(raw: dict, source: str) -> dict:
    r = Reader(raw, source, DEFAULTS)
    r.require("use_sliding_window", (False,), "Qwen3-MoE's sliding-window layers are not implemented")
    return {**common(r), "mlp_types": sparse_layers(r), "intermediate_size": r("intermediate_size"),
            "num_experts": r.first("num_experts", "num_local_experts"),
            "num_experts_per_tok": r("num_experts_per_tok"),
            "moe_intermediate_size": r("moe_intermediate_size"), "norm_topk_prob": r("norm_topk_prob"),
            "attention_bias": r("attention_bias"), "qk_norm": "head"}
