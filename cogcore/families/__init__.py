"""Public model families: Hugging Face directories loaded as they are.

One module per family (as mlx-lm keeps one file per architecture), each two small,
data-like pieces that a reader can check against the family's transformers code:

    config(raw, source) -> dict    the family's config.json -> cogcore config keys, with
                                   the defaults its transformers config class uses
    RENAMES                        (regex, replacement) pairs: its tensor names -> cogcore's

(and, where the layouts differ, VIEWS: transposes and reshapes of the mapped arrays).
`load_config` and `map_tensors` apply them; per-expert tensors
(`...experts.{e}.gate_proj.weight`) are then presented as cogcore's stacked
`...experts.gate_proj` [E, F, D] by a lazy `ExpertStack`, so that nothing is copied.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..errors import ConfigError
from . import llama, mixtral, olmoe, qwen2, qwen2_moe, qwen3, qwen3_moe, rwkv7
from .hf import map_tensors

FAMILIES = {m.MODEL_TYPE: m for m in (llama, qwen2, qwen3, mixtral, qwen2_moe, qwen3_moe, olmoe, rwkv7)}

__all__ = ["FAMILIES", "load_config", "map_tensors"]


def load_config(raw: Any, source: str) -> Config:
    """A cogcore Config from a config.json of cogcore's own or of a public family."""
    model_type = raw.get("model_type", "cogcore") if isinstance(raw, dict) else "cogcore"
    if model_type == "cogcore":
        return Config.from_dict(raw, source)
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        raise ConfigError(f"{source}: key 'model_type': expected cogcore or one of the supported "
                          f"families ({', '.join(FAMILIES)}), found {model_type!r}")
    return Config.from_dict({**family.config(raw, source), "family": model_type}, source)


def family_of(config: Config):
    """The family module of a config, or None for cogcore's own models."""
    return FAMILIES.get(config.family)
