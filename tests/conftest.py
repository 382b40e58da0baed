"""Shared test helpers: small configs and models built from them.

    from conftest import small_config, build_model

`small_config(**overrides)` is a valid cogcore config dict with odd sizes and every
layer kind available; `build_model(cfg, seed=0, dtype="float32", backend="numpy")`
returns (model, tensors) for a config dict or Config, with random weights from
`cogcore.create.random_weights`. The `tiny_dir` fixture is a `cogcore init --preset
tiny` directory made once per session.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))   # so that tests can `import naive`, `import conftest`
# two Numba threads even on a one-core runner, so that the parallel kernel variants really run in parallel
os.environ.setdefault("NUMBA_NUM_THREADS", str(max(2, os.cpu_count() or 1)))

import cogcore                                   # noqa: E402
from cogcore.config import Config               # noqa: E402
from cogcore.create import init_model, random_weights  # noqa: E402
from cogcore.model import Model                  # noqa: E402
from cogcore.weights import Weights              # noqa: E402

# Odd sizes on purpose: D 30 (3 RWKV heads of 10), V 37, H 6 over Hkv 3 of hd 6, E 5 experts.
SMALL = {
    "vocab_size": 37, "hidden_size": 30, "num_hidden_layers": 4,
    "layer_types": ["recurrent", "sparse_attention", "full_attention", "sliding_attention"],
    "mlp_types": ["moe", "dense", "channel_mix", "moe"],
    "norm_type": "rmsnorm", "norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
    "max_position_embeddings": 512,
    "num_attention_heads": 6, "num_key_value_heads": 3, "head_dim": 6, "rope_theta": 10000.0,
    "sliding_window": 5,
    "nsa_compress_block": 4, "nsa_compress_stride": 2, "nsa_compress_hidden": 7,
    "nsa_select_block": 4, "nsa_select_count": 4, "nsa_window": 6,
    "rwkv_head_size": 10, "rwkv_decay_rank": 5, "rwkv_a_rank": 3, "rwkv_v_rank": 4, "rwkv_gate_rank": 7,
    "num_experts": 5, "num_experts_per_tok": 2, "moe_intermediate_size": 9,
    "norm_topk_prob": True, "num_shared_experts": 0, "shared_expert_intermediate_size": 0,
    "intermediate_size": 11,
}


def small_config(**overrides) -> dict:
    """A copy of SMALL with some keys changed (a dict: validate with Config.from_dict)."""
    cfg = {k: (list(v) if isinstance(v, list) else v) for k, v in SMALL.items()}
    cfg.update(overrides)
    return cfg


def build_model(cfg, seed: int = 0, dtype: str = "float32", backend: str = "numpy",
                tensors: dict | None = None):
    """(Model, tensors) for a config dict or Config; `tensors` overrides the random weights."""
    config = cfg if isinstance(cfg, Config) else Config.from_dict(cfg)
    if tensors is None:
        tensors = random_weights(config, seed, dtype)
    weights = Weights(tensors)
    model = Model(config, weights, backend=backend)
    weights.check_all_used()
    return model, tensors


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A `tiny` preset model directory (float32, seed 0), shared by the session."""
    path = tmp_path_factory.mktemp("tiny") / "cogcore-tiny"
    init_model(path, cogcore.preset("tiny"), dtype="float32", seed=0)
    return str(path)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
