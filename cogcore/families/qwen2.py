"""Qwen2 / Qwen2.5: transformers' Qwen2ForCausalLM, Llama plus biases on q, k and v.

Tensor names are cogcore's already. The per-layer sliding window
(`use_sliding_window`) is not implemented.
"""

from .hf import Reader, common

MODEL_TYPE = "qwen2"
DEFAULTS = {"num_hidden_layers": 32, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
            "rope_theta": 10000.0, "hidden_act": "silu", "use_sliding_window": False}
RENAMES = ()


def config(raw: dict, source: str) -> dict:
    r = Reader(raw, source, DEFAULTS)
    r.require("use_sliding_window", (False,), "Qwen2's sliding-window layers are not implemented")
    return {**common(r), "mlp_types": ["dense"] * r("num_hidden_layers"),
            "intermediate_size": r("intermediate_size"), "attention_bias": True}
