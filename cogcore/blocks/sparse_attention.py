"""Sparse hierarchical attention: Native Sparse Attention made exact (SPEC 4.3;
Yuan et al., 2025, "Native Sparse Attention", Sections 3.3.1-3.3.3, Eqs. 5, 7-12).

Three branches read the same rotated keys and values of one kv head g, and gates mix them:

    compressed (Eq. 7):  kc_i = fc2(silu(fc1(flatten(K[i*s : i*s+l] + pos))))   block i visible when i*s+l-1 <= t
                         p_h = softmax_i(q_h . kc_i / sqrt(hd)),  o_cmp_h = sum_i p_h[i] vc_i
    selected (Eqs. 8-11): score_j = sum_{h in g} sum_i p_h[i] * overlap(i, j) / s      over blocks [j*l', (j+1)*l')
                         keep block 0, the query's block and the one before it, plus the n-3 best others
                         o_slc_h = softmax attention over positions <= t in the kept blocks
    window:              o_win_h = softmax attention over positions max(0, t-w+1) .. t
    gates (Eq. 5):       G = sigmoid(x gate_proj^T) as [3, H];  o_h = G0 o_cmp + G1 o_slc + G2 o_win

(l, s, l', n, w) = (nsa_compress_block, nsa_compress_stride, nsa_select_block,
nsa_select_count, nsa_window). The paper's Eq. 9 indexes backwards as printed; the
overlap form above is what it means: with l=32, s=16, l'=64 a selection block weighs
its compressed neighbours 1, 2, 2, 2, 1.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..cache import SparseKV
from ..dtypes import f32
from ..ops import FusedSparseStep
from .attention import FUSED_MAX_TOKENS, AttentionMixer, softmax
from .ffn import silu
from .linear import linear as reference_linear


class NSAShape(NamedTuple):
    block: int          # l: compression block length
    stride: int         # s: compression stride
    select_block: int   # l': selection block length
    select_count: int   # n: blocks kept per query and kv group
    window: int         # w: sliding window of the third branch


def n_complete_blocks(length: int, shape: NSAShape) -> int:
    """How many compression blocks lie inside positions 0..length-1."""
    return (length - shape.block) // shape.stride + 1 if length >= shape.block else 0


def compress(X: np.ndarray, first: int, last: int, pos: np.ndarray, fc1: np.ndarray,
             fc2: np.ndarray, shape: NSAShape, linear=reference_linear) -> np.ndarray:
    """Compressed tokens of blocks first..last-1 (SPEC 4.3 step 1).

    X [S, Hkv, hd] rotated keys (or values); pos [l, hd]; fc1 [hc, l*hd]; fc2 [hd, hc].
    Returns [last-first, Hkv, hd]. `linear` is the backend's (the Numba one widens
    stored weights a row at a time).
    """
    l, s = shape.block, shape.stride
    starts = np.arange(first, last) * s
    blocks = X[starts[:, None] + np.arange(l)[None, :]]                     # [nb, l, Hkv, hd]
    blocks = blocks + f32(pos)[None, :, None, :]
    nb, _, Hkv, hd = blocks.shape
    flat = blocks.transpose(0, 2, 1, 3).reshape(nb, Hkv, l * hd)          # position-major per head
    return linear(silu(linear(flat, fc1)), fc2)                             # [nb, Hkv, hd]


def overlap(n_cmp: int, n_sel: int, shape: NSAShape) -> np.ndarray:
    """[n_cmp, n_sel] number of positions compression block i and selection block j share."""
    i0 = np.arange(n_cmp)[:, None] * shape.stride
    j0 = np.arange(n_sel)[None, :] * shape.select_block
    shared = np.minimum(i0 + shape.block, j0 + shape.select_block) - np.maximum(i0, j0)
    return np.maximum(shared, 0).astype(np.float32)


def select_blocks(scores: np.ndarray, t: int, shape: NSAShape) -> np.ndarray:
    """Indices (ascending) of the selection blocks kept for a query at position t (SPEC 4.3 step 4).

    scores [floor(t/l') + 1]: one per candidate block.
    """
    n_cand, n = len(scores), shape.select_count
    if n_cand <= n:
        return np.arange(n_cand)
    cur = t // shape.select_block
    forced = [0, cur - 1, cur]
    rest = np.delete(np.arange(n_cand), forced)
    best = rest[np.argsort(-scores[rest], kind="stable")[:n - 3]]   # stable: ties to the lower index
    return np.sort(np.concatenate([forced, best]))


def nsa_attention(q: np.ndarray, K: np.ndarray, V: np.ndarray, kc: np.ndarray, vc: np.ndarray,
                  q_pos: np.ndarray, shape: NSAShape):
    """The three branches for every query of a chunk (SPEC 4.3 steps 2-6), one query at a time.

    q [T, H, hd]; K, V [S, Hkv, hd] with K[p] the key at position p (S > max(q_pos));
    kc, vc [B, Hkv, hd] compressed blocks (at least those visible to the last query).
    Returns o_cmp, o_slc, o_win [T, H, hd] and the kept blocks [T, Hkv, n] (-1 pads).
    """
    T, H, hd = q.shape
    Hkv = K.shape[1]
    G = H // Hkv
    scale = np.float32(1.0 / np.sqrt(hd))
    o_cmp, o_slc, o_win = (np.zeros((T, H, hd), np.float32) for _ in range(3))
    kept = np.full((T, Hkv, shape.select_count), -1, np.int64)
    for ti, t in enumerate(int(p) for p in q_pos):
        n_vis = n_complete_blocks(t + 1, shape)
        n_cand = t // shape.select_block + 1
        weight = overlap(n_vis, n_cand, shape) / np.float32(shape.stride)   # [n_vis, n_cand]
        window = np.arange(max(0, t - shape.window + 1), t + 1)
        for g in range(Hkv):
            heads = slice(g * G, (g + 1) * G)
            qg = q[ti, heads]                                              # [G, hd]
            if n_vis:
                p = softmax(qg @ kc[:n_vis, g].T * scale)                  # [G, n_vis]
                o_cmp[ti, heads] = p @ vc[:n_vis, g]
                scores = p.sum(axis=0) @ weight                            # [n_cand]
            else:
                scores = np.zeros(n_cand, np.float32)
            blocks = select_blocks(scores, t, shape)
            kept[ti, g, :len(blocks)] = blocks
            starts = blocks * shape.select_block
            positions = (starts[:, None] + np.arange(shape.select_block)[None, :]).ravel()
            positions = positions[positions <= t]
            o_slc[ti, heads] = _attend(qg, K[positions, g], V[positions, g], scale)
            o_win[ti, heads] = _attend(qg, K[window, g], V[window, g], scale)
    return o_cmp, o_slc, o_win, kept


def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: np.float32) -> np.ndarray:
    """q [G, hd] over k, v [S, hd] -> [G, hd]."""
    return softmax(q @ k.T * scale) @ v


class SparseAttentionMixer(AttentionMixer):
    """`sparse_attention`: the q/k/v/o projections and RoPE of attention, NSA in between."""

    def __init__(self, weights, prefix: str, cfg, ops):
        super().__init__(weights, prefix, cfg, ops)
        p, l, hd, hc = f"{prefix}.self_attn", cfg.nsa_compress_block, cfg.head_dim, cfg.nsa_compress_hidden
        self.shape = NSAShape(l, cfg.nsa_compress_stride, cfg.nsa_select_block,
                              cfg.nsa_select_count, cfg.nsa_window)
        self.compress_k, self.compress_v = (
            (weights.take(f"{p}.{c}.pos", (l, hd)),
             weights.take(f"{p}.{c}.fc1.weight", (hc, l * hd)),
             weights.take(f"{p}.{c}.fc2.weight", (hd, hc)))
            for c in ("compress_k", "compress_v"))
        self.w_gate = weights.take(f"{p}.gate_proj.weight", (3 * self.H, cfg.hidden_size))
        self.fused_sparse_step = isinstance(ops, FusedSparseStep) and self.bias is None and not self.qk_norm

    def new_state(self) -> SparseKV:
        return SparseKV((self.Hkv, self.hd))

    def __call__(self, x: np.ndarray, st: SparseKV, ctx) -> np.ndarray:
        """x [T, D] normed input -> [T, D]; appends to the cache and compresses finished blocks."""
        T, ops = len(x), self.ops
        if self.fused_sparse_step and T <= FUSED_MAX_TOKENS and st.kc.n == n_complete_blocks(st.kv.k.n + T, self.shape):
            return self._fused_step(x, st, ctx)      # (no block completes: nothing to compress)
        q, k, v, gate = self.projections(x, self.w_gate)
        q, k = ops.rope(q, ctx.positions, self.inv_freq), ops.rope(k, ctx.positions, self.inv_freq)
        K, V, _ = st.kv.extend(k, v, ctx.positions)
        first, last = st.kc.n, n_complete_blocks(len(K), self.shape)
        if last > first:   # a block is compressed as soon as its last position arrives
            st.kc.append(ops.nsa_compress(K, first, last, *self.compress_k, self.shape))
            st.vc.append(ops.nsa_compress(V, first, last, *self.compress_v, self.shape))
        o_cmp, o_slc, o_win, kept = ops.nsa_attention(q, K, V, st.kc.view(), st.vc.view(),
                                                      ctx.positions, self.shape)
        gate = ops.sigmoid(gate).reshape(T, 3, self.H, 1)              # sigmoid(x w_gate^T) as [T, 3, H, 1]
        o = gate[:, 0] * o_cmp + gate[:, 1] * o_slc + gate[:, 2] * o_win    # [T, H, hd]
        ctx.selected_blocks[ctx.layer] = kept
        return ops.linear(o.reshape(T, -1), self.wo)

    def _fused_step(self, x: np.ndarray, st: SparseKV, ctx) -> np.ndarray:
        """`__call__` as the one op `nsa_step` of `cogcore.ops.FusedSparseStep`: the projections, RoPE, the
        cache write, NSA, the gating and the output projection (decode's fast path, for a step that
        compresses no block; the same step to round-off)."""
        K, V, n = st.kv.room(len(x))
        out, kept = self.ops.nsa_step(x, (self.wq, self.wk, self.wv, self.w_gate, self.wo), ctx.positions,
                                      self.inv_freq, K, V, n, st.kc.view(), st.vc.view(), self.shape)
        st.kv.commit(len(x))
        ctx.selected_blocks[ctx.layer] = kept
        return out
