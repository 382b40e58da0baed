"""Qwen3: transformers' Qwen3ForCausalLM, Llama plus RMSNorm of q and k per head (before RoPE).

Tensor names are cogcore's already (`self_attn.q_norm.weight` [head_dim]).
"""

from .hf import Reader, common

MODEL_TYPE = "qwen3"
DEFAULTS = {"num_hidden_layers": 32, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
            "rope_theta": 10000.0, "hidden_act": "silu", "use_sliding_window": False,
            "attention_bias": False, "head_dim": 128}
RENAMES = ()


def config(raw: dict, source: str) -> dict:
    r = Reader(raw, source, DEFAULTS)
    r.require("use_sliding_window", (False,), "Qwen3's sliding-window layers are not implemented")
    return {**common(r), "mlp_types": ["dense"] * r("num_hidden_layers"),
            "intermediate_size": r("intermediate_size"), "attention_bias": r("attention_bias"),
            "qk_norm": "head"}
