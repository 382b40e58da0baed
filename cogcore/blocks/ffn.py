"""The two non-expert FFNs (SPEC 4.6).

    dense (SwiGLU; Shazeer, 2020, Eq. 6):   down(silu(gate(x)) * up(x))
    channel_mix (RWKV-7, Peng et al., 2025, Section 4.3):
        k = x + (x_prev - x) * x_k;   out = value(relu(key(k)) ** 2)
"""

from __future__ import annotations

import numpy as np

from ..cache import ShiftState
from ..dtypes import f32
from .rwkv7 import token_shift


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x) (Elfwing et al., 2018; Hendrycks & Gimpel's SiLU/swish)."""
    return x / (1.0 + np.exp(-x))


def swiglu(x: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray, linear) -> np.ndarray:
    """down(silu(gate(x)) * up(x)); x [T, D], gate/up [F, D], down [D, F]; `linear` the backend's."""
    return linear(silu(linear(x, gate)) * linear(x, up), down)


class DenseFFN:
    """`dense`: one SwiGLU MLP."""

    def __init__(self, weights, prefix: str, cfg, ops):
        D, Fd, p = cfg.hidden_size, cfg.intermediate_size, f"{prefix}.mlp"
        self.gate = weights.take(f"{p}.gate_proj.weight", (Fd, D))
        self.up = weights.take(f"{p}.up_proj.weight", (Fd, D))
        self.down = weights.take(f"{p}.down_proj.weight", (D, Fd))
        self.ops = ops

    def new_state(self):
        return None

    def __call__(self, x: np.ndarray, state, ctx) -> np.ndarray:
        return swiglu(x, self.gate, self.up, self.down, self.ops.linear)


class ChannelMix:
    """`channel_mix`: RWKV's token-shifted squared-ReLU MLP."""

    def __init__(self, weights, prefix: str, cfg, ops):
        D, Fd, p = cfg.hidden_size, cfg.intermediate_size, f"{prefix}.mlp"
        self.x_k = weights.take(f"{p}.x_k", (D,))
        self.key = weights.take(f"{p}.key.weight", (Fd, D))
        self.value = weights.take(f"{p}.value.weight", (D, Fd))
        self.ops = ops

    def new_state(self) -> ShiftState:
        return ShiftState(len(self.x_k))

    def __call__(self, x: np.ndarray, st: ShiftState, ctx) -> np.ndarray:
        k = x + (token_shift(x, st.x_prev) - x) * f32(self.x_k)
        st.x_prev = x[-1].copy()
        return self.ops.linear(np.maximum(self.ops.linear(k, self.key), 0) ** 2, self.value)
