"""The ops contract (cogcore.ops): both tables implement it, and the Numba kernels match their
NumPy twins on random inputs of odd sizes, every storage dtype where weights are read, both
thread variants, and whole models end to end."""

from __future__ import annotations

import ast
import functools
import inspect
import os
import subprocess
import sys
import time

import numba
import numpy as np
import pytest

from conftest import RoundingWatch, build_model, small_config

from cogcore import backends
from cogcore.backends import NumbaOps
from cogcore.blocks import ReferenceOps
from cogcore.blocks.rope import inv_freq
from cogcore.blocks.sparse_attention import NSAShape
from cogcore.dtypes import to_storage
import cogcore.kernels
from cogcore.kernels import threads
from cogcore.ops import (Compiled, FusedAttentionStep, FusedLinears, FusedRecurrent, FusedResidualNorm, FusedSparseStep,
                         Ops, members)
from cogcore.quant import QTYPES, quantize_tensor
from cogcore.weights import ExpertStack

REF, NB = ReferenceOps(), NumbaOps()
DTYPES = ["F32", "F16", "BF16"]
OPTIONAL = (FusedResidualNorm, FusedLinears, FusedAttentionStep, FusedSparseStep, FusedRecurrent)  # the Numba table's
OPS = members(Ops) + [op for protocol in OPTIONAL for op in members(protocol)]


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def close(a, b, tol=2e-5):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max(initial=0))))


def test_tables_implement_the_contract_with_its_signatures():
    assert isinstance(REF, Ops) and isinstance(NB, Ops) and isinstance(NB, Compiled)
    for protocol in OPTIONAL:
        assert isinstance(NB, protocol) and not isinstance(REF, protocol)
    for name in OPS:
        protocol = next(p for p in (Ops, *OPTIONAL) if name in members(p))
        want = [p for p in inspect.signature(getattr(protocol, name)).parameters][1:]   # without self
        for table in (REF, NB):
            if hasattr(table, name):
                params = inspect.signature(getattr(table, name)).parameters
                required = [p for p, v in params.items() if v.default is inspect.Parameter.empty]
                assert list(params)[:len(want)] == want and len(required) <= len(want), (table.name, name)


# ---- parity: one case per op of the contract; an op without one fails here ----------------------

def parity_linear():
    for tag in DTYPES:
        for T in (1, 3, 13):
            rng = np.random.default_rng(T)
            W = to_storage(rand(rng, 77, 45), tag)
            x = rand(rng, T, 45)
            close(NB.linear(x, W), REF.linear(x, W))


def parity_embed():
    rng = np.random.default_rng(0)
    for tag in DTYPES:
        table, ids = to_storage(rand(rng, 37, 11), tag), np.array([0, 5, 36, 5])
        assert np.array_equal(NB.embed(table, ids), REF.embed(table, ids))
    for qtype in QTYPES:                          # a few rows dequantized by the kernel; many: the reference
        table = quantize_tensor(rand(rng, 37, 96), qtype)
        for ids in (np.array([36]), np.array([0, 5, 36, 5]), rng.integers(0, 37, 11)):
            assert np.array_equal(NB.embed(table, ids), REF.embed(table, ids))
        with pytest.raises(IndexError):
            NB.embed(table, np.array([37]))


def parity_sigmoid():
    x = rand(np.random.default_rng(0), 7, 13, scale=5)
    close(NB.sigmoid(x), REF.sigmoid(x))


def norm_inputs(T):
    rng = np.random.default_rng(T)
    return rand(rng, T, 37), rand(rng, T, 37), rand(rng, 37), rand(rng, 37)


def parity_rmsnorm():
    for T in (1, 5, 70):
        x, _, w, _ = norm_inputs(T)
        close(NB.rmsnorm(x, w, 1e-5), REF.rmsnorm(x, w, 1e-5))
        wb = to_storage(w, "BF16")
        close(NB.rmsnorm(x, wb, 1e-5), REF.rmsnorm(x, wb, 1e-5))


def parity_layernorm():
    for T in (1, 5, 70):
        x, _, w, b = norm_inputs(T)
        close(NB.layernorm(x, w, b, 1e-6), REF.layernorm(x, w, b, 1e-6))


def parity_add_rmsnorm():
    """The fused op against the reference's two steps: h = x + y, then the norm of h."""
    for T in (1, 5, 70):
        x, y, w, _ = norm_inputs(T)
        h, out = NB.add_rmsnorm(x, y, to_storage(w, "BF16"), 1e-5)
        assert np.array_equal(h, x + y)
        close(out, REF.rmsnorm(x + y, to_storage(w, "BF16"), 1e-5))


def parity_add_layernorm():
    for T in (1, 5, 70):
        x, y, w, b = norm_inputs(T)
        h, out = NB.add_layernorm(x, y, w, b, 1e-6)
        assert np.array_equal(h, x + y)
        close(out, REF.layernorm(x + y, w, b, 1e-6))


def parity_rope():
    rng = np.random.default_rng(1)
    u = rand(rng, 5, 3, 10)
    pos = np.array([0, 1, 77, 4097, 200001])
    close(NB.rope(u, pos, inv_freq(10, 1e4)), REF.rope(u, pos, inv_freq(10, 1e4)), 1e-5)
    llama3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    for freq in (inv_freq(10, 5e5, angles="float32"), inv_freq(10, 1e4, llama3, "float32")):   # the public families
        assert freq.dtype == np.float32
        close(NB.rope(u, pos, freq), REF.rope(u, pos, freq), 2e-6)


def parity_attention():
    cases = [(1, 1, 0), (1, 700, 0), (1, 700, 33), (9, 9, 0), (7, 300, 5), (6, 11, 0),
             (40, 40, 0), (37, 300, 0), (37, 300, 5), (70, 90, 33),    # from PREFILL_MIN_T queries on: BLAS
             (1, 1000, 600), (2, 530, 0)]                               # from BLAS_MIN_KEYS keys on: BLAS
    for H, Hkv, hd in ((6, 3, 7), (10, 2, 9)):     # 2 heads a group; 5 (four at a time, then one)
        for T, S, window in cases:
            rng = np.random.default_rng(S + T)
            q, k, v = rand(rng, T, H, hd), rand(rng, S, Hkv, hd), rand(rng, S, Hkv, hd)
            q_pos, k_pos = np.arange(S - T, S), np.arange(S)
            close(NB.attention(q, k, v, q_pos, k_pos, window), REF.attention(q, k, v, q_pos, k_pos, window))
    # a sliding ring: positions ascending but not from 0; then keys in no order at all
    rng = np.random.default_rng(3)
    for T in (2, 20):
        q, k, v = rand(rng, T, 4, 6), rand(rng, 29, 2, 6), rand(rng, 29, 2, 6)
        q_pos = np.arange(49 - T, 49)
        for k_pos in (np.arange(20, 49), rng.permutation(np.arange(20, 49))):
            close(NB.attention(q, k, v, q_pos, k_pos, 5), REF.attention(q, k, v, q_pos, k_pos, 5))
            close(NB.attention(q, k, v, q_pos, k_pos, 0), REF.attention(q, k, v, q_pos, k_pos, 0))


def parity_linears():
    """Each product as the reference's linear gives it, for decode rows (one kernel call over quantized
    weights: tests/test_quant.py) and prefill rows; weights of mixed storage."""
    rng = np.random.default_rng(4)
    for tag in DTYPES:
        Ws = tuple(to_storage(rand(rng, rows, 19), tag) for rows in (13, 3, 5))
        for T in (1, 3, 11):
            x = rand(rng, T, 19)
            got = NB.linears(x, Ws)
            assert len(got) == len(Ws)
            for g, W in zip(got, Ws):
                close(g, REF.linear(x, W))


def cache_written(K, V, K0, V0, k, v, positions, freq):
    """Checks that a fused step wrote rope(k) and v to rows n..n+T-1 of the buffers K, V (K0, V0 before
    it) and left the others as they were; returns the keys and values rows 0..n+T-1 now hold."""
    n, T = positions[0], len(positions)
    k_rot = REF.rope(k, positions, freq)
    close(K[n:n + T], k_rot)
    np.testing.assert_array_equal(V[n:n + T], v)
    for B, B0 in ((K, K0), (V, V0)):
        np.testing.assert_array_equal(B[:n], B0[:n])
        np.testing.assert_array_equal(B[n + T:], B0[n + T:])
    return np.concatenate([K0[:n], k_rot]), np.concatenate([V0[:n], v])


def parity_rope_attend():
    """RoPE, the cache write and attention in one call against the reference's rope and attention over
    the cached rows plus the new ones: one or a few queries, a cache empty or not, 2 or 5 heads a group,
    angles in float64 and float32; the rows before n and after n + T stay as they were."""
    for H, Hkv, hd in ((6, 3, 8), (10, 2, 6)):
        for T, n in ((1, 0), (1, 37), (3, 20), (8, 5)):
            for angles in ("float64", "float32"):
                rng = np.random.default_rng(T + n + H)
                q, k, v = rand(rng, T, H, hd), rand(rng, T, Hkv, hd), rand(rng, T, Hkv, hd)
                K, V = rand(rng, n + T + 4, Hkv, hd), rand(rng, n + T + 4, Hkv, hd)
                K0, V0 = K.copy(), V.copy()
                positions, freq = np.arange(n, n + T), inv_freq(hd, 1e4, angles=angles)
                got = NB.rope_attend(q, k, v, positions, freq, K, V, n)
                keys, values = cache_written(K, V, K0, V0, k, v, positions, freq)
                want = REF.attention(REF.rope(q, positions, freq), keys, values, positions, np.arange(n + T))
                close(got, want)


NSA_SHAPES = [NSAShape(4, 2, 4, 4, 6), NSAShape(8, 4, 16, 3, 5), NSAShape(6, 3, 9, 5, 11)]


def parity_nsa_attention():
    """Decode (1 query: the per-query kernel) and prefill (blocks of queries by BLAS): positions with
    gaps, a prompt from position 0 (no compressed block visible at first) and two query blocks."""
    S, hd = 150, 5
    positions = {1: np.array([S - 1]), 17: np.concatenate([[0, 2, 5], np.arange(S - 14, S)]),
                 70: np.arange(70), 83: np.arange(S - 83, S)}
    for shape, (H, Hkv) in [(shape, (6, 3)) for shape in NSA_SHAPES] + [(NSA_SHAPES[2], (10, 2))]:
        for T, q_pos in positions.items():
            rng = np.random.default_rng(T + shape.block)
            K, V, q = rand(rng, S, Hkv, hd), rand(rng, S, Hkv, hd), rand(rng, T, H, hd, scale=3.0)
            B = (S - shape.block) // shape.stride + 1
            kc, vc = rand(rng, B, Hkv, hd), rand(rng, B, Hkv, hd)
            got = NB.nsa_attention(q, K, V, kc, vc, q_pos, shape)
            want = REF.nsa_attention(q, K, V, kc, vc, q_pos, shape)
            assert np.array_equal(got[3], want[3])                     # the same blocks kept
            for g, w in zip(got[:3], want[:3]):
                close(g, w)


def parity_rope_nsa():
    """RoPE, the cache write, the three branches and their gates in one call against the reference's
    rope, nsa_attention over the cached rows plus the new ones and the mixer's gating: one or a few
    queries, a cache empty or not, no compressed block visible or several, 2 or 5 heads a group,
    angles in float64 and float32; the rows before n and after n + T stay as they were."""
    hd = 6
    for shape, (H, Hkv) in ((NSA_SHAPES[0], (6, 3)), (NSA_SHAPES[2], (10, 2))):
        for T, n in ((1, 0), (1, 37), (3, 20), (5, 90)):
            for angles in ("float64", "float32"):
                rng = np.random.default_rng(T + n + H)
                q, k, v = rand(rng, T, H, hd, scale=3.0), rand(rng, T, Hkv, hd), rand(rng, T, Hkv, hd)
                gate = rand(rng, T, 3 * H, scale=2.0)
                K, V = rand(rng, n + T + 4, Hkv, hd), rand(rng, n + T + 4, Hkv, hd)
                B = max(0, (n + T - shape.block) // shape.stride + 1)
                kc, vc = rand(rng, B, Hkv, hd), rand(rng, B, Hkv, hd)
                K0, V0 = K.copy(), V.copy()
                positions, freq = np.arange(n, n + T), inv_freq(hd, 1e4, angles=angles)
                got, kept = NB.rope_nsa(q, k, v, gate, positions, freq, K, V, n, kc, vc, shape)
                keys, values = cache_written(K, V, K0, V0, k, v, positions, freq)
                o_cmp, o_slc, o_win, want_kept = REF.nsa_attention(REF.rope(q, positions, freq), keys, values,
                                                                   kc, vc, positions, shape)
                g = 1 / (1 + np.exp(-gate.astype(np.float64))).reshape(T, 3, H, 1)
                want = g[:, 0] * o_cmp + g[:, 1] * o_slc + g[:, 2] * o_win
                assert np.array_equal(kept, want_kept)
                close(got, want.astype(np.float32))


def parity_nsa_step():
    """The whole sparse-attention step in one op, over projections quantized in one format (one kernel
    call; D 64, 4 heads of 8, 2 kv heads) and over float projections (`linears`, `rope_nsa`, `linear`),
    against the reference mixer on the same weights, float and int8 arithmetic: a prompt, then single
    tokens, every other one completing a compression block (those take the unfused path). The cache holds
    keys and values of the (shared) inputs, so a value that rounds apart at a tie (only o_proj's input can:
    RoundingWatch) moves that step's output alone."""
    from cogcore.backends import NumbaInt8Ops
    from cogcore.blocks import ReferenceInt8Ops
    from cogcore.blocks.sparse_attention import SparseAttentionMixer
    from cogcore.config import Config
    from cogcore.create import random_weights
    from cogcore.model import Pass
    from cogcore.weights import Weights

    cfg = Config.from_dict(small_config(num_hidden_layers=1, layer_types=["sparse_attention"], mlp_types=["dense"],
                                        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8))
    projections = ("q_proj", "k_proj", "v_proj", "gate_proj", "o_proj")
    for qtype in (None, *QTYPES):
        tensors = random_weights(cfg, 3)
        if qtype:
            tensors.update({n: quantize_tensor(a, qtype, n) for n, a in tensors.items()
                            if n.split(".")[-2] in projections})
        for tables in ((REF, NB), (ReferenceInt8Ops(), NumbaInt8Ops())):
            mixers = [SparseAttentionMixer(Weights(tensors), "model.layers.0", cfg, ops) for ops in tables]
            assert mixers[1].fused_sparse_step and not mixers[0].fused_sparse_step
            states = [m.new_state() for m in mixers]
            rng, n = np.random.default_rng(8), 0
            with RoundingWatch() as watch:
                for T in (5, 1, 1, 1, 1, 1, 1, 1):
                    x = rand(rng, T, 64)
                    outs = []
                    watch.start(x)
                    for mixer, st in zip(mixers, states):
                        ctx = Pass(positions=np.arange(n, n + T))
                        outs.append((mixer(x, st, ctx), ctx.selected_blocks[0]))
                    (got, got_kept), (want, want_kept) = outs
                    assert np.array_equal(got_kept, want_kept)
                    close(got, want, watch.tolerance(1e-4))
                    n += T
            assert watch.loose <= watch.tight // 3


def parity_nsa_compress():
    for tag in DTYPES:
        rng = np.random.default_rng(5)
        shape, hd, Hkv, hc = NSAShape(6, 3, 9, 5, 11), 5, 3, 7
        X = rand(rng, 40, Hkv, hd)
        pos, fc1, fc2 = (to_storage(a, tag) for a in (rand(rng, 6, hd), rand(rng, hc, 6 * hd), rand(rng, hd, hc)))
        for first, last in ((0, 1), (2, 12)):
            close(NB.nsa_compress(X, first, last, pos, fc1, fc2, shape),
                  REF.nsa_compress(X, first, last, pos, fc1, fc2, shape))


def parity_wkv7():
    for T in (1, 6):
        rng = np.random.default_rng(T)
        Hr, N = 3, 9
        r, k, v = (rand(rng, T, Hr, N) for _ in range(3))
        w = rng.uniform(0.5, 1.0, (T, Hr, N)).astype(np.float32)
        a = rng.uniform(0, 1, (T, Hr, N)).astype(np.float32)
        kk = rand(rng, T, Hr, N)
        kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
        S0 = rand(rng, Hr, N, N)
        y1, S1 = NB.wkv7(r, w, k, v, kk, a, S0.copy())
        y2, S2 = REF.wkv7(r, w, k, v, kk, a, S0.copy())
        close(y1, y2)
        close(S1, S2)


def recurrent_steps(first: bool, chunks, seed: int, dtype: str = "float32", qtype: str | None = None,
                    tables=(REF, NB), **options):
    """One RWKV-7 mixer (D 30, 3 heads of 10, odd ranks, unless options say otherwise) run over `chunks`
    of tokens by a reference table and by a Numba one (whose fused ops take chunks up to
    FUSED_MAX_TOKENS): outputs, the state and x_prev after each chunk, and v_first, which the first
    layer sets and later ones read. qtype: the four projections quantized in that format. With int8
    activations each chunk starts from the reference's state, and one in which a value may have rounded
    apart at a tie (RoundingWatch: the projections' inputs are all made inside the step) is held loosely."""
    from cogcore.blocks.rwkv7 import FUSED_MAX_TOKENS, RecurrentMixer
    from cogcore.cache import RecurrentState
    from cogcore.config import Config
    from cogcore.create import random_weights
    from cogcore.model import Pass
    from cogcore.quant import QuantTensor
    from cogcore.weights import Weights

    cfg = Config.from_dict(small_config(num_hidden_layers=1, layer_types=["recurrent"], mlp_types=["dense"], **options))
    D, N = cfg.hidden_size, cfg.rwkv_head_size
    tensors = random_weights(cfg, seed, dtype)
    if qtype:
        projections = [n for n in tensors if n.endswith(("receptance.weight", "key.weight", "value.weight",
                                                         "output.weight"))]
        assert len(projections) == 4
        tensors.update({n: quantize_tensor(tensors[n], qtype, n) for n in projections})
        assert all(isinstance(tensors[n], QuantTensor) for n in projections)
    mixers = [RecurrentMixer(Weights(tensors), "model.layers.0", cfg, ops, first) for ops in tables]
    assert mixers[1].fused and not mixers[0].fused and max(chunks) <= FUSED_MAX_TOKENS
    states = [RecurrentState(D, D // N, N) for _ in mixers]
    rng = np.random.default_rng(seed)
    with RoundingWatch() as watch:
        for T in chunks:
            x = rand(rng, T, D)
            v_first = None if first else rand(rng, T, D)
            outs = []
            watch.start()
            for mixer, st in zip(mixers, states):
                ctx = Pass(positions=np.arange(T), v_first=v_first)
                outs.append((mixer(x, st, ctx), ctx.v_first))
            (got, vf_got), (want, vf_want) = outs
            tol = watch.tolerance(1e-4)
            close(got, want, tol)
            close(vf_got, vf_want, tol if watch.ties else 2e-5)
            close(states[1].S, states[0].S, tol)
            assert np.array_equal(states[1].x_prev, states[0].x_prev)
            if tables[0].int8_activations:
                states[1].S = states[0].S.copy()


def parity_rwkv7_inputs():
    """The mixes and low-rank branches, seen through the whole mixer step (the first layer: no v gate)."""
    recurrent_steps(True, (1, 3, 1), seed=1)
    recurrent_steps(True, (2, 1), seed=2, dtype="bfloat16")
    recurrent_steps(True, (1, 2), seed=5, rwkv_first_v_lora=False)           # fla's first layer: no v0/v1/v2


def parity_rwkv7_output():
    """The recurrence and everything after it, with the value residual of a later layer."""
    recurrent_steps(False, (1, 1, 5, 8), seed=3)
    recurrent_steps(False, (1, 4), seed=4, dtype="float16")
    recurrent_steps(False, (1, 3), seed=6, dtype="bfloat16", rwkv_kk_norm="epsilon", rwkv_group_norm_eps=1e-5)
    # the op alone against the reference's steps, with keys so small that the two kk norms differ
    from cogcore.blocks import rwkv7 as B

    rng = np.random.default_rng(7)
    T, Hr, N = 2, 3, 9
    heads = (T, Hr, N)
    r, v, g, v_gate, v_first = (rand(rng, T, Hr * N) for _ in range(5))
    k = rand(rng, T, Hr * N, scale=1e-4)
    w, a = (rng.uniform(0.5, 1, (T, Hr * N)).astype(np.float32) for _ in range(2))
    k_k, k_a, ln_w, ln_b = (rand(rng, Hr * N) for _ in range(4))
    r_k, S0 = rand(rng, Hr, N), rand(rng, Hr, N, N)
    want = {}
    for kk_norm in ("clamp", "epsilon"):
        kk = B.l2_normalize((k * k_k).reshape(heads), kk_norm)
        k2 = k * (1 + (a - 1) * k_a)
        v2 = v + (v_first - v) * v_gate
        y, S = B.wkv7(r.reshape(heads), w.reshape(heads), k2.reshape(heads), v2.reshape(heads), kk,
                      a.reshape(heads), S0.copy())
        bonus = (r * k2 * r_k.reshape(-1)).reshape(heads).sum(-1, keepdims=True)
        want[kk_norm] = (B.group_norm(y, ln_w, ln_b, np.float32(1e-3)) + (bonus * v2.reshape(heads)).reshape(T, -1)) * g
        got, S_got = NB.rwkv7_output(r, w, k, v, a, g, v_gate, v_first, k_k, k_a, r_k, ln_w, ln_b, 1e-3, kk_norm,
                                     S0.copy())
        close(got, want[kk_norm], 1e-4)
        close(S_got, S, 1e-4)
    assert not np.allclose(want["clamp"], want["epsilon"], rtol=1e-2)      # the case tells the norms apart


def parity_rwkv7_step():
    """The whole time mix with its projections in one op. Over projections quantized in one format
    (one kernel call), against the reference on the same blocks, with float and with int8 arithmetic
    (D 64, 4 heads of 16, odd ranks), a first layer and a later one; over float projections (the two
    fused ops around them) through the cases of rwkv7_inputs and rwkv7_output."""
    from cogcore.backends import NumbaInt8Ops
    from cogcore.blocks import ReferenceInt8Ops

    for qtype in QTYPES:
        for tables in ((REF, NB), (ReferenceInt8Ops(), NumbaInt8Ops())):
            for first in (True, False):
                recurrent_steps(first, (1, 3, 1), 9, qtype=qtype, tables=tables, hidden_size=64, rwkv_head_size=16)


def parity_moe():
    D, E, F, k = 19, 7, 13, 3
    for tag in DTYPES:
        for T, norm_topk in [(1, True), (3, False), (29, True)]:
            rng = np.random.default_rng(T)
            x = rand(rng, T, D)
            router, gate, up, down = (to_storage(a, tag) for a in
                                      (rand(rng, E, D), rand(rng, E, F, D), rand(rng, E, F, D), rand(rng, E, D, F)))
            y1, c1 = NB.moe(x, router, gate, up, down, k, norm_topk)
            y2, c2 = REF.moe(x, router, gate, up, down, k, norm_topk)
            assert np.array_equal(c1, c2)
            close(y1, y2)
            # experts held one array each (a family's lazy ExpertStack): decode runs per chosen expert
            each = [ExpertStack(list(W), [f"{e}" for e in range(E)]) for W in (gate, up, down)]
            y3, c3 = NB.moe(x, router, *each, k, norm_topk)
            assert np.array_equal(c3, c2)
            close(y3, y2)


def parity_token_probabilities():
    for top_k, top_p, min_p in [(0, 1.0, 0.0), (5, 1.0, 0.0), (0, 0.9, 0.0), (40, 0.5, 0.05),
                                (0, 0.999, 0.01), (3000, 1.0, 0.0)]:
        rng = np.random.default_rng(top_k)
        logits = rand(rng, 2001, scale=2.0)
        logits[7] = logits[8] = logits.max() + 1         # a tie at the top: the lower id ranks first
        for temp in (0.7, 1.3):
            got = NB.token_probabilities(logits, temp, top_k, top_p, min_p)
            want = REF.token_probabilities(logits, temp, top_k, top_p, min_p)
            assert np.array_equal(got > 0, want > 0)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("variant", ["serial", "parallel"])
def test_parity(op, variant):
    """Every op of the contract against its NumPy twin, with the serial and the parallel kernels."""
    case = globals().get(f"parity_{op}")
    assert case is not None, f"op {op!r} of the contract has no parity case (parity_{op})"
    with threads.parallel_from(0 if variant == "parallel" else 1 << 62):
        case()


# ---- whole models ----------------------------------------------------------------------------

def mixed_config(**overrides):
    """Every mixer and FFN kind; sparse attention that drops blocks (n*l' < T), a sliding ring that wraps."""
    return small_config(
        num_hidden_layers=6,
        layer_types=["recurrent", "sparse_attention", "full_attention", "sliding_attention",
                     "recurrent", "sparse_attention"],
        mlp_types=["moe", "dense", "channel_mix", "moe", "moe", "channel_mix"],
        nsa_compress_block=4, nsa_compress_stride=2, nsa_select_block=4, nsa_select_count=3, nsa_window=5,
        sliding_window=5, **overrides)


# the options of fla's RWKV-7 layout (docs/format.md 1.1), away from their defaults
FLA_OPTIONS = dict(norm_bias=False, rwkv_group_norm_eps=3e-3, rwkv_kk_norm="epsilon", rwkv_first_v_lora=False)


@pytest.mark.parametrize("dtype,norm,options", [("float32", "rmsnorm", {}), ("bfloat16", "layernorm", {}),
                                                ("float16", "rmsnorm", {}), ("float32", "layernorm", FLA_OPTIONS)])
def test_model_logits_match_reference(dtype, norm, options):
    cfg = mixed_config(norm_type=norm, num_shared_experts=1 if norm == "layernorm" else 0,
                       shared_expert_intermediate_size=5 if norm == "layernorm" else 0, **options)
    ref, tensors = build_model(cfg, seed=1, dtype=dtype, backend="numpy")
    nb, _ = build_model(cfg, backend="numba", tensors=tensors)
    ids = np.random.default_rng(0).integers(0, cfg["vocab_size"], 41)
    want = ref.forward(ids)
    got = nb.forward(ids)
    close(got, want, 1e-4)
    assert np.array_equal(ref.last_pass.selected_blocks[1], nb.last_pass.selected_blocks[1])
    assert (ref.last_pass.selected_blocks[1] >= 0).sum() < ref.last_pass.selected_blocks[1].size  # blocks dropped
    for layer, counts in ref.last_pass.expert_counts.items():
        assert np.array_equal(counts, nb.last_pass.expert_counts[layer])


def test_parallel_variants_match_reference():
    """Every threaded kernel also runs its parallel variant, used above PARALLEL_MIN_WORK: force it."""
    assert numba.get_num_threads() >= 2          # conftest asks for two threads, even on one core
    cfg = mixed_config()
    ref, tensors = build_model(cfg, seed=3, dtype="bfloat16", backend="numpy")
    nb, _ = build_model(cfg, backend="numba", tensors=tensors)
    ids = np.random.default_rng(2).integers(0, cfg["vocab_size"], 23)
    with threads.parallel_from(0):
        close(nb.forward(ids), ref.forward(ids), 1e-4)
        cache_nb, cache_ref = nb.new_cache(), ref.new_cache()
        for t in ids[:4]:
            close(nb.forward([t], cache_nb), ref.forward([t], cache_ref), 1e-4)


def test_numba_chunked_decoding_matches_whole():
    cfg = mixed_config()
    model, _ = build_model(cfg, seed=2, dtype="bfloat16", backend="numba")
    ids = np.random.default_rng(1).integers(0, cfg["vocab_size"], 30)
    whole = model.forward(ids)
    cache = model.new_cache()
    parts = [model.forward(ids[a:b], cache) for a, b in ((0, 1), (1, 2), (2, 11), (11, 12), (12, 30))]
    close(np.concatenate(parts), whole, 1e-4)


WARM_CACHE_PROBE = """
import sys
import time
import numba
from cogcore.kernels import threads
# cold: the serial twin first, the order in which one shared cache entry served both twins serial code;
# warm: the parallel one first (serial code calling get_thread_id, loaded before any parallel launch,
# finds Numba's thread pool not started)
order = (threads.thread_ids_serial, threads.thread_ids_parallel)
for kernel in (order if sys.argv[1] == "cold" else order[::-1]):
    ids = kernel(1000)
    if kernel is threads.thread_ids_parallel:
        used = len(set(ids.tolist()))
print(numba.get_num_threads(), sum(threads.thread_ids_parallel.stats.cache_hits.values()), used)
"""


def test_every_threaded_kernel_has_its_own_parallel_function():
    """Numba's disk cache keys on the function, not on parallel=: twins compiled from one Python
    function share one cache file, and the parallel one loads the serial code."""
    pairs = threads.PARALLEL_KERNELS
    assert len(pairs) >= 9                   # gemv, widen, norms, attention, nsa, wkv7, experts, probe
    files = [d._cache._cache_file._index_path for pair in pairs for d in pair]
    assert len(set(files)) == 2 * len(pairs)
    for serial, parallel in pairs:
        assert not serial.targetoptions.get("parallel") and parallel.targetoptions["parallel"]


def test_parallel_variant_runs_on_two_threads_from_a_warm_cache(tmp_path):
    """In a second process (the kernel loaded from the disk cache) the parallel variant still
    spreads a prange over both threads."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NUMBA_NUM_THREADS="2")
    cold, warm = (subprocess.run([sys.executable, "-c", WARM_CACHE_PROBE, run], env=env, capture_output=True,
                                 text=True, check=True).stdout.split() for run in ("cold", "warm"))
    assert cold[0] == warm[0] == "2"                      # threads
    assert cold[1] == "0" and warm[1] == "1"              # compiled, then loaded from the cache
    assert cold[2] == warm[2] == "2"                      # threads that ran iterations


def test_kernels_stay_on_one_thread_while_a_core_is_busy(monkeypatch):
    """`pick` splits a kernel only when the last probe found the workers' cores free, and probes again
    only PROBE_EVERY seconds later."""
    assert numba.get_num_threads() >= 2
    serial, parallel = threads.thread_ids_serial, threads.thread_ids_parallel
    busy = [True]
    monkeypatch.setattr(threads, "_others_hold_a_core", lambda n: busy[0])
    monkeypatch.setattr(threads, "PROBE_EVERY", 1e9)           # the next probe only when asked below
    monkeypatch.setitem(threads._probe, "next", 0.0)
    assert threads.pick(serial, parallel, 1 << 40) is serial
    busy[0] = False
    assert threads.pick(serial, parallel, 1 << 40) is serial   # not probed again yet
    monkeypatch.setitem(threads._probe, "next", 0.0)
    assert threads.pick(serial, parallel, 1 << 40) is parallel
    assert threads.pick(serial, parallel, threads.PARALLEL_MIN_WORK - 1) is serial
    busy[0] = True
    with threads.parallel_from(0):                             # forced: the probe is not asked
        monkeypatch.setitem(threads._probe, "next", 0.0)
        assert threads.pick(serial, parallel, 1) is parallel


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="other programs' CPU time from Linux's /proc")
def test_the_probe_sees_another_program_hold_a_core(monkeypatch):
    """The probe reads other programs' CPU time since the last probe: a process spinning on a core is
    one core's worth (OTHERS_BUSY is half of one), whatever this process's own threads do."""
    monkeypatch.setitem(threads._probe, "ticks", None)
    assert not threads._others_hold_a_core(2)                  # the first probe: no window yet
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() < t + 5: pass"])
    try:
        time.sleep(0.3)
        threads._others_hold_a_core(2)                         # the window starts with the spinner running
        time.sleep(0.4)
        assert threads._others_hold_a_core(2)
    finally:
        spin.kill()
        spin.wait()


def test_without_proc_the_probe_times_an_empty_parallel_region(monkeypatch):
    """Where /proc is missing the probe times an awake empty parallel region against PROBE_BUSY."""
    monkeypatch.setattr(threads, "_cpu_ticks", lambda: None)
    monkeypatch.setattr(threads, "PROBE_BUSY", 0.0)            # any region is "too slow": a busy core
    assert threads._others_hold_a_core(2)
    monkeypatch.setattr(threads, "PROBE_BUSY", 10.0)           # no region is
    assert not threads._others_hold_a_core(2)


def test_pick_sees_the_thread_count(monkeypatch):
    """`pick` reads a noted thread count, not numba's lock: `set_threads` is seen at once, a direct
    `numba.set_num_threads` at the next probe (and the kernels' results do not depend on either)."""
    assert numba.get_num_threads() >= 2
    serial, parallel = threads.thread_ids_serial, threads.thread_ids_parallel
    monkeypatch.setattr(threads, "PROBE_EVERY", 1e9)
    monkeypatch.setattr(threads, "_others_hold_a_core", lambda n: False)   # the cores count as free
    monkeypatch.setitem(threads._probe, "next", 0.0)
    monkeypatch.setitem(threads._probe, "free", True)
    before = numba.get_num_threads()
    try:
        threads.set_threads(2)
        assert threads.pick(serial, parallel, 1 << 40) is parallel
        threads.set_threads(1)
        assert threads.pick(serial, parallel, 1 << 40) is serial
        numba.set_num_threads(2)
        assert threads.pick(serial, parallel, 1 << 40) is serial    # not probed since
        threads._probe["next"] = 0.0
        assert threads.pick(serial, parallel, 1 << 40) is parallel
    finally:
        threads.set_threads(before)


IDLE_POOL_PROBE = """
import os, time
import cogcore                      # before numpy, as the command line does
import numpy as np
from cogcore.kernels import threads

def others():                       # CPU seconds of every thread but the main one (whose id is the pid)
    return sum(int(open(f"/proc/self/task/{tid}/schedstat").read().split()[0])
               for tid in os.listdir("/proc/self/task") if int(tid) != os.getpid()) / 1e9

A = np.ones((256, 256), np.float32)
threads.thread_ids_parallel(1000), A @ A                            # both pools started
serial = busy = 0.0
for _ in range(10):                 # a parallel region and a BLAS call, then 20 ms of serial work
    threads.thread_ids_parallel(1000), A @ A
    before, t0 = others(), time.perf_counter()
    while time.perf_counter() < t0 + 0.02:
        pass
    serial += time.perf_counter() - t0
    busy += others() - before
print(busy, serial)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="per-thread CPU time from Linux's /proc")
def test_idle_thread_pools_sleep_soon_instead_of_spinning():
    """While the main thread works alone (after a parallel region and a BLAS call) the other threads
    sleep after ~0.1 ms (libgomp's default spins ~5 ms, OpenBLAS's ~0.1 s): a spinning worker held
    the second core through a decode step's serial kernels (docs/performance.md, "Two threads")."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")}
    env.update(NUMBA_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    busy, serial = map(float, subprocess.run([sys.executable, "-c", IDLE_POOL_PROBE], env=env, capture_output=True,
                                             text=True, check=True).stdout.split())
    assert busy < 0.1 * serial, (busy, serial)     # ~0.005 here; libgomp's default 0.2-0.25, OpenBLAS's 0.5


def test_warm_up_compiles_or_loads_every_op():
    seconds = NB.warm_up()
    assert seconds >= 0
    for serial, parallel in threads.PARALLEL_KERNELS:
        if serial is threads.thread_ids_serial:
            continue
        assert serial.signatures, serial.py_func.__qualname__
        if numba.get_num_threads() > 1:
            assert parallel.signatures, parallel.py_func.__qualname__


def test_warm_up_calls_the_float_kernels_of_the_stored_dtypes_only():
    """warm_up(stored=...) (the CLI passes the model's `Weights.float_dtypes`) exercises the linear and MoE
    kernels over those weight dtypes only: the shipped float32 model's first run compiles no bfloat16 or
    float16 kernel."""
    seen = set()

    class Recording(NumbaOps):
        @staticmethod
        def linear(x, W):
            seen.add(W.dtype)
            return NumbaOps.linear(x, W)

        @staticmethod
        def moe(x, router, gate_proj, *rest):
            seen.add(gate_proj.dtype)
            return NumbaOps.moe(x, router, gate_proj, *rest)

    backends._exercise(Recording, {np.dtype(np.float32)})
    assert seen == {np.dtype(np.float32)}
    seen.clear()
    backends._exercise(Recording)
    assert seen == {np.dtype(np.float32), np.dtype(np.uint16), np.dtype(np.float16)}
    shipped = cogcore.load(os.path.join(os.path.dirname(__file__), "..", "weights", "cogcore-tiny"), backend="numpy")
    assert shipped.weights.float_dtypes == {np.dtype(np.float32)}


def test_kernels_import_nothing_from_cogcore():
    """Dependencies run one way: cogcore.backends binds the kernels, the kernels know no cogcore."""
    folder = os.path.dirname(cogcore.kernels.__file__)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            tree = ast.parse(open(os.path.join(folder, name)).read())
            for node in ast.walk(tree):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                assert not any(m.split(".")[0] == "cogcore" for m in mods), (name, mods)


def test_expf_is_within_one_ulp_of_exp_and_keeps_the_special_values():
    from cogcore.kernels.expf import expf

    @numba.njit
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = expf(x[i])

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-90, 90, 1_000_000), rng.uniform(-1, 1, 1_000_000)]).astype(np.float32)
    out = np.empty_like(x)
    apply(x, out)
    exact = np.exp(x.astype(np.float64))                          # float64: the exact value to ~1e-16
    normal = (exact >= 2.0 ** -125) & (exact <= np.finfo(np.float32).max)
    ulps = np.abs(out[normal] - exact[normal]) / np.spacing(exact[normal].astype(np.float32))
    assert normal.sum() > 1_900_000 and ulps.max() <= 1.0
    assert np.all(out[exact < 2.0 ** -125] <= 2.0 ** -125)        # flushed towards 0 (the docstring)
    special = np.array([-np.inf, -1e4, -104.0, 0.0, -0.0, 1e4, np.inf, np.nan], np.float32)
    got = np.empty_like(special)
    apply(special, got)
    np.testing.assert_array_equal(got, [0, 0, 0, 1, 1, np.inf, np.inf, np.nan])
    apply(special.astype(np.float64), got)                        # a float64 argument is rounded first
    np.testing.assert_array_equal(got, [0, 0, 0, 1, 1, np.inf, np.inf, np.nan])


@pytest.mark.parametrize("union_ratio", [0, 1e9])
def test_nsa_prefill_matches_reference_by_blas_and_by_the_per_query_kernel(monkeypatch, union_ratio):
    """The selected branch of a prefill block goes to BLAS over the union of its kept blocks, or to
    the per-query kernel when that union is large: each way alone against the reference."""
    from cogcore.kernels import sparse_attention
    monkeypatch.setattr(NB, "nsa_attention", functools.partial(sparse_attention.nsa_attention, union_ratio=union_ratio))
    parity_nsa_attention()
