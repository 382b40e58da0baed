"""RWKV-7: the layout of fla's (flash-linear-attention) RWKV7ForCausalLM, `model_type: rwkv7`.

Every layer is an RWKV-7 time mix (`recurrent`) and a channel mix, under LayerNorms.
fla's forward (fla/models/rwkv7/modeling_rwkv7.py, fla/layers/rwkv7.py) is cogcore's
(SPEC 4.4, 4.6) with these correspondences:

    model.embeddings                      -> model.embed_tokens
    layers.0.pre_norm (ln0; norm_first)   -> model.embed_norm (embedding_norm: the residual
                                             stream starts from the normed embedding)
    attn_norm / ffn_norm                  -> input_layernorm / post_attention_layernorm
    attn.{r,k,v,o}_proj                   -> rwkv.{receptance,key,value,output}
    attn.{w,a,v,g}_lora.lora.0.weight     -> rwkv.{w,a,v,g}1, transposed: nn.Linear's [R, D]
    attn.{w,a,v,g}_lora.lora.2.weight     -> rwkv.{w,a,v,g}2, transposed: [D, R] -> [R, D]
    attn.{w,a,v}_lora.lora.2.bias         -> rwkv.{w,a,v}0 (g_lora has no bias)
    attn.x_{r,w,k,v,a,g} [1, 1, D]        -> rwkv.x_* [D]
    attn.k_k, k_a, r_k                    -> the same names under rwkv.
    attn.g_norm (GroupNorm)               -> rwkv.ln_x, eps = head_dim * norm_eps
    ffn.x_k, ffn.key, ffn.value           -> mlp.x_k, mlp.key, mlp.value (sqrelu)

The LoRA activations are the reference's: tanh inside w_lora, none in a_lora and
v_lora, sigmoid inside g_lora; fla's decay `-exp(-0.5) * sigmoid(w_lora(x))` is the log
of the reference's w. Layer 0 has no v_lora (`rwkv_first_v_lora: false`): its values
are the `v_first` of the value residual. With `fuse_norm` (fla's default) kk is
normalised by fla's fused kernel, x / sqrt(|x|^2 + 1e-6) (`rwkv_kk_norm: epsilon`);
without it by torch's F.normalize (`clamp`). The transposes and reshapes are views of
the memory-mapped file: nothing is copied at load.

Not implemented, refused by name: fla's hybrid attention layers (`attn`), a value_dim
other than hidden_size, activations other than sqrelu. RWKV-7 has no position limit:
fla's `max_position_embeddings` bounds nothing in its forward, so cogcore's is set to
the largest it takes. The tokenizer is a `tokenizer.json` beside the weights.
"""

from __future__ import annotations

import math

from ..config import MAX_INT
from ..errors import ConfigError
from .hf import Reader

MODEL_TYPE = "rwkv7"
# fla's RWKV7Config defaults (fla 0.6.0)
DEFAULTS = {"hidden_size": 2048, "hidden_ratio": 4, "intermediate_size": None, "num_hidden_layers": 24,
            "head_dim": 64, "num_heads": None, "decay_low_rank_dim": 64, "gate_low_rank_dim": 128,
            "a_low_rank_dim": 64, "v_low_rank_dim": 16, "hidden_act": "sqrelu", "norm_first": True,
            "norm_bias": True, "norm_eps": 1e-5, "attn": None, "bos_token_id": 1, "eos_token_id": 2,
            "tie_word_embeddings": False, "fuse_norm": True, "vocab_size": 32000, "value_dim": None}

RENAMES = (
    (r"^model\.embeddings\.", "model.embed_tokens."),
    (r"^model\.layers\.0\.pre_norm\.", "model.embed_norm."),
    (r"\.attn_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
    (r"\.attn\.r_proj\.", ".rwkv.receptance."),
    (r"\.attn\.k_proj\.", ".rwkv.key."),
    (r"\.attn\.v_proj\.", ".rwkv.value."),
    (r"\.attn\.o_proj\.", ".rwkv.output."),
    (r"\.attn\.([wavg])_lora\.lora\.0\.weight$", r".rwkv.\g<1>1"),
    (r"\.attn\.([wavg])_lora\.lora\.2\.weight$", r".rwkv.\g<1>2"),
    (r"\.attn\.([wav])_lora\.lora\.2\.bias$", r".rwkv.\g<1>0"),
    (r"\.attn\.g_norm\.", ".rwkv.ln_x."),
    (r"\.attn\.", ".rwkv."),
    (r"\.ffn\.", ".mlp."),
)

VIEWS = (   # applied to the renamed tensors; a tensor of another shape is left for the shape check
    (r"\.rwkv\.x_[rwkvag]$", lambda a: a.reshape(a.shape[-1]) if a.shape[:-1] == (1, 1) else a),
    (r"\.rwkv\.[wavg][12]$", lambda a: a.T if a.ndim == 2 else a),     # nn.Linear [out, in] -> x @ m
)


def low_rank(raw: dict, source: str, key: str, formula: float) -> int:
    """A LoRA width: absent -> fla's config default; null -> the formula fla's layer uses."""
    if key not in raw:
        return DEFAULTS[key]
    value = raw[key]
    if value is None:
        return max(32, int(round(formula / 32) * 32))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{source}: key '{key}': expected an integer >= 1 or null, found {value!r}")
    return value


def config(raw: dict, source: str) -> dict:
    r = Reader(raw, source, DEFAULTS)
    r.require("hidden_act", ("sqrelu",), "the squared-ReLU channel mix cogcore implements")
    r.require("attn", (None,), "fla's hybrid attention layers are not implemented")
    for key in ("norm_first", "norm_bias", "fuse_norm", "tie_word_embeddings"):
        r.require(key, (True, False), "a boolean")
    D, n = r.positive_int("hidden_size"), r.positive_int("num_hidden_layers")
    if raw.get("head_dim") is None and raw.get("num_heads") is not None:
        heads = r.positive_int("num_heads")
        if D % heads:
            raise ConfigError(f"{source}: key 'num_heads': expected a divisor of hidden_size={D}, found {heads}")
        N = D // heads
    else:
        N = r.positive_int("head_dim")
    value_dim = r.raw.get("value_dim")
    if value_dim is not None and value_dim != D and value_dim != [D] * n:
        raise ConfigError(f"{source}: key 'value_dim': expected hidden_size={D} for every layer (wider "
                          f"values are not implemented), found {value_dim!r}")
    eps = r("norm_eps")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ConfigError(f"{source}: key 'norm_eps': expected a number in (0, 1), found {eps!r}")
    F = r.raw.get("intermediate_size")
    if F is None:          # fla's RWKV7FeedForward: hidden_size * hidden_ratio, rounded up to 32
        ratio = r.raw.get("hidden_ratio") or 4
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 2**20:
            raise ConfigError(f"{source}: key 'hidden_ratio': expected a number > 0, found {ratio!r}")
        F = 32 * math.ceil(int(D * ratio) / 32)
    factor, root = N / 64, D ** 0.5
    ranks = {"rwkv_decay_rank": low_rank(raw, source, "decay_low_rank_dim", 2.5 * root * factor),
             "rwkv_a_rank": low_rank(raw, source, "a_low_rank_dim", 2.5 * root * factor),
             "rwkv_v_rank": low_rank(raw, source, "v_low_rank_dim", 1.7 * root * factor),
             "rwkv_gate_rank": low_rank(raw, source, "gate_low_rank_dim", 5 * root)}
    return {
        "vocab_size": r("vocab_size"), "hidden_size": D, "num_hidden_layers": n,
        "layer_types": ["recurrent"] * n, "mlp_types": ["channel_mix"] * n,
        "norm_type": "layernorm", "norm_eps": eps, "norm_bias": r("norm_bias"),
        "embedding_norm": r("norm_first"), "tie_word_embeddings": r("tie_word_embeddings"),
        "max_position_embeddings": MAX_INT, "intermediate_size": F,
        "rwkv_head_size": N, **ranks,
        "rwkv_group_norm_eps": N * eps, "rwkv_kk_norm": "epsilon" if r("fuse_norm") else "clamp",
        "rwkv_first_v_lora": False,
        **r.token_id("bos_token_id"), **r.token_id("eos_token_id"),
    }
