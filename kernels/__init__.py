"""Numba twins of the hot functions of cogcore.blocks (backend="numba").

`NumbaOps` has the same methods, with the same arguments and results, as
`cogcore.blocks.ReferenceOps`; the blocks call one or the other through `self.ops`.
Every kernel is compiled with `cache=True` (the first run of a fresh checkout pays
the compilation once; `kernels.warm_up()` does it up front and times it).

| op            | kernel                                  | module     |
|---------------|-----------------------------------------|------------|
| linear        | BLAS for float32; GEMV / block-widened BLAS for bf16, f16 | linear.py |
| rmsnorm, layernorm, add_* | one pass per row, residual add fused | norm.py |
| rope          | rotation with float64 angles            | rope.py    |
| attention     | chunked running softmax, GQA groups, flash-decoding splits | attention.py |
| nsa_attention | compressed / scored / selected / window branches per (query, group) | nsa.py |
| nsa_compress  | gather + kernels.linear                 | nsa.py     |
| wkv7          | one fused pass per token and head       | rwkv7.py   |
| moe           | router top-k; fused expert GEMVs (decode); grouped BLAS (prefill) | moe.py |
| linear, moe over q8_0 / q4_0 | fused dequantize-dot GEMV (decode); block-dequantized BLAS (prefill) | quant.py |
| (sampling)    | top-k / top-p / min-p filtering         | sampling.py |
"""

from __future__ import annotations

import numba
import numpy as np

from cogcore.blocks import ReferenceOps
from cogcore.dtypes import f32
from cogcore.quant import QuantTensor

from . import attention as _attention
from . import linear as _linear
from . import moe as _moe
from . import norm as _norm
from . import nsa as _nsa
from . import quant as _quant
from . import rope as _rope
from . import rwkv7 as _rwkv7
from . import sampling as _sampling


class NumbaOps(ReferenceOps):
    """Compiled kernels where they pay; the NumPy reference for the rest (embed, sigmoid)."""

    name = "numba"

    @staticmethod
    def linear(x, W):
        if isinstance(W, QuantTensor):
            return _quant.linear(x, W.data, W.qtype, W.shape[-1])
        return _linear.linear(x, W)

    @staticmethod
    def rmsnorm(x, w, eps):
        return _norm.rmsnorm(x, f32(w), eps)[1]

    @staticmethod
    def layernorm(x, w, b, eps):
        return _norm.layernorm(x, f32(w), f32(b), eps)[1]

    def add_rmsnorm(self, x, y, w, eps):
        return _norm.rmsnorm(x, f32(w), eps, y)

    def add_layernorm(self, x, y, w, b, eps):
        return _norm.layernorm(x, f32(w), f32(b), eps, y)

    @staticmethod
    def rope(u, positions, theta):
        return _rope.rope(u, positions, theta)

    @staticmethod
    def attention(q, k, v, q_pos, k_pos, window=0):
        out = _attention.attention(q, k, v, q_pos, k_pos, window, numba.get_num_threads())
        if out is None:       # keys not in ascending position order: never from cogcore's caches
            return ReferenceOps.attention(q, k, v, q_pos, k_pos, window)
        return out

    token_probabilities = staticmethod(_sampling.filter_probs)

    @staticmethod
    def nsa_compress(X, first, last, pos, fc1, fc2, shape):
        return _nsa.compress(X, first, last, pos, fc1, fc2, shape)

    @staticmethod
    def nsa_attention(q, K, V, kc, vc, q_pos, shape):
        return _nsa.nsa_attention(q, K, V, kc, vc, q_pos, shape)

    @staticmethod
    def wkv7(r, w, k, v, kk, a, S):
        return _rwkv7.wkv7(r, w, k, v, kk, a, S)

    def moe(self, x, router, gate_proj, up_proj, down_proj, k, norm_topk):
        experts = (gate_proj, up_proj, down_proj)
        if not any(isinstance(W, QuantTensor) for W in experts):
            return _moe.moe(x, router, gate_proj, up_proj, down_proj, k, norm_topk)
        qtypes = {getattr(W, "qtype", None) for W in experts}
        if len(x) > _linear.SMALL_T or len(qtypes) > 1:     # prefill (or mixed storage): grouped by expert
            return super().moe(x, router, gate_proj, up_proj, down_proj, k, norm_topk)
        x = np.ascontiguousarray(x, np.float32)
        top, wts = _moe.route(self.linear(x, router), k, bool(norm_topk))
        y = _quant.experts_decode(x, top, wts, gate_proj.data, up_proj.data, down_proj.data, gate_proj.qtype)
        return y, np.bincount(top.ravel(), minlength=router.shape[0])


def warm_up() -> float:
    """Compile (or load from the cache) every kernel on tiny inputs; returns the seconds it took."""
    import time

    from cogcore.blocks.sparse_attention import NSAShape
    from cogcore.dtypes import to_bf16

    t0 = time.perf_counter()
    ops = NumbaOps()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16), np.float32)
    for W in (rng.standard_normal((8, 16), np.float32),):
        for Ws in (W, to_bf16(W), W.astype(np.float16)):
            ops.linear(x, Ws)
            ops.linear(np.repeat(x, 8, 0), Ws)
            E = np.stack([Ws, Ws])
            ops.moe(x, Ws[:2], E, E, np.stack([Ws.T.copy()] * 2), 1, True)
            ops.moe(np.repeat(x, 8, 0), Ws[:2], E, E, np.stack([Ws.T.copy()] * 2), 1, True)
    from cogcore.quant import quantize_tensor as quantize
    xq = rng.standard_normal((2, 32), np.float32)
    for qtype in ("q8_0", "q4_0"):
        Wq = quantize(rng.standard_normal((3, 32), np.float32), qtype)
        Eq = quantize(rng.standard_normal((2, 32, 32), np.float32), qtype)
        ops.linear(xq, Wq)
        ops.linear(np.repeat(xq, 8, 0), Wq)
        ops.moe(xq, rng.standard_normal((2, 32), np.float32), Eq, Eq, Eq, 1, True)
    w = np.ones(16, np.float32)
    for n in (x, np.repeat(x, 64, 0)):
        ops.rmsnorm(n, w, 1e-5), ops.layernorm(n, w, w, 1e-5)
        ops.add_rmsnorm(n, n, w, 1e-5), ops.add_layernorm(n, n, w, w, 1e-5)
    q = rng.standard_normal((3, 4, 8), np.float32)
    k = rng.standard_normal((40, 2, 8), np.float32)
    pos = np.arange(37, 40)
    ops.rope(q, pos, 1e4)
    ops.attention(q, k, k, pos, np.arange(40), 0)
    shape = NSAShape(8, 4, 16, 3, 16)
    kc = ops.nsa_compress(k, 0, 9, rng.standard_normal((8, 8), np.float32),
                          rng.standard_normal((4, 64), np.float32), rng.standard_normal((8, 4), np.float32), shape)
    ops.nsa_attention(q, k, k, kc, kc, pos, shape)
    r = rng.standard_normal((2, 2, 4), np.float32)
    ops.wkv7(r, r, r, r, r, r, np.zeros((2, 4, 4), np.float32))
    from . import sampling
    sampling.filter_probs(rng.standard_normal(50).astype(np.float32), 1.0, 5, 0.9, 0.0)
    return time.perf_counter() - t0
