"""OLMoE: transformers' OlmoeForCausalLM.

Llama attention with RMSNorm over the whole q and k projections (q_norm [H*hd],
k_norm [Hkv*hd], before RoPE); every layer MoE (softmax, top-k, renormalised only
if norm_topk_prob). Tensor names are cogcore's, per-expert tensors stacked.
`clip_qkv` is not implemented.
"""

from .hf import Reader, common

MODEL_TYPE = "olmoe"
DEFAULTS = {"num_hidden_layers": 16, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
            "rope_theta": 10000.0, "hidden_act": "silu", "attention_bias": False,
            "intermediate_size": 2048, "num_experts": 64, "num_experts_per_tok": 8,
            "norm_topk_prob": False, "eos_token_id": 50279}
RENAMES = ()


def config(raw: dict, source: str) -> dict:
    r = Reader(raw, source, DEFAULTS)
    r.require("clip_qkv", (None,), "clipping q/k/v is not implemented")
    r.require("attention_bias", (False,), "OLMoE's attention biases are not implemented")
    return {**common(r), "mlp_types": ["moe"] * r("num_hidden_layers"),
            "num_experts": r.first("num_experts", "num_local_experts"),
            "num_experts_per_tok": r("num_experts_per_tok"),
            "moe_intermediate_size": r("intermediate_size"), "norm_topk_prob": r("norm_topk_prob"),
            "qk_norm": "projection"}
