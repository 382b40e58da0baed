"""Mixtral: transformers' MixtralForCausalLM, Llama with top-k-of-E SwiGLU experts.

    block_sparse_moe.gate            -> mlp.gate             router [E, D]
    block_sparse_moe.experts.{e}.w1  -> mlp.experts.gate_proj [E, F, D]
    block_sparse_moe.experts.{e}.w3  -> mlp.experts.up_proj   [E, F, D]
    block_sparse_moe.experts.{e}.w2  -> mlp.experts.down_proj [E, D, F]

The router is softmax, top-k, renormalised (norm_topk_prob true). A `sliding_window`
makes every layer a sliding-window attention layer, as transformers' mask does.
"""

from .hf import Reader, common

MODEL_TYPE = "mixtral"
DEFAULTS = {"num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 131072, "rope_theta": 1e6, "hidden_act": "silu",
            "bos_token_id": 1, "eos_token_id": 2, "num_local_experts": 8, "num_experts_per_tok": 2}
RENAMES = (
    (r"\.block_sparse_moe\.", ".mlp."),
    (r"\.experts\.(\d+)\.w1\.", r".experts.\1.gate_proj."),
    (r"\.experts\.(\d+)\.w3\.", r".experts.\1.up_proj."),
    (r"\.experts\.(\d+)\.w2\.", r".experts.\1.down_proj."),
)


def config(raw: dict, source: str) -> dict:
    r = Reader(raw, source, DEFAULTS)
    out = {**common(r), "mlp_types": ["moe"] * r("num_hidden_layers"),
           "num_experts": r.first("num_local_experts", "num_experts"),
           "num_experts_per_tok": r("num_experts_per_tok"),
           "moe_intermediate_size": r("intermediate_size"), "norm_topk_prob": True}
    if raw.get("sliding_window"):
        out["layer_types"] = ["sliding_attention"] * out["num_hidden_layers"]
        out["sliding_window"] = raw["sliding_window"]
    return out
