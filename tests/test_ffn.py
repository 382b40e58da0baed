"""Dense SwiGLU and RWKV channel mix (SPEC 4.6) against their formulas."""

import numpy as np

from test_moe import ffn_layer, run_ffn

import naive

TOL = dict(rtol=1e-4, atol=1e-5)


def test_dense_swiglu_against_formula(rng):
    model, W, cfg = ffn_layer("dense")
    x = rng.standard_normal((6, cfg["hidden_size"])).astype(np.float32)
    got, _, _ = run_ffn(model, x)
    g, u, d = (W[f"model.layers.0.mlp.{n}_proj.weight"].astype(np.float64) for n in ("gate", "up", "down"))
    for t in range(6):
        xt = x[t].astype(np.float64)
        hidden = [(g[f] @ xt) / (1 + np.exp(-(g[f] @ xt))) * (u[f] @ xt) for f in range(cfg["intermediate_size"])]
        np.testing.assert_allclose(got[t], d @ np.array(hidden), **TOL)


def test_channel_mix_against_formula_and_across_chunks(rng):
    model, W, cfg = ffn_layer("channel_mix")
    T = 9
    x = rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32)
    want = naive.channel_mix(x.astype(np.float64), W, "model.layers.0")
    whole, _, _ = run_ffn(model, x)
    np.testing.assert_allclose(whole, want, **TOL)
    state = model.layers[0].ffn.new_state()
    parts = []
    for lo, hi in ((0, 1), (1, 5), (5, 6), (6, 9)):
        out, _, state = run_ffn(model, x[lo:hi], lo, state)
        parts.append(out)
    np.testing.assert_allclose(np.concatenate(parts), want, **TOL)
    # position 0 sees x_prev = 0: k = x * (1 - x_k)
    xk = W["model.layers.0.mlp.x_k"].astype(np.float64)
    k0 = x[0] * (1 - xk)
    h = np.maximum(W["model.layers.0.mlp.key.weight"] @ k0, 0) ** 2
    np.testing.assert_allclose(whole[0], W["model.layers.0.mlp.value.weight"] @ h, **TOL)
