"""Sparse mixture of experts: a top-k-of-E router over SwiGLU experts (SPEC 4.5;
Shazeer et al., 2017, Eqs. 1-3; Fedus et al., 2021; Shazeer, 2020 for SwiGLU).

    p    = softmax(x gate^T)                          over all E experts, float32
    top  = the k largest p per token                  ties to the lower expert index
    wts  = p[top] / sum p[top]   (norm_topk_prob)     else p[top]
    y    = sum_{e in top} wts_e * down_e(silu(gate_e(x)) * up_e(x))
         + sigmoid(x shared_gate^T) * shared(x)       (num_shared_experts = 1)
"""

from __future__ import annotations

import numpy as np

from .attention import softmax
from .ffn import swiglu
from .linear import linear
from .rwkv7 import sigmoid


def route(logits: np.ndarray, k: int, norm_topk: bool) -> tuple[np.ndarray, np.ndarray]:
    """logits [T, E] -> chosen experts [T, k] (best first) and their weights [T, k]."""
    p = softmax(logits)
    top = np.argsort(-p, axis=-1, kind="stable")[:, :k]            # stable: ties to the lower index
    wts = np.take_along_axis(p, top, axis=-1)
    if norm_topk:
        wts = wts / wts.sum(axis=-1, keepdims=True)
    return top, wts


def moe(x, router, gate_proj, up_proj, down_proj, k: int, norm_topk: bool, linear=linear):
    """x [T, D]; router [E, D]; experts gate/up [E, F, D], down [E, D, F].

    Tokens are grouped by expert, so each expert runs once on all the tokens it got.
    Returns y [T, D] and the number of tokens each expert received [E]. `linear`: the
    reference's, or `linear_int8` (int8 activations).
    """
    top, wts = route(linear(x, router), k, norm_topk)              # [T, k], [T, k]
    counts = np.bincount(top.ravel(), minlength=router.shape[0])
    return grouped_experts(x, top, wts, counts, gate_proj, up_proj, down_proj, linear), counts


def grouped_experts(x, top, wts, counts, gate_proj, up_proj, down_proj, linear) -> np.ndarray:
    """sum over chosen experts of wts * swiglu_e(x), each expert run once on the tokens it got
    (top, wts [T, k] from `route`, counts [E]); `linear` the backend's."""
    y = np.zeros_like(x)
    for e in np.flatnonzero(counts):
        rows, slot = np.nonzero(top == e)                          # tokens that chose e
        out = swiglu(x[rows], gate_proj[e], up_proj[e], down_proj[e], linear)
        y[rows] += wts[rows, slot][:, None] * out                 # rows are distinct: top-k picks e once
    return y


class MoE:
    """`moe`: routed experts stacked per projection [E, ...], plus an optional shared expert."""

    def __init__(self, weights, prefix: str, cfg, ops):
        D, E, F = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
        p = f"{prefix}.mlp"
        self.router = weights.take(f"{p}.gate.weight", (E, D))
        self.gate_proj = weights.take(f"{p}.experts.gate_proj", (E, F, D))
        self.up_proj = weights.take(f"{p}.experts.up_proj", (E, F, D))
        self.down_proj = weights.take(f"{p}.experts.down_proj", (E, D, F))
        self.k, self.norm_topk = cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.shared = None
        if cfg.num_shared_experts:
            Fs = cfg.shared_expert_intermediate_size
            s = f"{p}.shared_expert"
            self.shared = (weights.take(f"{s}.gate_proj.weight", (Fs, D)),
                           weights.take(f"{s}.up_proj.weight", (Fs, D)),
                           weights.take(f"{s}.down_proj.weight", (D, Fs)))
            self.shared_gate = weights.take(f"{p}.shared_expert_gate.weight", (1, D))
        self.ops = ops

    def new_state(self):
        return None

    def __call__(self, x: np.ndarray, state, ctx) -> np.ndarray:
        ops = self.ops
        y, counts = ops.moe(x, self.router, self.gate_proj, self.up_proj, self.down_proj,
                            self.k, self.norm_topk)
        ctx.expert_counts[ctx.layer] = counts
        if self.shared is not None:
            y = y + sigmoid(ops.linear(x, self.shared_gate)) * swiglu(x, *self.shared, ops.linear)
        return y
