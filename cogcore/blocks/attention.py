"""Full and sliding-window grouped-query attention (SPEC 4.2; Vaswani et al., 2017, Eq. 1;
Ainslie et al., 2023 for GQA).

    q = rope(x Wq^T) -> H heads,   k = rope(x Wk^T), v = x Wv^T -> Hkv heads
    o_h = softmax(q_h k_g^T / sqrt(hd)) v_g,   g = h // (H / Hkv)
over the keys at positions 0..t (full) or max(0, t-W+1)..t (sliding, W = sliding_window).

Options of the public families (docs/format.md), applied in this order before RoPE:
    attention_bias:          q = x Wq^T + bq, and likewise k and v       (Qwen2, Qwen2-MoE)
    qk_norm = "projection":  q = rmsnorm(q; q_norm) over all H*hd values (OLMoE)
    qk_norm = "head":        q_h = rmsnorm(q_h; q_norm) per head, [hd]    (Qwen3, Qwen3-MoE)
and the same for k with k_norm (over Hkv*hd values, or per key head).
"""

from __future__ import annotations

import numpy as np

from ..cache import KVCache, RingKV
from ..dtypes import f32
from ..ops import FusedAttentionStep, FusedLinears
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


FUSED_MAX_TOKENS = 8      # chunks up to this long take an ops table's fused attention step (decode)


class AttentionMixer:
    """`full_attention` and `sliding_attention`; the projections are shared with sparse attention."""

    def __init__(self, weights, prefix: str, cfg, ops, layer_type: str = "full_attention"):
        D, H, Hkv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        p = f"{prefix}.self_attn"
        self.wq = weights.take(f"{p}.q_proj.weight", (H * hd, D))
        self.wk = weights.take(f"{p}.k_proj.weight", (Hkv * hd, D))
        self.wv = weights.take(f"{p}.v_proj.weight", (Hkv * hd, D))
        self.wo = weights.take(f"{p}.o_proj.weight", (D, H * hd))
        self.bias = None
        if cfg.attention_bias:
            self.bias = tuple(f32(weights.take(f"{p}.{n}_proj.bias", (rows,)))
                              for n, rows in (("q", H * hd), ("k", Hkv * hd), ("v", Hkv * hd)))
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            per_head = cfg.qk_norm == "head"
            self.q_norm = weights.take(f"{p}.q_norm.weight", (hd if per_head else H * hd,))
            self.k_norm = weights.take(f"{p}.k_norm.weight", (hd if per_head else Hkv * hd,))
            self.norm_eps = cfg.norm_eps
        self.H, self.Hkv, self.hd = H, Hkv, hd
        self.inv_freq = inv_freq(hd, cfg.rope_theta, cfg.rope_scaling, cfg.rope_angles)    # [hd/2]
        self.window = cfg.sliding_window if layer_type == "sliding_attention" else 0
        self.ops = ops
        self.fused_linears = isinstance(ops, FusedLinears)
        self.fused_step = isinstance(ops, FusedAttentionStep)

    def new_state(self):
        shape = (self.Hkv, self.hd)
        return RingKV(self.window, shape) if self.window else KVCache(shape)

    def project(self, x: np.ndarray, positions: np.ndarray):
        """x [T, D] -> rotated q [T, H, hd], rotated k [T, Hkv, hd], v [T, Hkv, hd]."""
        q, k, v = self.projections(x)
        return self.ops.rope(q, positions, self.inv_freq), self.ops.rope(k, positions, self.inv_freq), v

    def projections(self, x: np.ndarray, *more):
        """x [T, D] -> q [T, H, hd], k [T, Hkv, hd], v [T, Hkv, hd] before RoPE, then x W^T for each
        weight W of `more` (sparse attention's gate)."""
        T, ops = x.shape[0], self.ops
        if self.fused_linears:           # the backend's fast path: all in one op
            q, k, v, *extra = ops.linears(x, (self.wq, self.wk, self.wv, *more))
        else:
            q, k, v = ops.linear(x, self.wq), ops.linear(x, self.wk), ops.linear(x, self.wv)
            extra = [ops.linear(x, W) for W in more]
        if self.bias is not None:
            q, k, v = q + self.bias[0], k + self.bias[1], v + self.bias[2]
        if self.qk_norm == "projection":
            q, k = ops.rmsnorm(q, self.q_norm, self.norm_eps), ops.rmsnorm(k, self.k_norm, self.norm_eps)
        elif self.qk_norm == "head":     # one row per (token, head)
            q = ops.rmsnorm(q.reshape(T * self.H, self.hd), self.q_norm, self.norm_eps)
            k = ops.rmsnorm(k.reshape(T * self.Hkv, self.hd), self.k_norm, self.norm_eps)
        return (q.reshape(T, self.H, self.hd), k.reshape(T, self.Hkv, self.hd), v.reshape(T, self.Hkv, self.hd),
                *extra)

    def __call__(self, x: np.ndarray, kv, ctx) -> np.ndarray:
        """x [T, D] normed input; kv the layer's cache; returns [T, D]."""
        if self.fused_step and type(kv) is KVCache and len(x) <= FUSED_MAX_TOKENS:
            return self._fused_step(x, kv, ctx)
        q, k, v = self.project(x, ctx.positions)
        keys, values, k_pos = kv.extend(k, v, ctx.positions)
        o = self.ops.attention(q, keys, values, ctx.positions, k_pos, self.window)
        return self.ops.linear(o.reshape(len(x), -1), self.wo)

    def _fused_step(self, x: np.ndarray, kv: KVCache, ctx) -> np.ndarray:
        """`__call__` of full attention with RoPE, the cache write and the attention in the one op of
        `cogcore.ops.FusedAttentionStep` (decode's fast path; the same step to round-off)."""
        q, k, v = self.projections(x)
        keys, values, n = kv.room(len(x))
        o = self.ops.rope_attend(q, k, v, ctx.positions, self.inv_freq, keys, values, n)
        kv.commit(len(x))
        return self.ops.linear(o.reshape(len(x), -1), self.wo)
