"""The Numba kernels (kernels/) against their NumPy twins (cogcore.blocks), on random inputs
of odd sizes, every storage dtype where weights are read, and whole models end to end."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import build_model, small_config

import kernels
from cogcore import sampling as ref_sampling
from cogcore.blocks import ReferenceOps
from cogcore.blocks.sparse_attention import NSAShape
from cogcore.dtypes import f32, to_storage
from kernels import NumbaOps
from kernels import linear as klinear
from kernels import sampling as ksampling

REF, NB = ReferenceOps(), NumbaOps()
DTYPES = ["F32", "F16", "BF16"]


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def close(a, b, tol=2e-5):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max(initial=0))))


def test_dot_bf16_widens_every_finite_pattern_exactly():
    """The register widening (`u << 16`, bitcast) against a naive loop over the format's definition:
    one nonzero term per dot, so the sum is exactly the widened weight."""
    from numba import njit

    bits = np.arange(2**16, dtype=np.uint16)
    bits = bits[(bits & 0x7F80) != 0x7F80]                  # finite patterns only (inf/NaN poison the sum)
    one_hot = njit(lambda w, j: klinear.dot_bf16(np.eye(len(w), dtype=np.float32)[j], w))
    rng = np.random.default_rng(0)
    for u in rng.choice(bits, 300):
        w = np.array([0, u, 0], np.uint16)
        sign = -1.0 if u & 0x8000 else 1.0
        exp, frac = (int(u) >> 7) & 0xFF, int(u) & 0x7F
        want = sign * (2.0 ** (exp - 127) * (1 + frac / 128) if exp else 2.0 ** -126 * frac / 128)
        assert one_hot(w, 1) == np.float32(want)


@pytest.mark.parametrize("tag", DTYPES)
@pytest.mark.parametrize("T", [1, 3, 13])
def test_linear(tag, T):
    rng = np.random.default_rng(T)
    W = to_storage(rand(rng, 77, 45), tag)
    x = rand(rng, T, 45)
    close(NB.linear(x, W), REF.linear(x, W))


def test_widen_is_bit_exact_including_specials():
    h = np.arange(65536, dtype=np.uint16).view(np.float16).reshape(256, 256)
    got, want = klinear.widen(h), h.astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    b = np.arange(0, 65536, 7, dtype=np.uint16)[:9000].reshape(90, 100)
    assert np.array_equal(klinear.widen(b).view(np.uint32), f32(b).view(np.uint32))


@pytest.mark.parametrize("T", [1, 5, 70])
def test_norms_and_fused_residual(T):
    rng = np.random.default_rng(T)
    x, y, w, b = rand(rng, T, 37), rand(rng, T, 37), rand(rng, 37), rand(rng, 37)
    close(NB.rmsnorm(x, w, 1e-5), REF.rmsnorm(x, w, 1e-5))
    close(NB.layernorm(x, w, b, 1e-5), REF.layernorm(x, w, b, 1e-5))
    for got, want in zip(NB.add_rmsnorm(x, y, to_storage(w, "BF16"), 1e-5),
                         REF.add_rmsnorm(x, y, to_storage(w, "BF16"), 1e-5)):
        close(got, want)
    for got, want in zip(NB.add_layernorm(x, y, w, b, 1e-6), REF.add_layernorm(x, y, w, b, 1e-6)):
        close(got, want)


def test_rope_large_positions():
    rng = np.random.default_rng(1)
    u = rand(rng, 5, 3, 10)
    pos = np.array([0, 1, 77, 4097, 200001])
    close(NB.rope(u, pos, 10000.0), REF.rope(u, pos, 10000.0), 1e-5)


@pytest.mark.parametrize("T,S,window", [(1, 1, 0), (1, 700, 0), (1, 700, 33), (9, 9, 0), (7, 300, 5),
                                        (6, 11, 0)])
def test_attention(T, S, window):
    rng = np.random.default_rng(S + T)
    H, Hkv, hd = 6, 3, 7
    q, k, v = rand(rng, T, H, hd), rand(rng, S, Hkv, hd), rand(rng, S, Hkv, hd)
    q_pos = np.arange(S - T, S)
    k_pos = np.arange(S)
    close(NB.attention(q, k, v, q_pos, k_pos, window), REF.attention(q, k, v, q_pos, k_pos, window))


def test_attention_ring_order():
    """Sliding attention hands over keys from a ring: positions ascending but not from 0."""
    rng = np.random.default_rng(3)
    q, k, v = rand(rng, 2, 4, 6), rand(rng, 9, 2, 6), rand(rng, 9, 2, 6)
    k_pos, q_pos = np.arange(20, 29), np.array([27, 28])
    close(NB.attention(q, k, v, q_pos, k_pos, 5), REF.attention(q, k, v, q_pos, k_pos, 5))


NSA_SHAPES = [NSAShape(4, 2, 4, 4, 6), NSAShape(8, 4, 16, 3, 5), NSAShape(6, 3, 9, 5, 11)]


@pytest.mark.parametrize("shape", NSA_SHAPES)
@pytest.mark.parametrize("T", [1, 17])
def test_nsa_attention(shape, T):
    rng = np.random.default_rng(T + shape.block)
    S, H, Hkv, hd = 150, 6, 3, 5
    K, V, q = rand(rng, S, Hkv, hd), rand(rng, S, Hkv, hd), rand(rng, T, H, hd, scale=3.0)
    B = (S - shape.block) // shape.stride + 1
    kc, vc = rand(rng, B, Hkv, hd), rand(rng, B, Hkv, hd)
    q_pos = np.concatenate([[0, 2, 5], np.arange(S - T + 3, S)])[:T] if T > 1 else np.array([S - 1])
    got, want = NB.nsa_attention(q, K, V, kc, vc, q_pos, shape), REF.nsa_attention(q, K, V, kc, vc, q_pos, shape)
    assert np.array_equal(got[3], want[3])                     # the same blocks kept
    for g, w in zip(got[:3], want[:3]):
        close(g, w)


@pytest.mark.parametrize("tag", DTYPES)
def test_nsa_compress(tag):
    rng = np.random.default_rng(5)
    shape, hd, Hkv, hc = NSAShape(6, 3, 9, 5, 11), 5, 3, 7
    X = rand(rng, 40, Hkv, hd)
    pos, fc1, fc2 = (to_storage(a, tag) for a in (rand(rng, 6, hd), rand(rng, hc, 6 * hd), rand(rng, hd, hc)))
    for first, last in ((0, 1), (2, 12)):
        close(NB.nsa_compress(X, first, last, pos, fc1, fc2, shape),
              REF.nsa_compress(X, first, last, pos, fc1, fc2, shape))


@pytest.mark.parametrize("T", [1, 6])
def test_wkv7(T):
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


@pytest.mark.parametrize("tag", DTYPES)
@pytest.mark.parametrize("T,norm_topk", [(1, True), (3, False), (29, True)])
def test_moe(tag, T, norm_topk):
    rng = np.random.default_rng(T)
    D, E, F, k = 19, 7, 13, 3
    x = rand(rng, T, D)
    router, gate, up, down = (to_storage(a, tag) for a in
                              (rand(rng, E, D), rand(rng, E, F, D), rand(rng, E, F, D), rand(rng, E, D, F)))
    y1, c1 = NB.moe(x, router, gate, up, down, k, norm_topk)
    y2, c2 = REF.moe(x, router, gate, up, down, k, norm_topk)
    assert np.array_equal(c1, c2)
    close(y1, y2)


@pytest.mark.parametrize("top_k,top_p,min_p", [(0, 1.0, 0.0), (5, 1.0, 0.0), (0, 0.9, 0.0),
                                               (40, 0.5, 0.05), (0, 0.999, 0.01), (3000, 1.0, 0.0)])
def test_sampling_filters(top_k, top_p, min_p):
    rng = np.random.default_rng(top_k)
    logits = rand(rng, 2001, scale=2.0)
    logits[7] = logits[8] = logits.max() + 1         # a tie at the top: the lower id ranks first
    for temp in (0.7, 1.3):
        got = ksampling.filter_probs(logits, temp, top_k, top_p, min_p)
        want = ref_sampling.token_probabilities(logits, temp, top_k, top_p, min_p)
        assert np.array_equal(got > 0, want > 0)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


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


@pytest.mark.parametrize("dtype,norm", [("float32", "rmsnorm"), ("bfloat16", "layernorm"),
                                        ("float16", "rmsnorm")])
def test_model_logits_match_reference(dtype, norm):
    cfg = mixed_config(norm_type=norm, num_shared_experts=1 if norm == "layernorm" else 0,
                       shared_expert_intermediate_size=5 if norm == "layernorm" else 0)
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


def test_parallel_variants_match_reference(monkeypatch):
    """Every kernel also has a multi-threaded variant, used above PARALLEL_MIN_WORK: force it."""
    monkeypatch.setattr(klinear, "PARALLEL_MIN_WORK", 0)
    cfg = mixed_config()
    ref, tensors = build_model(cfg, seed=3, dtype="bfloat16", backend="numpy")
    nb, _ = build_model(cfg, backend="numba", tensors=tensors)
    ids = np.random.default_rng(2).integers(0, cfg["vocab_size"], 23)
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


def test_warm_up_compiles_everything():
    assert kernels.warm_up() >= 0
