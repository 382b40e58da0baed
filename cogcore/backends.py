"""The Numba backend's ops table: `cogcore.ops.Ops` over the kernels of `cogcore.kernels`.

The kernels (the top-level `kernels/` folder) are numeric functions that know
nothing of cogcore; this module is the one place that binds them to the contract,
and it names every op that stays on the NumPy reference.
"""

from __future__ import annotations

import functools
import time
import weakref

import numba
import numpy as np

from .blocks import ReferenceOps, sparse_attention
from .blocks.moe import grouped_experts
from .blocks.rope import inv_freq, rope_tables
from .blocks.sparse_attention import NSAShape
from .dtypes import to_bf16
from .kernels import attention, layer_step, linear, moe, norm, quant, rope, rwkv7, sampling, threads
from .kernels import sparse_attention as nsa
from .quant import QuantTensor, quantize_tensor


def _linear(x, W):
    """kernels.linear over a stored float weight; kernels.quant over a quantized one."""
    if isinstance(W, QuantTensor):
        return quant.linear(x, W.data, W.qtype, W.shape[-1])
    return linear.linear(x, W)


def _embed(table, ids):
    """The reference's row gather; a few rows of a quantized table dequantized by kernels.quant
    (decode's token: the reference's NumPy dequantization costs more than the row)."""
    rows = np.asarray(ids).tolist()
    if not isinstance(table, QuantTensor) or len(rows) > linear.SMALL_T or not all(
            isinstance(i, int) and 0 <= i < len(table.data) for i in rows):
        return ReferenceOps.embed(table, ids)            # (which also says what is wrong with ids)
    out = np.empty((len(rows), table.shape[-1]), np.float32)
    for t, i in enumerate(rows):
        quant.dequantize_rows(table.data, i, i + 1, quant.CODE[table.qtype], out[t:t + 1])
    return out


def _linear_int8(x, W):
    """`_linear` with int8 activations for a quantized weight (kernels.quant.linear_i8)."""
    if isinstance(W, QuantTensor):
        return quant.linear_i8(x, W.data, W.qtype, W.shape[-1])
    return linear.linear(x, W)


def _linears(x, Ws, int8=False):
    """Decode's projections of one input: weights of one quantized format in one kernel call
    (kernels.quant.linear_many), the output split by weight; anything else one `_linear` each."""
    qtypes = {getattr(W, "qtype", None) for W in Ws}
    if len(qtypes) > 1 or None in qtypes or x.ndim != 2 or len(x) > linear.SMALL_T:
        lin = _linear_int8 if int8 else _linear
        return tuple(lin(x, W) for W in Ws)
    out = quant.linear_many(x, tuple(W.data for W in Ws), qtypes.pop(), Ws[0].shape[-1], int8)
    parts, start = [], 0
    for W in Ws:
        parts.append(out[:, start:start + W.shape[0]])
        start += W.shape[0]
    return tuple(parts)


def _moe(x, router, gate_proj, up_proj, down_proj, k, norm_topk, int8=False):
    """kernels.moe over stored float experts. Over quantized ones (stacked, or a lazy stack of
    per-expert tensors): the fused GEMV of kernels.quant for each chosen expert of a few tokens
    (decode) when the three projections share one format; otherwise (prefill, or mixed formats)
    the experts grouped as in the reference, each through `_linear`. int8: int8 activations, each
    token quantized once for all its experts (each decode token's experts in one kernel call)."""
    quantized, blocks = _decode_experts(gate_proj, up_proj, down_proj)
    if not quantized:
        return moe.moe(x, router, gate_proj, up_proj, down_proj, k, norm_topk)
    x = np.ascontiguousarray(x, np.float32)
    top, wts, counts = moe.routing(x, router, k, norm_topk, _linear)
    if blocks is None or len(x) > linear.SMALL_T or x.shape[1] != blocks[0]:
        return grouped_experts(x, top, wts, counts, gate_proj, up_proj, down_proj,
                               _linear_int8 if int8 else _linear), counts
    D, code, gates, ups, downs, buffers = blocks
    y = np.zeros((len(x), D), np.float32)
    for t, experts in enumerate(top.tolist()):
        if buffers is not None:                  # (one compiled kernel for every top-k: the layer step's)
            bufs, at, F = buffers
            quant.experts_decode_buffers(x[t:t + 1], bufs, at, top[t], F, wts[t], code, y[t], int8)
        else:
            quant.experts_decode_packed(x[t:t + 1], tuple([gates[e] for e in experts]),
                                        tuple([ups[e] for e in experts]), tuple([downs[e] for e in experts]),
                                        wts[t], code, y[t], int8)
    return y, counts


def _rwkv7_step(x, x_prev, mix, lora, w0, a0, v0, Ws, v_first, k_k, k_a, r_k, ln_w, ln_b, eps, kk_norm, S,
                int8=False):
    """The RWKV-7 time mix in one kernel call (kernels.rwkv7.time_mix_step) when its four projections are
    quantized in one format; otherwise the table's two fused ops and the projections around them."""
    qtypes = {getattr(W, "qtype", None) for W in Ws}
    if len(qtypes) == 1 and None not in qtypes and len(x) <= linear.SMALL_T:
        return rwkv7.time_mix_step(x, x_prev, mix, lora, w0, a0, v0, [W.data for W in Ws], qtypes.pop(), int8,
                                   v_first, k_k, k_a, r_k, ln_w, ln_b, eps, kk_norm, S)
    lin = _linear_int8 if int8 else _linear
    xr, xk, xv, w, a, g, v_gate = rwkv7.time_mix_inputs(x, x_prev, mix, lora, w0, a0, v0)
    r, k, v = lin(xr, Ws[0]), lin(xk, Ws[1]), lin(xv, Ws[2])
    y, S = rwkv7.time_mix_output(r, w, k, v, a, g, None if v_first is None else v_gate, v_first, k_k, k_a, r_k, ln_w,
                                 ln_b, eps, kk_norm, S)
    return lin(y, Ws[3]), v, S


def _nsa_step(x, Ws, positions, inv_freq, K, V, n, kc, vc, shape, int8=False):
    """Sparse attention's decode step in one kernel call (kernels.sparse_attention.nsa_step) when its five
    projections are quantized in one format; otherwise `_linears`, `rope_nsa` and `_linear`."""
    qtypes = {getattr(W, "qtype", None) for W in Ws}
    H = Ws[3].shape[0] // 3
    if len(qtypes) == 1 and None not in qtypes and len(x) <= linear.SMALL_T:
        return nsa.nsa_step(x, [W.data for W in Ws], qtypes.pop(), int8, H, positions, inv_freq, K, V, n, kc, vc,
                            shape)
    T, (Hkv, hd) = len(x), K.shape[1:]
    q, k, v, gate = _linears(x, Ws[:4], int8)
    o, kept = nsa.rope_nsa(q.reshape(T, H, hd), k.reshape(T, Hkv, hd), v.reshape(T, Hkv, hd), gate, positions,
                           inv_freq, K, V, n, kc, vc, shape)
    return (_linear_int8 if int8 else _linear)(o.reshape(T, -1), Ws[4]), kept


_DECODE_EXPERTS: dict[int, tuple] = {}   # id(gate stack) -> (weak references to the three stacks, answer)


def _decode_experts(gate_proj, up_proj, down_proj) -> tuple[bool, tuple | None]:
    """(whether any of the three stacks of experts [E, F, D], [E, F, D], [E, D, F] is quantized,
    (D, format code, each expert's packed gate, up and down blocks, `_expert_buffers` or None) when all
    three are quantized in one format, else None): the blocks as tuples of read-only C-contiguous arrays,
    what the decode kernel indexes, or the buffers that hold them. Found once per MoE layer (a decode
    step would otherwise rebuild them for every layer and token)."""
    hit = _DECODE_EXPERTS.get(id(gate_proj))
    if hit is not None and hit[0]() is gate_proj and hit[1]() is up_proj and hit[2]() is down_proj:
        return hit[3]
    qtypes = {getattr(W[0], "qtype", None) for W in (gate_proj, up_proj, down_proj)}
    E, F, D = gate_proj.shape
    quantized, blocks = qtypes != {None}, None
    if len(qtypes) == 1 and None not in qtypes and up_proj.shape == gate_proj.shape and \
            down_proj.shape == (E, D, F):
        blocks = (D, quant.CODE[qtypes.pop()], *map(_read_only_blocks, (gate_proj, up_proj, down_proj)),
                  _expert_buffers(gate_proj, up_proj, down_proj))
    answer = quantized, blocks
    _DECODE_EXPERTS[id(gate_proj)] = (weakref.ref(gate_proj), weakref.ref(up_proj), weakref.ref(down_proj), answer)
    weakref.finalize(gate_proj, _DECODE_EXPERTS.pop, id(gate_proj), None)
    return answer


def _read_only_blocks(W) -> tuple:
    """Each expert's packed blocks of a quantized stack, as read-only C-contiguous arrays (one Numba type)."""
    blocks = tuple(np.ascontiguousarray(W[e].data).view() for e in range(len(W)))
    for b in blocks:
        b.flags.writeable = False
    return blocks


class _LayerPlan:
    """What `kernels.layer_step.attention_moe_step` takes of one layer, prepared once (`_attention_moe_plan`)."""

    def __init__(self, qkv, wo, post_w, next_w, eps, rope, router, experts, top_k, norm_topk, code, mode):
        self.qkv, self.wo, self.post_w, self.next_w, self.eps = qkv, wo, post_w, next_w, eps
        self.rope, self.router, self.experts, self.top_k, self.norm_topk = rope, router, experts, top_k, norm_topk
        self.code, self.mode = code, mode
        D, F, rows = router.shape[1], experts[2], sum(W.shape[0] for W in qkv)
        self.work = rows * D, D * qkv[0].shape[0], 3 * F * D * top_k   # q/k/v, o, experts: as `pick` weighs
        self.kv_work = 2 * qkv[1].shape[0]                                 # each alone; attention's per key


class _RopeTable:
    """cos, sin [1, hd/2] of the step's position, shared by the layers of one frequency table (computed
    once a step, not once per layer and per q and k)."""

    def __init__(self, inv_freq):
        self.inv_freq, self.n, self.cos, self.sin = inv_freq, -1, None, None

    def at(self, n: int):
        if n != self.n:
            cos, sin = rope_tables(np.array([n]), self.inv_freq)
            self.n, self.cos, self.sin = n, cos, sin
        return self.cos, self.sin


_ROPE_TABLES: dict[bytes, _RopeTable] = {}     # frequency table's dtype and bytes -> its step's cos, sin


def _attention_moe_plan(wq, wk, wv, wo, inv_freq, router, gate_proj, up_proj, down_proj, top_k, norm_topk,
                        post_w, next_w, eps, int8=False):
    """A `_LayerPlan` when every matrix is quantized in one format, the router is float32 and each
    expert stack's blocks live in one buffer (`_expert_buffer`); else None."""
    mats = (wq, wk, wv, wo, *(W[e] for W in (gate_proj, up_proj, down_proj) for e in range(len(W))))
    qtypes = {getattr(W, "qtype", None) for W in mats}
    if len(qtypes) != 1 or None in qtypes or not (isinstance(router, np.ndarray) and router.dtype == np.float32):
        return None
    experts = _expert_buffers(gate_proj, up_proj, down_proj)
    if experts is None:
        return None
    numba.get_num_threads()   # starts Numba's thread pool: the step, loaded from the disk cache, calls parallel
                              # kernels compiled into it without starting it (a crash when nothing else has)
    rope = _ROPE_TABLES.setdefault(inv_freq.dtype.str.encode() + inv_freq.tobytes(), _RopeTable(inv_freq))
    qkv = quant._packed(W.data for W in mats[:3])
    return _LayerPlan(qkv, quant._packed((wo.data,))[0], np.ascontiguousarray(post_w, np.float32),
                      np.ascontiguousarray(next_w, np.float32), np.float32(eps), rope,
                      np.ascontiguousarray(router), experts, int(top_k), bool(norm_topk), quant.CODE[qtypes.pop()],
                      quant.INT8_PATH if int8 else quant.FLOAT_PATH)


def _expert_buffers(gate_proj, up_proj, down_proj):
    """(the three `_expert_buffer` buffers, every expert's byte offsets in them [3, E] int64, F hidden rows):
    the experts as kernels.quant's `_experts` finds them by id, or None where a stack is not in one buffer."""
    found = [_expert_buffer(W) for W in (gate_proj, up_proj, down_proj)]
    if None in found:
        return None
    return tuple(buf for buf, _ in found), np.array([at for _, at in found], np.int64), gate_proj.shape[1]


def _expert_buffer(stack):
    """(a 1-D read-only uint8 view of the memory that holds every expert's blocks of a quantized stack
    [E, rows, cols], each expert's byte offset in it [E]): a stacked tensor's blocks, or the per-expert
    tensors of one memory-mapped file. None when they live in different arrays or are not C-contiguous."""
    parts = [stack[e].data for e in range(len(stack))]
    root = parts[0]
    while isinstance(root.base, np.ndarray):
        root = root.base
    if not root.flags.c_contiguous:
        return None
    start, end = root.ctypes.data, root.ctypes.data + root.nbytes
    at = [p.ctypes.data - start for p in parts]
    if not all(p.flags.c_contiguous and 0 <= a and a + p.nbytes <= end - start for p, a in zip(parts, at)):
        return None
    buf = root.reshape(-1).view(np.uint8)
    buf.flags.writeable = False
    return buf, at


def _attention_moe_step(plan, x, xn, K, V, n):
    """`kernels.layer_step.attention_moe_step` of a plan, each kernel on one thread or several as `pick` says."""
    pick, (qkv_work, o_work, experts_work) = threads.pick, plan.work
    cos, sin = plan.rope.at(n)
    return layer_step.attention_moe_step(
        x, xn, plan.qkv, plan.wo, plan.post_w, plan.next_w, plan.eps, cos, sin, K, V, n, plan.router,
        *plan.experts, plan.top_k, plan.norm_topk, plan.code, quant.HALF_TO_FLOAT, plan.mode,
        pick(False, True, qkv_work), pick(False, True, (n + 1) * plan.kv_work), pick(False, True, o_work),
        pick(1, threads.parallel_threads(), experts_work))


class NumbaOps:
    """`Ops`, `FusedResidualNorm`, `FusedLinears`, `FusedAttentionStep`, `FusedSparseStep`, `FusedLayerStep`,
    `FusedRecurrent` and `Compiled` over the Numba kernels (backend "numba")."""

    name = "numba"
    int8_activations = False

    linear = staticmethod(_linear)
    linears = staticmethod(_linears)
    embed = staticmethod(_embed)
    sigmoid = staticmethod(ReferenceOps.sigmoid)     # reference: one vectorised expression
    rmsnorm = staticmethod(norm.rmsnorm)
    layernorm = staticmethod(norm.layernorm)
    add_rmsnorm = staticmethod(norm.add_rmsnorm)
    add_layernorm = staticmethod(norm.add_layernorm)
    rope = staticmethod(rope.rope)
    rope_attend = staticmethod(attention.rope_attend)      # (before `attention` names the op, not the module)
    attention = staticmethod(attention.attention)
    nsa_attention = staticmethod(nsa.nsa_attention)
    rope_nsa = staticmethod(nsa.rope_nsa)
    nsa_step = staticmethod(_nsa_step)
    wkv7 = staticmethod(rwkv7.wkv7)
    rwkv7_inputs = staticmethod(rwkv7.time_mix_inputs)
    rwkv7_output = staticmethod(rwkv7.time_mix_output)
    rwkv7_step = staticmethod(_rwkv7_step)
    moe = staticmethod(_moe)
    attention_moe_plan = staticmethod(_attention_moe_plan)
    attention_moe_step = staticmethod(_attention_moe_step)
    token_probabilities = staticmethod(sampling.token_probabilities)

    @staticmethod
    def nsa_compress(X, first, last, pos, fc1, fc2, shape):
        """Reference: the block gather and its two small layers, over the kernels' linear."""
        return sparse_attention.compress(X, first, last, pos, fc1, fc2, shape, linear=_linear)

    @classmethod
    def warm_up(cls, quantized: bool = True, stored=None) -> float:
        """Compile (or load from the cache) every kernel on tiny inputs, the serial and the
        parallel variant of each threaded one, quantized weights in this table's arithmetic
        (quantized=False: not the kernels over quantized weights, which a float model never
        calls; half of a first run's compile time); stored: the storage dtypes of a model's
        float weights (`Weights.float_dtypes`): only the kernels over those (None: over every
        one); returns the seconds it took."""
        from .model import freeze_live_objects
        t0 = time.perf_counter()
        for work in (1 << 62, 0):                # serial variants, then parallel ones
            with threads.parallel_from(work):
                _exercise(cls, stored)
                if quantized:
                    _exercise_quantized(cls, stored)
        freeze_live_objects()                    # the compiled state, out of the collector's way
        return time.perf_counter() - t0


class NumbaInt8Ops(NumbaOps):
    """`NumbaOps` with int8 activations for quantized weights (kernels.quant's `linear_i8`,
    `experts_decode(..., int8=True)`); the twin of `cogcore.blocks.ReferenceInt8Ops`."""

    int8_activations = True
    linear = staticmethod(_linear_int8)
    linears = staticmethod(functools.partial(_linears, int8=True))
    rwkv7_step = staticmethod(functools.partial(_rwkv7_step, int8=True))
    nsa_step = staticmethod(functools.partial(_nsa_step, int8=True))
    moe = staticmethod(functools.partial(_moe, int8=True))
    attention_moe_plan = staticmethod(functools.partial(_attention_moe_plan, int8=True))


def _stored_as(arrays, stored):
    """The arrays (weights, or pairs of them) whose storage dtype is in stored (None: all)."""
    return [a for a in arrays if stored is None or (a[0] if isinstance(a, tuple) else a).dtype in stored]


def _exercise(ops, stored=None):
    """Call every op over float weights once per weight dtype (those in stored, `warm_up`) and per
    decode / prefill path."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16), np.float32)
    W = rng.standard_normal((8, 16), np.float32)
    for Ws in _stored_as((W, to_bf16(W), W.astype(np.float16)), stored):
        E, Ed = np.stack([Ws, Ws]), np.stack([Ws.T.copy()] * 2)
        for xs in (x, np.repeat(x, 8, 0)):
            ops.linear(xs, Ws)
            ops.moe(xs, Ws[:2], E, E, Ed, 1, True)
    w = np.ones(16, np.float32)
    for n in (x, np.repeat(x, 64, 0)):
        ops.rmsnorm(n, w, 1e-5), ops.layernorm(n, w, w, 1e-5)
        ops.add_rmsnorm(n, n, w, 1e-5), ops.add_layernorm(n, n, w, w, 1e-5)
    q = rng.standard_normal((3, 4, 8), np.float32)
    k = rng.standard_normal((40, 2, 8), np.float32)
    pos = np.arange(37, 40)
    for angles in ("float64", "float32"):        # cogcore's own models; the public families
        ops.rope(q, pos, inv_freq(8, 1e4, angles=angles))
    ops.attention(q, k, k, pos, np.arange(40), 0)
    for angles in ("float64", "float32"):        # decode's fused step, as a KVCache hands its buffers
        ops.rope_attend(q, k[:3], k[:3], pos, inv_freq(8, 1e4, angles=angles), np.zeros((48, 2, 8), np.float32),
                        np.zeros((48, 2, 8), np.float32), 37)
    shape = NSAShape(8, 4, 16, 3, 16)
    kc = ops.nsa_compress(k, 0, 9, rng.standard_normal((8, 8), np.float32),
                          rng.standard_normal((4, 64), np.float32), rng.standard_normal((8, 4), np.float32), shape)
    ops.nsa_attention(q, k, k, kc, kc, pos, shape)
    for angles in ("float64", "float32"):        # decode's fused sparse step
        ops.rope_nsa(q, k[:3], k[:3], rng.standard_normal((3, 12), np.float32), pos, inv_freq(8, 1e4, angles=angles),
                     np.zeros((48, 2, 8), np.float32), np.zeros((48, 2, 8), np.float32), 37, kc, kc, shape)
    q16, pos16 = rng.standard_normal((16, 4, 8), np.float32), np.arange(24, 40)   # prefill: the BLAS paths
    ops.attention(q16, k, k, pos16, np.arange(40), 0)
    for union_ratio in (nsa.UNION_RATIO, 0):     # the selected branch by BLAS, and by the per-query kernel
        nsa.nsa_attention(q16, k, k, kc, kc, pos16, shape, union_ratio)
    r = rng.standard_normal((2, 2, 4), np.float32)
    ops.wkv7(r, r, r, r, r, r, np.zeros((2, 4, 4), np.float32))
    x8, v8 = rng.standard_normal((1, 8), np.float32), np.ones(8, np.float32)
    f32_pair = (rng.standard_normal((8, 3), np.float32), rng.standard_normal((3, 8), np.float32))
    cases = [(pair, v_pair) for pair in _stored_as((f32_pair, tuple(map(to_bf16, f32_pair))), stored)
             for v_pair in (pair, None)]
    for pair, v_pair in cases:                   # low-rank pairs as float32 / bfloat16; a later layer, the first
        v0 = None if v_pair is None else v8
        xr, xk, xv, w, a, g, v_gate = ops.rwkv7_inputs(x8, v8, np.ones((6, 8), np.float32),
                                                       (pair, pair, v_pair, pair), v8, v8, v0)
        v_gate, v_first = (None, None) if v_pair is None else (v_gate, xv)
        ops.rwkv7_output(xr, w, xk, xv, a, g, v_gate, v_first, v8, v8, np.ones((2, 4), np.float32), v8, v8, 1e-3,
                         "clamp", np.zeros((2, 4, 4), np.float32))
    ops.token_probabilities(rng.standard_normal(50).astype(np.float32), 1.0, 5, 0.9, 0.0)


def _exercise_quantized(ops, stored=None):
    """Call every op over quantized weights (GGML blocks) once, in the table's arithmetic (float, or int8
    activations: the other one compiles when a table of it warms up); RWKV-7 low-rank pairs stored as in
    stored."""
    rng = np.random.default_rng(1)
    xq = rng.standard_normal((2, 32), np.float32)
    for qtype in ("q8_0", "q4_0"):               # (packed blocks are always read-only: cogcore.quant.QuantTensor)
        Wq = quantize_tensor(rng.standard_normal((3, 32), np.float32), qtype)
        Eq = quantize_tensor(rng.standard_normal((2, 32, 32), np.float32), qtype)
        ops.linear(xq, Wq)
        ops.linear(np.repeat(xq, 8, 0), Wq)
        for n in (3, 4):                         # attention's q, k, v in one call; sparse attention's gate too
            ops.linears(xq, (Wq,) * n)
        for k in (1, 2):                         # top-1 and top-2 routing over stacked experts
            ops.moe(xq, rng.standard_normal((2, 32), np.float32), Eq, Eq, Eq, k, True)
    _exercise_layer_step(ops, rng)
    shape, k = NSAShape(8, 4, 16, 3, 16), rng.standard_normal((40, 2, 8), np.float32)
    kc = ops.nsa_compress(k, 0, 9, rng.standard_normal((8, 8), np.float32),
                          rng.standard_normal((4, 64), np.float32), rng.standard_normal((8, 4), np.float32), shape)
    Ws = [quantize_tensor(rng.standard_normal((rows, 32), np.float32), "q4_0") for rows in (32, 16, 16, 12, 32)]
    ops.nsa_step(rng.standard_normal((1, 32), np.float32), Ws, np.arange(37, 38), inv_freq(8, 1e4),
                 np.zeros((48, 2, 8), np.float32), np.zeros((48, 2, 8), np.float32), 37, kc, kc, shape)
    x32, v32, Wq = rng.standard_normal((1, 32), np.float32), np.ones(32, np.float32), quantize_tensor(
        rng.standard_normal((32, 32), np.float32), "q4_0")
    pair32 = (rng.standard_normal((32, 3), np.float32), rng.standard_normal((3, 32), np.float32))
    for pair in _stored_as((pair32, tuple(map(to_bf16, pair32))), stored):   # the step over quantized projections
        for v_pair, v_first in ((pair, x32), (None, None)):
            ops.rwkv7_step(x32, v32, np.ones((6, 32), np.float32), (pair, pair, v_pair, pair), v32, v32,
                           None if v_pair is None else v32, (Wq,) * 4, v_first, v32, v32, np.ones((4, 8), np.float32),
                           v32, v32, 1e-3, "clamp", np.zeros((4, 8, 8), np.float32))


def _exercise_layer_step(ops, rng):
    """A decode token through a small attention + MoE layer (D 32, 4 heads over 2 of 8, 2 experts of 32)
    in the table's arithmetic. (The kernels it calls are the op-by-op path's, of the same types: `ops.moe`
    over stacked experts calls the same experts kernel.)"""
    w = np.ones(32, np.float32)
    mats = [quantize_tensor(rng.standard_normal(shape, np.float32), "q8_0")
            for shape in ((32, 32), (16, 32), (16, 32), (32, 32), (2, 32, 32), (2, 32, 32), (2, 32, 32))]
    plan = ops.attention_moe_plan(*mats[:4], inv_freq(8, 1e4), rng.standard_normal((2, 32), np.float32), *mats[4:],
                                  1, True, w, w, 1e-5)
    x, K, V = rng.standard_normal((1, 32), np.float32), np.zeros((4, 2, 8), np.float32), np.zeros((4, 2, 8), np.float32)
    ops.attention_moe_step(plan, x, x, K, V, 1)
