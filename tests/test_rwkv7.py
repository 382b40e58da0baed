"""RWKV-7 time mix (SPEC 4.4) against an explicit per-token recurrence, and its state."""

import math

import numpy as np
import pytest

from cogcore.blocks.rwkv7 import wkv7
from cogcore.model import Pass

import naive
from conftest import build_model, small_config

TOL = dict(rtol=1e-4, atol=1e-5)


def rwkv_model(n_layers=1, seed=4, **over):
    over.setdefault("mlp_types", ["dense"] * n_layers)
    cfg = small_config(num_hidden_layers=n_layers, layer_types=["recurrent"] * n_layers, **over)
    model, W = build_model(cfg, seed=seed)
    return model, W, cfg


def test_wkv7_kernel_against_elementwise_recurrence(rng):
    T, Hr, N = 6, 2, 5
    r, k, v = (rng.standard_normal((T, Hr, N)).astype(np.float32) for _ in range(3))
    w = rng.uniform(0.55, 1.0, (T, Hr, N)).astype(np.float32)
    kk = rng.standard_normal((T, Hr, N)).astype(np.float32)
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    a = rng.uniform(0, 1, (T, Hr, N)).astype(np.float32)
    S0 = rng.standard_normal((Hr, N, N)).astype(np.float32)
    y, S = wkv7(r, w, k, v, kk, a, S0.copy())
    ref = S0.astype(np.float64)
    for t in range(T):
        for h in range(Hr):
            new = np.zeros((N, N))
            for i in range(N):
                sa = sum(ref[h, i, m] * -float(kk[t, h, m]) for m in range(N))
                for j in range(N):
                    new[i, j] = (ref[h, i, j] * w[t, h, j] + sa * kk[t, h, j] * a[t, h, j]
                                 + v[t, h, i] * k[t, h, j])
            ref[h] = new
            np.testing.assert_allclose(y[t, h], [sum(new[i, j] * r[t, h, j] for j in range(N)) for i in range(N)],
                                       **TOL)
    np.testing.assert_allclose(S, ref, **TOL)
    assert S.dtype == np.float32


def test_first_recurrent_mixer_against_naive(rng):
    model, W, cfg = rwkv_model()
    T = 9
    x = rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32)
    mixer = model.layers[0].mixer
    state = mixer.new_state()
    ctx = Pass(positions=np.arange(T))
    got = mixer(x, state, ctx)
    want, v_first, x_prev, S = naive.rwkv_mixer(x.astype(np.float64), W, "model.layers.0", cfg)
    np.testing.assert_allclose(got, want, **TOL)
    np.testing.assert_allclose(ctx.v_first, v_first, **TOL)          # v of the first layer
    np.testing.assert_array_equal(state.x_prev, x[-1])
    assert state.S.shape == (3, 10, 10) and state.S.dtype == np.float32
    np.testing.assert_allclose(state.S, S, rtol=1e-4, atol=1e-4)


def test_value_residual_in_later_recurrent_layers(rng):
    """Layer 1 mixes its v toward v_first of layer 0 (SPEC: v0/v1/v2 unused in the first layer)."""
    model, W, cfg = rwkv_model(n_layers=2)
    T = 7
    x0 = rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32)
    x1 = rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32)
    ctx = Pass(positions=np.arange(T))
    m0, m1 = model.layers[0].mixer, model.layers[1].mixer
    m0(x0, m0.new_state(), ctx)
    got = m1(x1, m1.new_state(), ctx)
    _, v_first, _, _ = naive.rwkv_mixer(x0.astype(np.float64), W, "model.layers.0", cfg)
    want, _, _, _ = naive.rwkv_mixer(x1.astype(np.float64), W, "model.layers.1", cfg, v_first=v_first)
    np.testing.assert_allclose(got, want, **TOL)
    alone, _, _, _ = naive.rwkv_mixer(x1.astype(np.float64), W, "model.layers.1", cfg)
    assert np.abs(alone - want).max() > 1e-3                            # the residual changes the output


def test_first_layer_ignores_v0_v1_v2(rng):
    model, W, cfg = rwkv_model()
    T = 4
    x = rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32)
    W2 = dict(W)
    for name in ("v0", "v1", "v2"):
        W2[f"model.layers.0.rwkv.{name}"] = W[f"model.layers.0.rwkv.{name}"] * 3 + 1
    other, _ = build_model(cfg, tensors=W2)
    a = model.layers[0].mixer(x, model.layers[0].mixer.new_state(), Pass(positions=np.arange(T)))
    b = other.layers[0].mixer(x, other.layers[0].mixer.new_state(), Pass(positions=np.arange(T)))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sizes", [[1] * 11, [3, 5, 3], [10, 1]])
def test_state_carries_across_chunks(rng, sizes):
    """Feeding a sequence in pieces equals the explicit per-token recurrence over the whole."""
    model, W, cfg = rwkv_model(n_layers=2, seed=9)
    T = sum(sizes)
    xs = [rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32) for _ in range(2)]
    states = [layer.mixer.new_state() for layer in model.layers]
    outs, start = [[], []], 0
    for size in sizes:
        ctx = Pass(positions=np.arange(start, start + size))
        for li in range(2):
            mixer = model.layers[li].mixer
            outs[li].append(mixer(xs[li][start:start + size], states[li], ctx))
        start += size
    want0, v_first, _, S0 = naive.rwkv_mixer(xs[0].astype(np.float64), W, "model.layers.0", cfg)
    want1, _, _, S1 = naive.rwkv_mixer(xs[1].astype(np.float64), W, "model.layers.1", cfg, v_first=v_first)
    np.testing.assert_allclose(np.concatenate(outs[0]), want0, **TOL)
    np.testing.assert_allclose(np.concatenate(outs[1]), want1, **TOL)
    np.testing.assert_allclose(states[0].S, S0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(states[1].S, S1, rtol=1e-4, atol=1e-4)


def test_whole_model_recurrent_state_one_token_at_a_time(rng):
    model, W, cfg = rwkv_model(n_layers=3, seed=2, mlp_types=["channel_mix", "dense", "moe"])
    tokens = rng.integers(0, cfg["vocab_size"], 10)
    want, _ = naive.forward(W, cfg, tokens)
    cache = model.new_cache()
    got = np.concatenate([model.forward([tok], cache=cache) for tok in tokens])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert cache.length == 10


def test_group_norm_eps_is_64e_5(rng):
    """With tiny values the per-head variance is comparable with the eps, so the eps shows."""
    model, W, cfg = rwkv_model(seed=6)
    W = dict(W)
    W["model.layers.0.rwkv.value.weight"] = W["model.layers.0.rwkv.value.weight"] * np.float32(0.02)
    model, _ = build_model(cfg, tensors=W)
    T = 6
    x = rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32)
    got = model.layers[0].mixer(x, model.layers[0].mixer.new_state(), Pass(positions=np.arange(T)))
    X = x.astype(np.float64)
    want, _, _, _ = naive.rwkv_mixer(X, W, "model.layers.0", cfg)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    old = naive.GROUP_NORM_EPS
    try:
        naive.GROUP_NORM_EPS = 1e-5
        other, _, _, _ = naive.rwkv_mixer(X, W, "model.layers.0", cfg)
    finally:
        naive.GROUP_NORM_EPS = old
    assert np.abs(other - want).max() > 100 * np.abs(got - want).max()


def test_decay_range(rng):
    """w = exp(-exp(-0.5) sigmoid(.)) lies in (exp(-exp(-0.5)), 1) = (0.545, 1)."""
    lo = math.exp(-math.exp(-0.5))
    assert abs(lo - 0.5452) < 1e-4
    model, W, cfg = rwkv_model()
    W = dict(W)
    W["model.layers.0.rwkv.w0"] = np.full(cfg["hidden_size"], 40.0, np.float32)   # sigmoid -> 1
    W["model.layers.0.rwkv.w2"] = np.zeros_like(W["model.layers.0.rwkv.w2"])
    W["model.layers.0.rwkv.a0"] = np.full(cfg["hidden_size"], -40.0, np.float32)  # a -> 0
    W["model.layers.0.rwkv.a2"] = np.zeros_like(W["model.layers.0.rwkv.a2"])
    model, _ = build_model(cfg, tensors=W)
    x = rng.standard_normal((2, cfg["hidden_size"])).astype(np.float32)
    mixer = model.layers[0].mixer
    st = mixer.new_state()
    mixer(x[:1], st, Pass(positions=np.arange(1)))
    S1 = st.S.copy()
    x_prev = st.x_prev.copy()
    mixer(x[1:], st, Pass(positions=np.arange(1, 2)))
    fresh = mixer.new_state()                     # the same token, from a zero state
    fresh.x_prev = x_prev
    mixer(x[1:], fresh, Pass(positions=np.arange(1, 2)))
    # a = 0 removes the kk term, so S2 = lo * S1 + v k^T, and v k^T is what a zero state gets
    assert np.abs(S1).max() > 0.1
    np.testing.assert_allclose(st.S, np.float32(lo) * S1 + fresh.S, rtol=1e-5, atol=1e-6)
    _, _, _, S2 = naive.rwkv_mixer(x.astype(np.float64), W, "model.layers.0", cfg)
    np.testing.assert_allclose(st.S, S2, rtol=1e-4, atol=1e-5)


def test_kk_normalisations_where_their_eps_differ():
    """`clamp` (torch's F.normalize) and `epsilon` (fla's fused l2norm) on a tiny vector, by hand."""
    from cogcore.blocks.rwkv7 import l2_normalize
    x = np.array([[3e-4, 4e-4]], np.float32)                         # |x| = 5e-4
    np.testing.assert_allclose(l2_normalize(x, "clamp"), [[0.6, 0.8]], rtol=1e-6)
    np.testing.assert_allclose(l2_normalize(x, "epsilon"), x / np.sqrt(25e-8 + 1e-6), rtol=1e-6)
    assert np.array_equal(l2_normalize(np.zeros((1, 2), np.float32), "clamp"), [[0, 0]])
