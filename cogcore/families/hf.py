"""What the Hugging Face families share: reading their config keys, and their tensor names.

The config readers take transformers' key names, old and new spelling alike
(`rope_theta` + `rope_scaling` before transformers 5, `rope_parameters` after;
`num_experts` or `num_local_experts`), and refuse any option cogcore does not
implement with a ConfigError that names the key.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..config import LLAMA3_KEYS
from ..errors import ConfigError, WeightsError
from ..weights import ExpertStack

_MISSING = object()


class Reader:
    """Keys of one foreign config.json, with the family's defaults and errors naming the key."""

    def __init__(self, raw: dict, source: str, defaults: dict[str, Any]):
        self.raw, self.source, self.defaults = raw, source, defaults

    def __call__(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw.get(key)
        if value is None:
            value = self.defaults.get(key) if default is _MISSING else default
        if value is None:
            raise ConfigError(f"{self.source}: key '{key}': expected a value, found nothing")
        return value

    def positive_int(self, key: str, default: Any = _MISSING) -> int:
        """A key the translation computes with: an integer >= 1."""
        value = self(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{self.source}: key '{key}': expected an integer >= 1, found {value!r}")
        return value

    def dict(self, key: str) -> dict:
        """An object-valued key (absent or null: {})."""
        value = self.raw.get(key) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.source}: key '{key}': expected an object, found {value!r}")
        return value

    def first(self, *keys: str) -> Any:
        """The first of several spellings of one key that is set."""
        for key in keys:
            if self.raw.get(key) is not None:
                return self.raw[key]
        return self(keys[0])

    def require(self, key: str, allowed: tuple, why: str) -> None:
        """A ConfigError unless the key (or its default) is one of `allowed`."""
        value = self.raw.get(key, self.defaults.get(key))
        if value not in allowed:
            raise ConfigError(f"{self.source}: key '{key}': expected {' or '.join(map(repr, allowed))} "
                              f"({why}), found {value!r}")

    def token_id(self, key: str) -> dict:
        """bos/eos ids: an int, or the first of a list (the others still end a text in
        transformers; cogcore stops on one); absent keys keep cogcore's defaults."""
        value = self.raw.get(key, self.defaults.get(key))
        if isinstance(value, list) and value:
            value = value[0]
        return {} if value is None else {key: value}


def rope(r: Reader) -> dict:
    """rope_theta, rope_scaling (Llama-3 only) and transformers' float32 angles."""
    params = r.dict("rope_parameters")
    scaling = r.dict("rope_scaling") or params
    theta = params.get("rope_theta", r("rope_theta"))
    key = "rope_scaling" if r.raw.get("rope_scaling") else "rope_parameters"
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "llama3"):
        raise ConfigError(f"{r.source}: key '{key}.rope_type': expected 'default' or 'llama3' (the RoPE "
                          f"scalings cogcore implements), found {kind!r}")
    for name in LLAMA3_KEYS if kind == "llama3" else ():
        value = scaling.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{r.source}: key '{key}.{name}': expected a number > 0 (Llama-3 RoPE "
                              f"scaling needs it), found {value!r}")
    return {"rope_theta": theta, "rope_angles": "float32",
            "rope_scaling": None if kind == "default" else dict(scaling, rope_type=kind)}


def common(r: Reader) -> dict:
    """The keys every family here has: sizes, attention shape, norms, ids."""
    r.require("hidden_act", ("silu",), "the SwiGLU activation cogcore implements")
    D, H = r.positive_int("hidden_size"), r.positive_int("num_attention_heads")
    head_dim = r.raw.get("head_dim") or r.defaults.get("head_dim") or D // H
    n = r.positive_int("num_hidden_layers")
    kinds = r.raw.get("layer_types") or ["full_attention"]      # transformers 5 writes one per layer
    if not isinstance(kinds, list) or set(map(str, kinds)) != {"full_attention"}:
        raise ConfigError(f"{r.source}: key 'layer_types': expected only 'full_attention' layers (the "
                          f"families' sliding-window layers are not implemented), found {kinds!r}")
    return {
        "vocab_size": r("vocab_size"), "hidden_size": D, "num_hidden_layers": n,
        "layer_types": ["full_attention"] * n,
        "num_attention_heads": H, "num_key_value_heads": r("num_key_value_heads", r.defaults.get("num_key_value_heads", H)),
        "head_dim": head_dim, "norm_type": "rmsnorm", "norm_eps": r("rms_norm_eps"),
        "max_position_embeddings": r("max_position_embeddings"),
        "tie_word_embeddings": r("tie_word_embeddings", False),
        **r.token_id("bos_token_id"), **r.token_id("eos_token_id"), **rope(r),
    }


def sparse_layers(r: Reader) -> list[str]:
    """Qwen-MoE's choice of MoE layers: every decoder_sparse_step-th, minus mlp_only_layers."""
    n, step, dense = r.positive_int("num_hidden_layers"), r.positive_int("decoder_sparse_step", 1), \
        r("mlp_only_layers", [])
    if not isinstance(dense, list) or not all(isinstance(i, int) for i in dense):
        raise ConfigError(f"{r.source}: key 'mlp_only_layers': expected a list of layer indices, found {dense!r}")
    return ["moe" if i not in dense and (i + 1) % step == 0 else "dense" for i in range(n)]


# ---- tensors ---------------------------------------------------------------

PER_EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.(\w+)\.weight$")
IGNORED = re.compile(r"rotary_emb\.inv_freq$")   # buffers some old checkpoints saved


def cogcore_name(family, name: str) -> str:
    """A family's tensor name -> cogcore's (family.RENAMES); an expert keeps its index
    (`...mlp.experts.3.gate_proj.weight`), which `map_tensors` then stacks."""
    for pattern, repl in family.RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def map_tensors(family, tensors: dict[str, np.ndarray], origin: dict[str, str], source: str,
                tied: bool = False):
    """Foreign names -> cogcore names (family.RENAMES), per-expert tensors -> ExpertStack
    (float or quantized, as `cogcore quantize` writes them).

    A family may also list VIEWS, (regex on the cogcore name, function): a view of the
    array in cogcore's layout (a transpose, a reshape), applied after the renames.
    With tied embeddings a saved `lm_head.weight` is dropped, as transformers ties it
    to the embedding when it loads. Returns (tensors, origin) keyed by cogcore names;
    nothing is copied.
    """
    out, where, experts = {}, {}, {}
    views = getattr(family, "VIEWS", ())
    for name, array in tensors.items():
        if IGNORED.search(name) or (tied and name == "lm_head.weight"):
            continue
        new = cogcore_name(family, name)
        array = next((view(array) for pattern, view in views if re.search(pattern, new)), array)
        m = PER_EXPERT.match(new)
        if m:
            experts.setdefault(f"{m[1]}.{m[3]}", {})[int(m[2])] = (array, name)
            continue
        if new in out:
            raise WeightsError(f"{origin.get(name, source)}: tensor '{name}': its cogcore name '{new}' "
                               f"is given twice")
        out[new], where[new] = array, origin.get(name, source)
    for stacked, by_index in experts.items():
        E = max(by_index) + 1
        missing = sorted(set(range(E)) - set(by_index))
        if missing:
            raise WeightsError(f"{source}: expert tensors of '{stacked}': expected experts 0..{E - 1}, "
                               f"found none for expert {missing[0]}")
        parts = [by_index[e] for e in range(E)]
        out[stacked] = ExpertStack([a for a, _ in parts], [n for _, n in parts], source)
        where[stacked] = origin.get(parts[0][1], source)
    return out, where
