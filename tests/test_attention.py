"""Full / sliding GQA attention against naive loops from SPEC 4.2."""

import numpy as np
import pytest

from cogcore.blocks.attention import attention
from cogcore.model import Pass

import naive
from conftest import build_model, small_config

TOL = dict(rtol=1e-4, atol=1e-5)


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
