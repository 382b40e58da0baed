"""Recurrent memory: the RWKV-7 "Goose" time mix (SPEC 4.4; Peng et al., 2025,
"RWKV-7 Goose with Expressive Dynamic State Evolution", Section 4, Eqs. 3-19), as in
the reference inference code (`rwkv` package, RWKV_x070; BlinkDL/RWKV-LM RWKV-v7).

Per token, with x the normed input and x_prev the previous token's (zeros at first):

    xx = x_prev - x;    x* = x + xx * x_*                       token shift (Eq. 3)
    r, k, v = receptance(xr), key(xk), value(xv)
    w = exp(-exp(-0.5) * sigmoid(w0 + tanh(xw w1) w2))           decay in (0.545, 1) (Eq. 11)
    a = sigmoid(a0 + (xa a1) a2)                                 in-context learning rate (Eq. 6)
    g = sigmoid(xg g1) g2                                        output gate
    kk = l2_normalize(k * k_k) per head;  k = k * (1 + (a - 1) * k_a)
    v = v + (v_first - v) * sigmoid(v0 + (xv v1) v2)             value residual (not in the first layer)
    S = S diag(w) + (S (-kk)) (kk * a)^T + v k^T                 per head, S [N, N] value x key (Eq. 13)
    y = S r;  y = group_norm(y) * ln_x.w + ln_x.b + (sum(r * k * r_k) per head) * v;  out = output(y * g)

Options for fla's layout (docs/format.md 1.1): the group norm's eps (`rwkv_group_norm_eps`,
64e-5 in the reference; fla uses head_size * norm_eps), the l2 normalisation of kk
(`rwkv_kk_norm`), and a first layer without the v0/v1/v2 it never uses (`rwkv_first_v_lora`).
"""

from __future__ import annotations

import numpy as np

from ..cache import RecurrentState
from ..dtypes import f32
from ..ops import FusedRecurrent

DECAY_SCALE = np.float32(np.exp(-0.5))   # 0.606531 in the reference
L2_EPS = np.float32(1e-12)      # "clamp": kk / max(|kk|, 1e-12), torch's F.normalize (the reference)
L2_EPS_INSIDE = np.float32(1e-6)  # "epsilon": kk / sqrt(|kk|^2 + 1e-6), fla's fused l2norm kernel
FUSED_MAX_TOKENS = 8      # chunks up to this long take an ops table's fused path (decode); longer
                          # ones (prefill) batch the low-rank products through BLAS as written here


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def token_shift(x: np.ndarray, x_prev: np.ndarray) -> np.ndarray:
    """x [T, D], x_prev [D] (the token before the chunk) -> the previous token of each row [T, D]."""
    return np.concatenate([x_prev[None, :], x[:-1]], axis=0)


def wkv7(r, w, k, v, kk, a, S):
    """The RWKV-7 state recurrence, one token at a time (Eq. 13).

    r, w, k, v, kk, a [T, Hr, N]; S [Hr, N, N] float32, S[h, i, j] pairs value i with key j.
    Returns y [T, Hr, N] and the final state (S is updated in place).
    """
    y = np.empty_like(r)
    for t in range(len(r)):
        sa = S @ -kk[t][:, :, None]                                 # [Hr, N, 1]  S (-kk)
        S *= w[t][:, None, :]                                       # decay along the key axis
        S += sa @ (kk[t] * a[t])[:, None, :] + v[t][:, :, None] @ k[t][:, None, :]
        y[t] = (S @ r[t][:, :, None])[:, :, 0]
    return y, S


def l2_normalize(x: np.ndarray, kind: str) -> np.ndarray:
    """x [..., N] over the last axis, as `rwkv_kk_norm` says (module constants above)."""
    if kind == "clamp":
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), L2_EPS)
    return x / np.sqrt((x * x).sum(axis=-1, keepdims=True) + L2_EPS_INSIDE)


def group_norm(y: np.ndarray, w: np.ndarray, b: np.ndarray, eps: np.float32) -> np.ndarray:
    """y [T, Hr, N]: normalise each head's N channels (biased variance), then scale per channel."""
    mu = y.mean(axis=-1, keepdims=True)
    var = ((y - mu) ** 2).mean(axis=-1, keepdims=True)
    T, Hr, N = y.shape
    return ((y - mu) / np.sqrt(var + eps)).reshape(T, Hr * N) * f32(w) + f32(b)


class RecurrentMixer:
    """`recurrent`: RWKV-7 time mixing with a constant-size state per head."""

    def __init__(self, weights, prefix: str, cfg, ops, first: bool):
        D, N = cfg.hidden_size, cfg.rwkv_head_size
        self.Hr, self.N, self.first = D // N, N, first
        self.group_norm_eps, self.kk_norm = np.float32(cfg.rwkv_group_norm_eps), cfg.rwkv_kk_norm
        p = f"{prefix}.rwkv"

        # the small tensors are widened to float32 once here, not on every call
        def vec(name):
            return f32(weights.take(f"{p}.{name}", (D,)))

        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (
            vec(n) for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
        self.w0, self.a0, self.k_k, self.k_a = (vec(n) for n in ("w0", "a0", "k_k", "k_a"))
        ranks = {"w": cfg.rwkv_decay_rank, "a": cfg.rwkv_a_rank, "v": cfg.rwkv_v_rank, "g": cfg.rwkv_gate_rank}
        if first and not cfg.rwkv_first_v_lora:     # the value residual starts here: no v0, v1, v2
            del ranks["v"]
        else:
            self.v0 = vec("v0")
        lora = {}
        for name, rank in ranks.items():
            lora[name] = (f32(weights.take(f"{p}.{name}1", (D, rank))),
                          f32(weights.take(f"{p}.{name}2", (rank, D))))
        self.lora = lora
        self.r_k = f32(weights.take(f"{p}.r_k", (self.Hr, N)))
        self.W_r, self.W_k, self.W_v, self.W_o = (
            weights.take(f"{p}.{n}.weight", (D, D)) for n in ("receptance", "key", "value", "output"))
        self.ln_w, self.ln_b = vec("ln_x.weight"), vec("ln_x.bias")
        self.ops = ops
        self.fused = isinstance(ops, FusedRecurrent)
        if self.fused:                      # the fused ops' arguments, gathered once
            self.mix = np.stack([self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g])   # [6, D]
            # the low-rank pairs as stored when bfloat16 (the kernel widens in registers: half the bytes)
            stored = {name: tuple(weights.take(f"{p}.{name}{i}", A.shape) for i, A in zip("12", pair))
                      for name, pair in lora.items()}
            as_read = stored if all(A.dtype == np.uint16 for pair in stored.values() for A in pair) else lora
            self.lora_pairs = tuple(None if (name == "v" and first) else as_read[name] for name in "wavg")

    def new_state(self) -> RecurrentState:
        return RecurrentState(self.Hr * self.N, self.Hr, self.N)

    def _lora(self, x: np.ndarray, name: str, inner=None) -> np.ndarray:
        """x @ A (through `inner`, if given) @ B, the reference's plain low-rank matrices."""
        A, B = self.lora[name]
        h = x @ A
        return (inner(h) if inner else h) @ B

    def __call__(self, x: np.ndarray, st: RecurrentState, ctx) -> np.ndarray:
        """x [T, D] normed input -> [T, D]; advances x_prev and S; sets or reads ctx.v_first."""
        if self.fused and len(x) <= FUSED_MAX_TOKENS:
            return self._fused_step(x, st, ctx)
        ops, T, Hr, N = self.ops, len(x), self.Hr, self.N
        xx = token_shift(x, st.x_prev) - x                               # [T, D]
        st.x_prev = x[-1].copy()
        xr, xw, xk, xv, xa, xg = (x + xx * m for m in
                                  (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))

        r = ops.linear(xr, self.W_r)                                     # [T, D]
        k = ops.linear(xk, self.W_k)
        v = ops.linear(xv, self.W_v)
        w = np.exp(-DECAY_SCALE * sigmoid(self.w0 + self._lora(xw, "w", np.tanh)))
        a = sigmoid(self.a0 + self._lora(xa, "a"))
        g = self._lora(xg, "g", sigmoid)

        kk = (k * self.k_k).reshape(T, Hr, N)
        kk = l2_normalize(kk, self.kk_norm)
        k = k * (1 + (a - 1) * self.k_a)
        if self.first:
            ctx.v_first = v
        else:
            v = v + (ctx.v_first - v) * sigmoid(self.v0 + self._lora(xv, "v"))

        heads = (T, Hr, N)
        y, st.S = ops.wkv7(r.reshape(heads), w.reshape(heads), k.reshape(heads), v.reshape(heads),
                           kk, a.reshape(heads), st.S)
        y = group_norm(y, self.ln_w, self.ln_b, self.group_norm_eps)     # [T, D]
        bonus = (r * k * self.r_k.reshape(-1)).reshape(heads).sum(-1, keepdims=True)  # [T, Hr, 1]
        y = y + (bonus * v.reshape(heads)).reshape(T, -1)
        return ops.linear(y * g, self.W_o)

    def _fused_step(self, x: np.ndarray, st: RecurrentState, ctx) -> np.ndarray:
        """`__call__` as the one op `rwkv7_step` of `cogcore.ops.FusedRecurrent`, its projections included
        (decode's fast path; the same step to round-off)."""
        v0, v_first = (None, None) if self.first else (self.v0, ctx.v_first)
        out, v, st.S = self.ops.rwkv7_step(x, st.x_prev, self.mix, self.lora_pairs, self.w0, self.a0, v0,
                                           (self.W_r, self.W_k, self.W_v, self.W_o), v_first, self.k_k, self.k_a,
                                           self.r_k, self.ln_w, self.ln_b, self.group_norm_eps, self.kk_norm, st.S)
        st.x_prev = x[-1].copy()
        if self.first:
            ctx.v_first = v
        return out
