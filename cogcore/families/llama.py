"""Llama (1, 2, 3, 3.1): transformers' LlamaForCausalLM.

Tensor names are cogcore's already. Llama-3 `rope_scaling` is supported; attention
and MLP biases (`attention_bias`, `mlp_bias`, which in Llama also bias o_proj and
the MLP) are not.
"""

from .hf import Reader, common

MODEL_TYPE = "llama"
DEFAULTS = {"num_hidden_layers": 32, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048,
            "rope_theta": 10000.0, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
            "attention_bias": False, "mlp_bias": False}
RENAMES = ()


def config(raw: dict, source: str) -> dict:
    r = Reader(raw, source, DEFAULTS)
    r.require("attention_bias", (False,), "Llama's attention biases include o_proj, not implemented")
    r.require("mlp_bias", (False,), "MLP biases are not implemented")
    return {**common(r), "mlp_types": ["dense"] * r("num_hidden_layers"),
            "intermediate_size": r("intermediate_size")}
