"""Shared test helpers: small configs and models built from them.

    from conftest import small_config, build_model

`small_config(**overrides)` is a valid cogcore config dict with odd sizes and every
layer kind available; `build_model(cfg, seed=0, dtype="float32", backend="numpy")`
returns (model, tensors) for a config dict or Config, with random weights from
`cogcore.create.random_weights`. The `tiny_dir` fixture is a `cogcore init --preset
tiny` directory made once per session. `RoundingWatch` tells a test comparing int8-activation
runs of the two backends when a rounding tie may have parted them.
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
from cogcore.blocks import linear as linear_module  # noqa: E402
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


class RoundingWatch:
    """Whether the NumPy reference's int8 activations came near a rounding tie, step by step.

    With int8 activations each backend rounds x / d to an integer, d = max|x| / 127 over a block of 32,
    and d to float16. A value (or a block's d) that the two backends compute with different round-off and
    that sits on a rounding half goes one way on one backend and the other way on the other: a step of d in
    one value (or of one float16 ulp in d), which no kernel bug causes, and which the attention or a
    recurrent state carries to later tokens (docs/quantization.md, "Numba against NumPy"). As a context
    manager this watches what `ReferenceInt8Ops` rounds with (`cogcore.blocks.linear.quantize_activations`).
    `start(*given)` begins a step whose inputs `given` both backends receive as the same arrays (rows of
    them round alike on both). `tolerance(tight)` then gives `tight` if no other value rounded since came
    within NEAR of a half of x / d, and no d within a relative NEAR_D of a half float16 ulp (the backends'
    round-off moves x / d by less than 1e-5, d by a few float32 ulps: they must agree to round-off), else LOOSE
    (one flip moves an output by about 1e-3, a wrong block, scale, row or expert by 2e-2 or more), and
    counts the step in `tight` or `loose`.
    """

    NEAR, NEAR_D, LOOSE = 1e-4, 1e-6, 1e-2

    def __init__(self):
        self.tight = self.loose = 0
        self.start()

    def __enter__(self):
        self._patch = pytest.MonkeyPatch()
        self._patch.setattr(linear_module, "quantize_activations", self._quantize)
        return self

    def __exit__(self, *exc):
        self._patch.undo()

    def start(self, *given: np.ndarray) -> None:
        self.given = {row.tobytes() for g in given for row in g.reshape(-1, g.shape[-1])}
        self.ties = 0

    def _quantize(self, x):
        rows = x.reshape(-1, x.shape[-1])
        made = np.array([row.tobytes() not in self.given for row in rows], bool)    # values made in the step
        b = np.abs(rows[made].reshape(-1, 32).astype(np.float64))
        d = b.max(axis=1) / 127
        v = b / np.where(d > 0, d, 1)[:, None]                                        # x / d
        d16 = d.astype(np.float16)
        other = np.nextafter(d16, np.where(d > d16, np.inf, -np.inf).astype(np.float16))   # d's float16 neighbours
        half_way = (d16.astype(np.float64) + other) / 2
        self.ties += (np.abs(v - np.floor(v) - 0.5) < self.NEAR).sum() + (np.abs(d - half_way) < self.NEAR_D * d).sum()
        return self._original(x)

    _original = staticmethod(linear_module.quantize_activations)

    def tolerance(self, tight: float) -> float:
        self.tight += self.ties == 0
        self.loose += self.ties > 0
        return tight if self.ties == 0 else self.LOOSE
