"""Norms, RoPE and full / sliding GQA attention against naive loops from SPEC 4, 4.1, 4.2."""

import math

import numpy as np
import pytest

import cogcore
from cogcore.blocks import ReferenceOps
from cogcore.blocks.attention import attention
from cogcore.blocks.norm import layernorm, rmsnorm
from cogcore.blocks.rope import rope
from cogcore.model import Pass

import naive
from conftest import build_model, small_config

TOL = dict(rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- norms
def test_rmsnorm_against_formula(rng):
    x = rng.standard_normal((7, 13)).astype(np.float32) * 3
    w = rng.standard_normal(13).astype(np.float32)
    got = rmsnorm(x, w, 1e-5)
    for t in range(7):
        ms = sum(float(v) ** 2 for v in x[t]) / 13
        want = [float(x[t, j]) / math.sqrt(ms + 1e-5) * float(w[j]) for j in range(13)]
        np.testing.assert_allclose(got[t], want, **TOL)


def test_layernorm_against_formula_biased_variance(rng):
    x = (rng.standard_normal((5, 11)) * 2 + 4).astype(np.float32)
    w, b = rng.standard_normal(11).astype(np.float32), rng.standard_normal(11).astype(np.float32)
    got = layernorm(x, w, b, 1e-5)
    for t in range(5):
        row = [float(v) for v in x[t]]
        mu = sum(row) / 11
        var = sum((v - mu) ** 2 for v in row) / 11                   # biased (divide by D, not D-1)
        want = [(v - mu) / math.sqrt(var + 1e-5) * float(w[j]) + float(b[j]) for j, v in enumerate(row)]
        np.testing.assert_allclose(got[t], want, **TOL)


def test_norm_eps_is_used(rng):
    x = np.full((1, 4), 1e-3, np.float32)
    w = np.ones(4, np.float32)
    # mean(x^2) = 1e-6 is comparable with eps = 1e-6: the result is 1e-3 / sqrt(2e-6)
    np.testing.assert_allclose(rmsnorm(x, w, 1e-6), 1e-3 / math.sqrt(2e-6), rtol=1e-5)
    np.testing.assert_allclose(layernorm(x, w, np.zeros(4, np.float32), 1e-6), 0.0, atol=1e-6)


def test_norm_bf16_weights_widened():
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    w_bits = np.array([0x3FC0, 0x4000, 0xBF80], np.uint16)              # 1.5, 2.0, -1.0 in bfloat16
    rms = math.sqrt((1 + 4 + 9) / 3 + 1e-5)
    np.testing.assert_allclose(rmsnorm(x, w_bits, 1e-5)[0], [1.5 / rms, -4.0 / rms, -3.0 / rms], rtol=1e-6)


# ---------------------------------------------------------------- RoPE
def test_rope_is_complex_rotation(rng):
    hd, theta = 10, 500.0
    u = rng.standard_normal((6, 3, hd)).astype(np.float32)
    positions = np.array([0, 1, 2, 7, 100, 12345])
    got = rope(u, positions, theta)
    for t, p in enumerate(positions):
        for h in range(3):
            np.testing.assert_allclose(got[t, h], naive.rope_head(u[t, h].astype(np.float64), p, theta),
                                       rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[0], u[0])                        # position 0 is the identity


def test_rope_matches_rotate_half_formula(rng):
    hd, theta = 8, 10000.0
    u = rng.standard_normal((1, 1, hd)).astype(np.float64)
    p = 37
    inv = np.array([theta ** (-2 * j / hd) for j in range(hd // 2)])
    cos, sin = np.cos(np.concatenate([p * inv, p * inv])), np.sin(np.concatenate([p * inv, p * inv]))
    a, b = u[0, 0, :hd // 2], u[0, 0, hd // 2:]
    want = u[0, 0] * cos + np.concatenate([-b, a]) * sin
    np.testing.assert_allclose(rope(u.astype(np.float32), np.array([p]), theta)[0, 0], want, rtol=1e-5, atol=1e-6)


def test_rope_relative_position_property(rng):
    hd, theta = 16, 10000.0
    q = rng.standard_normal((1, 1, hd)).astype(np.float32)
    k = rng.standard_normal((1, 1, hd)).astype(np.float32)

    def dot(p, pk):
        return float(np.dot(rope(q, np.array([p]), theta)[0, 0], rope(k, np.array([pk]), theta)[0, 0]))

    for delta in (0, 3, 17):
        ref = dot(delta, 0)
        for base in (5, 250, 4096):
            assert dot(base + delta, base) == pytest.approx(ref, rel=1e-4, abs=1e-4)
    assert abs(dot(3, 0) - dot(0, 3)) > 1e-3        # sign of the offset matters (not symmetric)


def test_rope_preserves_norm_and_is_precise_at_large_positions(rng):
    hd = 12
    u = rng.standard_normal((3, 2, hd)).astype(np.float32)
    pos = np.array([100_000, 131_071, 1_000_003])
    got = rope(u, pos, 10000.0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(u, axis=-1), rtol=1e-5)
    for t, p in enumerate(pos):
        for h in range(2):
            # float64 angles: the error is float32 round-off, not position-sized
            np.testing.assert_allclose(got[t, h], naive.rope_head(u[t, h].astype(np.float64), int(p), 10000.0),
                                       atol=2e-6 * np.abs(u[t, h]).max() * 4)


# ---------------------------------------------------------------- attention
def naive_attention(q, k, v, q_pos, k_pos, window):
    T, H, hd = q.shape
    Hkv = k.shape[1]
    out = np.zeros((T, H, hd))
    for t in range(T):
        for h in range(H):
            g = h // (H // Hkv)
            keys = [j for j in range(len(k_pos))
                    if k_pos[j] <= q_pos[t] and (window == 0 or k_pos[j] >= q_pos[t] - window + 1)]
            out[t, h] = naive.attend(q[t, h].astype(np.float64), [k[j, g].astype(np.float64) for j in keys],
                                     [v[j, g].astype(np.float64) for j in keys])
    return out


@pytest.mark.parametrize("H,Hkv,window", [(6, 3, 0), (6, 2, 0), (4, 4, 0), (6, 1, 3), (6, 2, 1), (6, 3, 5)])
def test_attention_function_against_naive_loops(rng, H, Hkv, window):
    T, S, hd = 5, 11, 6
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    k = rng.standard_normal((S, Hkv, hd)).astype(np.float32)
    v = rng.standard_normal((S, Hkv, hd)).astype(np.float32)
    q_pos, k_pos = np.arange(6, 11), np.arange(S)                # a chunk continuing a cache
    got = attention(q, k, v, q_pos, k_pos, window)
    np.testing.assert_allclose(got, naive_attention(q, k, v, q_pos, k_pos, window), **TOL)


def test_gqa_group_mapping(rng):
    """Query head h reads kv head h // (H / Hkv): with constant values per kv head, the output names it."""
    T, H, Hkv, hd = 3, 6, 3, 4
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    k = rng.standard_normal((T, Hkv, hd)).astype(np.float32)
    v = np.broadcast_to(np.arange(Hkv, dtype=np.float32)[None, :, None], (T, Hkv, hd)).copy()
    out = attention(q, k, v, np.arange(T), np.arange(T))
    np.testing.assert_allclose(out[:, :, 0], np.tile([0, 0, 1, 1, 2, 2], (T, 1)), atol=1e-6)


def one_layer(kind, **over):
    cfg = small_config(num_hidden_layers=1, layer_types=[kind], mlp_types=["dense"], **over)
    model, W = build_model(cfg, seed=11)
    return model, W, cfg


@pytest.mark.parametrize("kind,window", [("full_attention", 5), ("sliding_attention", 5),
                                         ("sliding_attention", 1), ("sliding_attention", 40)])
def test_attention_mixer_against_naive(rng, kind, window):
    model, W, cfg = one_layer(kind, sliding_window=window)
    T = 13
    x = rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32)
    mixer = model.layers[0].mixer
    got = mixer(x, mixer.new_state(), Pass(positions=np.arange(T)))
    want = naive.attention_mixer(x.astype(np.float64), W, "model.layers.0", cfg, kind)
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("kind", ["full_attention", "sliding_attention"])
def test_attention_mixer_in_chunks(rng, kind):
    model, W, cfg = one_layer(kind, sliding_window=4)
    T = 14
    x = rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32)
    mixer = model.layers[0].mixer
    state = mixer.new_state()
    parts, start = [], 0
    for size in (3, 1, 1, 6, 3):
        parts.append(mixer(x[start:start + size], state, Pass(positions=np.arange(start, start + size))))
        start += size
    want = naive.attention_mixer(x.astype(np.float64), W, "model.layers.0", cfg, kind)
    np.testing.assert_allclose(np.concatenate(parts), want, **TOL)
    if kind == "sliding_attention":
        assert state.k.shape[0] == 4                                  # memory bounded by the window


def test_reference_ops_linear_convention(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    Wt = rng.standard_normal((5, 3)).astype(np.float32)              # [out, in]
    want = [[sum(float(x[t, i]) * float(Wt[o, i]) for i in range(3)) for o in range(5)] for t in range(2)]
    np.testing.assert_allclose(ReferenceOps.linear(x, Wt), want, **TOL)
    assert ReferenceOps.linear(x, Wt.astype(np.float16)).dtype == np.float32
