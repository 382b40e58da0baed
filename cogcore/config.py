"""config.json: parsing, validation and the named shapes (SPEC Sections 2 and 8).

A `Config` is immutable and always valid: every constructor path goes through
`Config.from_dict`, which checks types, ranges and the cross-key rules of the spec
and names the offending key in its error.

Keys that no layer of the model uses may be absent. Keys that every model needs
but whose value is conventional get the defaults of `GENERAL_DEFAULTS` (written
down in docs/format.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import numpy as np

from .errors import ConfigError, reading

MIXER_TYPES = ("full_attention", "sliding_attention", "sparse_attention", "recurrent")
ATTENTION_TYPES = ("full_attention", "sliding_attention", "sparse_attention")
MLP_TYPES = ("moe", "dense", "channel_mix")
NORM_TYPES = ("rmsnorm", "layernorm")

GENERAL_DEFAULTS: dict[str, Any] = {
    "model_type": "cogcore",
    "norm_type": "rmsnorm",
    "norm_eps": 1e-5,
    "norm_bias": True,
    "embedding_norm": False,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "max_position_embeddings": 131072,
    "norm_topk_prob": True,
    "num_shared_experts": 0,
    "shared_expert_intermediate_size": 0,
    "attention_bias": False,
    "qk_norm": None,
    "rope_scaling": None,
    "rope_angles": "float64",
    "family": None,
}

# family: the public model family (its Hugging Face model_type) whose config.json
# cogcore.families translated into this config; None for cogcore's own models.
FAMILIES = ("llama", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "rwkv7")
QK_NORMS = (None, "head", "projection")
ROPE_ANGLES = ("float64", "float32")
ROPE_SCALING_TYPES = ("llama3", "factors")   # factors: one divisor per frequency, as a GGUF file's rope_freqs
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")

# Keys needed only when some layer uses them: {key: (kind, predicate on config dict)}.
_ATTN = ("num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta")
_SLIDING = ("sliding_window",)
_NSA = ("nsa_compress_block", "nsa_compress_stride", "nsa_compress_hidden",
        "nsa_select_block", "nsa_select_count", "nsa_window")
_RWKV = ("rwkv_head_size", "rwkv_decay_rank", "rwkv_a_rank", "rwkv_v_rank", "rwkv_gate_rank")
# options of the recurrent mixer that fla's RWKV-7 layout needs (docs/format.md section 1.1);
# the defaults are the RWKV-7 reference's. Set when some layer is recurrent, else absent.
RWKV_OPTIONS: dict[str, Any] = {"rwkv_group_norm_eps": 64e-5, "rwkv_kk_norm": "clamp",
                                "rwkv_first_v_lora": True}
RWKV_KK_NORMS = ("clamp", "epsilon")
_MOE = ("num_experts", "num_experts_per_tok", "moe_intermediate_size")
_DENSE = ("intermediate_size",)

_FLOAT_KEYS = {"norm_eps", "rope_theta"}
MAX_INT = 2**31 - 1     # sizes and ids beyond 32 bits are no real model, and overflow the kernels' int64 products
_BOOL_KEYS = {"embedding_norm", "tie_word_embeddings", "norm_topk_prob", "attention_bias", "norm_bias"}


@dataclasses.dataclass(frozen=True)
class Config:
    """The validated hyper-parameters of one model. Field names are config.json keys."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    layer_types: tuple[str, ...]
    mlp_types: tuple[str, ...]
    model_type: str = "cogcore"
    family: str | None = None
    norm_type: str = "rmsnorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True          # layernorm only: false means no `.bias` tensors (b = 0)
    embedding_norm: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    max_position_embeddings: int = 131072
    # attention (any attention layer)
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float | None = None
    # options of the public families (docs/format.md section 1.1): biases on q/k/v (Qwen2),
    # RMSNorm of q and k per head (Qwen3) or over the whole projection (OLMoE), Llama-3
    # rope_scaling, and RoPE angles rounded as transformers rounds them (float32)
    attention_bias: bool = False
    qk_norm: str | None = None
    rope_scaling: dict | None = None
    rope_angles: str = "float64"
    sliding_window: int | None = None
    # sparse attention (NSA)
    nsa_compress_block: int | None = None
    nsa_compress_stride: int | None = None
    nsa_compress_hidden: int | None = None
    nsa_select_block: int | None = None
    nsa_select_count: int | None = None
    nsa_window: int | None = None
    # recurrent (RWKV-7)
    rwkv_head_size: int | None = None
    rwkv_decay_rank: int | None = None
    rwkv_a_rank: int | None = None
    rwkv_v_rank: int | None = None
    rwkv_gate_rank: int | None = None
    rwkv_group_norm_eps: float | None = None     # eps of the per-head group norm of y (64e-5)
    rwkv_kk_norm: str | None = None              # "clamp": kk / max(|kk|, 1e-12); "epsilon": kk / sqrt(|kk|^2 + 1e-6)
    rwkv_first_v_lora: bool | None = None        # the first recurrent layer holds its (unused) v0/v1/v2
    # mixture of experts
    num_experts: int | None = None
    num_experts_per_tok: int | None = None
    moe_intermediate_size: int | None = None
    norm_topk_prob: bool = True
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int = 0
    # dense FFN and channel mix
    intermediate_size: int | None = None

    # ---- derived shapes -------------------------------------------------
    @property
    def first_recurrent_layer(self) -> int | None:
        """The layer whose value vector is the `v_first` of the value residual (SPEC 4.4)."""
        return next((i for i, t in enumerate(self.layer_types) if t == "recurrent"), None)

    # ---- parsing ---------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "Config":
        """Validate `raw` (a parsed config.json) and build a Config. `source` names the file in errors."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object, found {type(raw).__name__}")

        def fail(key: str, expected: str, found: Any) -> None:
            raise ConfigError(f"{source}: key '{key}': expected {expected}, found {found!r}")

        values = dict(GENERAL_DEFAULTS)
        values.update({k: v for k, v in raw.items() if k in _FIELD_NAMES})

        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "layer_types", "mlp_types"):
            if key not in raw:
                fail(key, "a value (the key is required)", "nothing")
        if values["model_type"] != "cogcore":
            fail("model_type", "'cogcore'", values["model_type"])
        if values["family"] not in (None, *FAMILIES):
            fail("family", f"null or one of {', '.join(FAMILIES)}", values["family"])

        n_layers = values["num_hidden_layers"]
        if not is_int(n_layers) or n_layers < 1:
            fail("num_hidden_layers", "an integer >= 1", n_layers)
        for key, allowed in (("layer_types", MIXER_TYPES), ("mlp_types", MLP_TYPES)):
            lst = values[key]
            if not isinstance(lst, list) or len(lst) != n_layers:
                fail(key, f"a list of num_hidden_layers={n_layers} entries", lst)
            for i, t in enumerate(lst):
                if t not in allowed:
                    fail(f"{key}[{i}]", f"one of {', '.join(allowed)}", t)
            values[key] = tuple(lst)
        if values["norm_type"] not in NORM_TYPES:
            fail("norm_type", f"one of {', '.join(NORM_TYPES)}", values["norm_type"])

        layers, mlps = set(values["layer_types"]), set(values["mlp_types"])
        needed = ["vocab_size", "hidden_size", "bos_token_id", "eos_token_id",
                  "max_position_embeddings", "norm_eps"]
        if layers & set(ATTENTION_TYPES):
            needed += _ATTN
        if "sliding_attention" in layers:
            needed += _SLIDING
        if "sparse_attention" in layers:
            needed += _NSA
        if "recurrent" in layers:
            needed += _RWKV
        if "moe" in mlps:
            needed += _MOE + ("num_shared_experts",)
            if values["num_shared_experts"]:
                needed += ("shared_expert_intermediate_size",)
        if mlps & {"dense", "channel_mix"}:
            needed += _DENSE

        for key in needed:
            v = values.get(key)
            if v is None:
                fail(key, "a value (required by layer_types/mlp_types)", "nothing")
            if key in _FLOAT_KEYS:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                    fail(key, "a finite number > 0", v)
                if key == "norm_eps" and not v < 1:   # an eps of 1 or more swamps the mean square
                    fail(key, "a number in (0, 1), e.g. 1e-5", v)
                values[key] = float(v)
            elif key in ("bos_token_id", "eos_token_id", "num_shared_experts"):
                if not is_int(v) or not 0 <= v <= MAX_INT:
                    fail(key, f"an integer >= 0 (at most {MAX_INT})", v)
            elif not is_int(v) or not 1 <= v <= MAX_INT:
                fail(key, f"an integer >= 1 (at most {MAX_INT})", v)
        for key in _BOOL_KEYS:
            if not isinstance(values[key], bool):
                fail(key, "true or false", values[key])
        if "recurrent" in layers:
            values.update({k: d for k, d in RWKV_OPTIONS.items() if values.get(k) is None})
            eps = values["rwkv_group_norm_eps"]
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
                fail("rwkv_group_norm_eps", "a number in (0, 1), e.g. 64e-5", eps)
            values["rwkv_group_norm_eps"] = float(eps)
            if values["rwkv_kk_norm"] not in RWKV_KK_NORMS:
                fail("rwkv_kk_norm", f"one of {', '.join(RWKV_KK_NORMS)}", values["rwkv_kk_norm"])
            if not isinstance(values["rwkv_first_v_lora"], bool):
                fail("rwkv_first_v_lora", "true or false", values["rwkv_first_v_lora"])
        else:
            values.update(dict.fromkeys(RWKV_OPTIONS))
        if values["qk_norm"] not in QK_NORMS:
            fail("qk_norm", "null, 'head' or 'projection'", values["qk_norm"])
        if values["rope_angles"] not in ROPE_ANGLES:
            fail("rope_angles", f"one of {', '.join(ROPE_ANGLES)}", values["rope_angles"])
        if values["rope_scaling"] is not None:
            values["rope_scaling"] = _check_rope_scaling(values["rope_scaling"], fail)
        # Keys the layers do not use are dropped, so that two configs of the same
        # model compare equal whatever spare keys their files carried.
        for key in _ATTN + _SLIDING + _NSA + _RWKV + _MOE + _DENSE:
            if key not in needed:
                values[key] = None

        v = values
        if v["eos_token_id"] >= v["vocab_size"]:
            fail("eos_token_id", f"< vocab_size={v['vocab_size']}", v["eos_token_id"])
        if v["bos_token_id"] >= v["vocab_size"]:
            fail("bos_token_id", f"< vocab_size={v['vocab_size']}", v["bos_token_id"])
        if v["num_attention_heads"] is not None:
            if v["num_attention_heads"] % v["num_key_value_heads"]:
                fail("num_key_value_heads",
                     f"a divisor of num_attention_heads={v['num_attention_heads']}",
                     v["num_key_value_heads"])
            if v["head_dim"] % 2:
                fail("head_dim", "an even integer (RoPE rotates pairs)", v["head_dim"])
            factors = (v["rope_scaling"] or {}).get("factors")
            if factors is not None and len(factors) != v["head_dim"] // 2:
                fail("rope_scaling.factors", f"head_dim / 2 = {v['head_dim'] // 2} factors", f"{len(factors)}")
        if v["rwkv_head_size"] is not None and v["hidden_size"] % v["rwkv_head_size"]:
            fail("rwkv_head_size", f"a divisor of hidden_size={v['hidden_size']}", v["rwkv_head_size"])
        if v["nsa_compress_block"] is not None:
            s = v["nsa_compress_stride"]
            if v["nsa_compress_block"] % s:
                fail("nsa_compress_block", f"a multiple of nsa_compress_stride={s}", v["nsa_compress_block"])
            if v["nsa_select_block"] % s:
                fail("nsa_select_block", f"a multiple of nsa_compress_stride={s}", v["nsa_select_block"])
            if v["nsa_select_count"] < 3:
                fail("nsa_select_count", "an integer >= 3 (block 0 and two local blocks are forced)",
                     v["nsa_select_count"])
        if v["num_experts"] is not None:
            if not 1 <= v["num_experts_per_tok"] <= v["num_experts"]:
                fail("num_experts_per_tok", f"between 1 and num_experts={v['num_experts']}",
                     v["num_experts_per_tok"])
            if v["num_shared_experts"] not in (0, 1):
                fail("num_shared_experts", "0 or 1 (SPEC v1)", v["num_shared_experts"])
            if v["num_shared_experts"] == 1 and v["shared_expert_intermediate_size"] < 1:
                fail("shared_expert_intermediate_size", "an integer >= 1 when num_shared_experts is 1",
                     v["shared_expert_intermediate_size"])
        return cls(**v)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Config":
        path = os.fspath(path)
        from .families import load_config   # a public family's config.json is translated first
        return load_config(read_json(path, ConfigError, "config file"), source=path)

    def to_dict(self) -> dict[str, Any]:
        """The config.json form: every key that is set, lists as lists."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any) -> "Config":
        """A validated copy with some keys changed."""
        return Config.from_dict({**self.to_dict(), **changes})


_FIELD_NAMES = {f.name for f in dataclasses.fields(Config)}


def _check_rope_scaling(rs: Any, fail) -> dict:
    """The Llama-3 frequency scaling, the one rope_scaling type cogcore implements."""
    if not isinstance(rs, dict):
        fail("rope_scaling", "null or an object", rs)
    kind = rs.get("rope_type", rs.get("type"))
    if kind not in ROPE_SCALING_TYPES:
        fail("rope_scaling.rope_type", f"one of {', '.join(ROPE_SCALING_TYPES)} (the scalings cogcore "
             f"implements)", kind)
    if kind == "factors":
        factors = rs.get("factors")
        if (not isinstance(factors, list) or not factors or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                for v in factors)):
            fail("rope_scaling.factors", "a list of finite numbers > 0, one per frequency", factors)
        return {"rope_type": kind, "factors": [float(v) for v in factors]}
    out = {"rope_type": kind}
    for key in LLAMA3_KEYS:
        v = rs.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            fail(f"rope_scaling.{key}", "a finite number > 0", v)
        out[key] = v
    if out["high_freq_factor"] <= out["low_freq_factor"]:
        fail("rope_scaling.high_freq_factor", f"> low_freq_factor={out['low_freq_factor']}",
             out["high_freq_factor"])
    return out


def is_int(v: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def read_json(path: str, error: type[Exception], what: str = "file") -> Any:
    """Parse a JSON file, or raise `error` saying what is wrong with it (missing, a directory, bad JSON)."""
    try:
        with reading(path, f"JSON {what}", error), open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, RecursionError) as e:   # JSONDecodeError, bad UTF-8, ints over 4,300 digits
        raise error(f"{path}: expected valid JSON, found a parse error: {e}") from None


def _alternating(n: int) -> list[str]:
    return ["recurrent" if i % 2 == 0 else "sparse_attention" for i in range(n)]


# SPEC Section 8. Keys the spec leaves open (ranks, compression MLP width,
# RWKV head size) follow the spec's example config and the RWKV-7 reference.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 4,
        "layer_types": _alternating(4), "mlp_types": ["moe"] * 4,
        "max_position_embeddings": 4096,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rope_theta": 10000.0,
        "nsa_compress_block": 8, "nsa_compress_stride": 4, "nsa_compress_hidden": 32,
        "nsa_select_block": 16, "nsa_select_count": 4, "nsa_window": 16,
        "rwkv_head_size": 16, "rwkv_decay_rank": 8, "rwkv_a_rank": 8, "rwkv_v_rank": 8,
        "rwkv_gate_rank": 16,
        "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
    },
    "4b": {
        "vocab_size": 32000, "hidden_size": 2048, "num_hidden_layers": 24,
        "layer_types": _alternating(24), "mlp_types": ["moe"] * 24,
        "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 128, "rope_theta": 10000.0,
        "nsa_compress_block": 32, "nsa_compress_stride": 16, "nsa_compress_hidden": 256,
        "nsa_select_block": 64, "nsa_select_count": 16, "nsa_window": 512,
        "rwkv_head_size": 64, "rwkv_decay_rank": 64, "rwkv_a_rank": 64, "rwkv_v_rank": 32,
        "rwkv_gate_rank": 128,
        "num_experts": 32, "num_experts_per_tok": 2, "moe_intermediate_size": 768,
    },
}


def preset(name: str, **overrides: Any) -> Config:
    """The Config of a named shape, optionally with some keys changed."""
    if name not in PRESETS:
        raise ConfigError(f"preset '{name}': expected one of {', '.join(PRESETS)}, found no such preset")
    return Config.from_dict({**PRESETS[name], **overrides}, source=f"preset '{name}'")
