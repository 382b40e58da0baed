"""Full and sliding-window grouped-query attention (SPEC 4.2; Vaswani et al., 2017, Eq. 1;
Ainslie et al., 2023 for GQA).

    q = rope(x Wq^T) -> H heads,   k = rope(x Wk^T), v = x Wv^T -> Hkv heads
    o_h = softmax(q_h k_g^T / sqrt(hd)) v_g,   g = h // (H / Hkv)
over the keys at positions 0..t (full) or max(0, t-W+1)..t (sliding, W = sliding_window).
"""

from __future__ import annotations

import numpy as np

from ..cache import KVCache, RingKV
from .rope import inv_freq


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
              window: int = 0) -> np.ndarray:
    """Causal GQA softmax attention with an optional sliding window.

    q [T, H, hd]; k, v [S, Hkv, hd]; q_pos [T], k_pos [S] absolute positions.
    A key is visible to a query when k_pos <= q_pos and (window == 0 or k_pos > q_pos - window).
    Returns [T, H, hd] float32. Every query sees at least its own key.
    """
    T, H, hd = q.shape
    Hkv = k.shape[1]
    visible = k_pos[None, :] <= q_pos[:, None]                            # [T, S]
    if window:
        visible &= k_pos[None, :] > q_pos[:, None] - window
    qg = q.reshape(T, Hkv, H // Hkv, hd).transpose(1, 2, 0, 3)             # [Hkv, H/Hkv, T, hd]
    scores = qg @ k.transpose(1, 2, 0)[:, None] / np.float32(np.sqrt(hd))  # [Hkv, H/Hkv, T, S]
    scores = np.where(visible, scores, -np.inf)
    p = softmax(scores)
    o = p @ v.transpose(1, 0, 2)[:, None]                                  # [Hkv, H/Hkv, T, hd]
    return o.transpose(2, 0, 1, 3).reshape(T, H, hd)


def softmax(s: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; rows of all -inf are not allowed (callers never make them)."""
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class AttentionMixer:
    """`full_attention` and `sliding_attention`; the projections are shared with sparse attention."""

    def __init__(self, weights, prefix: str, cfg, ops, layer_type: str = "full_attention"):
        D, H, Hkv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        p = f"{prefix}.self_attn"
        self.wq = weights.take(f"{p}.q_proj.weight", (H * hd, D))
        self.wk = weights.take(f"{p}.k_proj.weight", (Hkv * hd, D))
        self.wv = weights.take(f"{p}.v_proj.weight", (Hkv * hd, D))
        self.wo = weights.take(f"{p}.o_proj.weight", (D, H * hd))
        self.H, self.Hkv, self.hd = H, Hkv, hd
        self.inv_freq = inv_freq(hd, cfg.rope_theta)                       # [hd/2] float64
        self.window = cfg.sliding_window if layer_type == "sliding_attention" else 0
        self.ops = ops

    def new_state(self):
        shape = (self.Hkv, self.hd)
        return RingKV(self.window, shape) if self.window else KVCache(shape)

    def project(self, x: np.ndarray, positions: np.ndarray):
        """x [T, D] -> rotated q [T, H, hd], rotated k [T, Hkv, hd], v [T, Hkv, hd]."""
        T, ops = x.shape[0], self.ops
        q = ops.linear(x, self.wq).reshape(T, self.H, self.hd)
        k = ops.linear(x, self.wk).reshape(T, self.Hkv, self.hd)
        v = ops.linear(x, self.wv).reshape(T, self.Hkv, self.hd)
        return ops.rope(q, positions, self.inv_freq), ops.rope(k, positions, self.inv_freq), v

    def __call__(self, x: np.ndarray, kv, ctx) -> np.ndarray:
        """x [T, D] normed input; kv the layer's cache; returns [T, D]."""
        q, k, v = self.project(x, ctx.positions)
        keys, values, k_pos = kv.extend(k, v, ctx.positions)
        o = self.ops.attention(q, keys, values, ctx.positions, k_pos, self.window)
        return self.ops.linear(o.reshape(len(x), -1), self.wo)
