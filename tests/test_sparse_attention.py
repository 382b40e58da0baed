"""Sparse hierarchical attention (NSA, SPEC 4.3) against a brute-force loop per query."""

import numpy as np
import pytest

from cogcore.blocks.attention import attention
from cogcore.blocks.sparse_attention import NSAShape, compress, nsa_attention, overlap
from cogcore.model import Pass

import naive
from conftest import build_model, small_config

TOL = dict(rtol=1e-4, atol=1e-5)


def nsa_layer(seed=7, **over):
    cfg = small_config(num_hidden_layers=1, layer_types=["sparse_attention"], mlp_types=["dense"], **over)
    model, W = build_model(cfg, seed=seed)
    return model, W, cfg


def run_mixer(model, x, sizes=None):
    mixer = model.layers[0].mixer
    state = mixer.new_state()
    sizes = sizes or [len(x)]
    outs, kept, start = [], [], 0
    for size in sizes:
        ctx = Pass(positions=np.arange(start, start + size))
        outs.append(mixer(x[start:start + size], state, ctx))
        kept.append(ctx.selected_blocks[0])
        start += size
    return np.concatenate(outs), np.concatenate(kept), state


def kept_as_lists(kept):
    """[T, Hkv, n] with -1 pads -> {(t, g): sorted list}."""
    return {(t, g): sorted(int(b) for b in kept[t, g] if b >= 0)
            for t in range(kept.shape[0]) for g in range(kept.shape[1])}


def test_compression_mlp_against_loop(rng):
    shape = NSAShape(block=6, stride=2, select_block=4, select_count=3, window=4)
    hd, hc, S, Hkv = 5, 7, 17, 2
    X = rng.standard_normal((S, Hkv, hd)).astype(np.float32)
    pos = rng.standard_normal((6, hd)).astype(np.float32)
    fc1 = rng.standard_normal((hc, 6 * hd)).astype(np.float32)
    fc2 = rng.standard_normal((hd, hc)).astype(np.float32)
    got = compress(X, 1, 6, pos, fc1, fc2, shape)                      # blocks 1..5: [2, 8) .. [10, 16)
    assert got.shape == (5, Hkv, hd)
    for bi, i in enumerate(range(1, 6)):
        for g in range(Hkv):
            flat = []
            for r in range(6):                                        # row-major: position-major
                for c in range(hd):
                    flat.append(float(X[i * 2 + r, g, c]) + float(pos[r, c]))
            hidden = [naive.silu(sum(float(fc1[o, m]) * flat[m] for m in range(6 * hd))) for o in range(hc)]
            want = [sum(float(fc2[d, o]) * hidden[o] for o in range(hc)) for d in range(hd)]
            np.testing.assert_allclose(got[bi, g], want, **TOL)


def test_overlap_weights_of_paper_shape():
    shape = NSAShape(block=32, stride=16, select_block=64, select_count=16, window=512)
    w = overlap(12, 4, shape) / shape.stride
    for i in range(12):
        for j in range(4):
            assert w[i, j] == naive.overlap_count(i, j, 32, 16, 64) / 16
    # selection block 1 = [64, 128) weighs compressed blocks 3..7 as 1, 2, 2, 2, 1
    np.testing.assert_array_equal(w[2:9, 1], [0, 1, 2, 2, 2, 1, 0])


@pytest.mark.parametrize("over", [
    dict(),                                                            # l 4, s 2, l' 4, n 4, w 6
    dict(nsa_compress_block=6, nsa_select_block=4, nsa_select_count=5, nsa_window=3),
    dict(nsa_compress_block=2, nsa_compress_stride=2, nsa_select_block=6, nsa_select_count=3, nsa_window=9),
    dict(num_key_value_heads=2, nsa_compress_block=4, nsa_compress_stride=4, nsa_select_block=8,
         nsa_select_count=3),
])
def test_mixer_against_brute_force(rng, over):
    model, W, cfg = nsa_layer(**over)
    T = 37
    x = rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32)
    got, kept, _ = run_mixer(model, x)
    want, selected, _ = naive.nsa_mixer(x.astype(np.float64), W, "model.layers.0", cfg)
    np.testing.assert_allclose(got, want, **TOL)
    assert kept.shape == (T, cfg["num_key_value_heads"], cfg["nsa_select_count"])
    assert kept_as_lists(kept) == selected
    # selection really drops blocks here: the last query keeps n of its floor(t/l')+1 candidates
    n, lsel = cfg["nsa_select_count"], cfg["nsa_select_block"]
    assert (T - 1) // lsel + 1 > n
    for g in range(cfg["num_key_value_heads"]):
        blocks = selected[(T - 1, g)]
        cur = (T - 1) // lsel
        assert len(blocks) == n and {0, cur - 1, cur} <= set(blocks)


def test_mixer_in_chunks_equals_whole(rng):
    model, W, cfg = nsa_layer(nsa_compress_block=6, nsa_select_count=4)
    T = 30
    x = rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32)
    whole, kept_whole, _ = run_mixer(model, x)
    parts, kept_parts, state = run_mixer(model, x, [1, 4, 1, 1, 9, 14])
    np.testing.assert_allclose(parts, whole, **TOL)
    np.testing.assert_array_equal(kept_parts, kept_whole)
    # a compressed block exists for every complete block: (T - l) // s + 1
    assert state.kc.n == (T - 6) // 2 + 1 and state.vc.n == state.kc.n


def _branches(rng, shape, T, H=6, Hkv=3, hd=6, hc=5):
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    K = rng.standard_normal((T, Hkv, hd)).astype(np.float32)
    V = rng.standard_normal((T, Hkv, hd)).astype(np.float32)
    blocks = (T - shape.block) // shape.stride + 1
    args = [(rng.standard_normal((shape.block, hd)).astype(np.float32),
             rng.standard_normal((hc, shape.block * hd)).astype(np.float32) * 0.3,
             rng.standard_normal((hd, hc)).astype(np.float32)) for _ in range(2)]
    kc = compress(K, 0, blocks, *args[0], shape)
    vc = compress(V, 0, blocks, *args[1], shape)
    return q, K, V, kc, vc


def test_limit_case_selected_and_window_equal_full_attention(rng):
    """SPEC 4.3: when l' n >= t+1 and w >= t+1 both branches are full causal attention."""
    T = 20
    shape = NSAShape(block=4, stride=2, select_block=5, select_count=4, window=20)
    q, K, V, kc, vc = _branches(rng, shape, T)
    o_cmp, o_slc, o_win, kept = nsa_attention(q, K, V, kc, vc, np.arange(T), shape)
    full = np.zeros((T, 6, 6))
    for t in range(T):
        for h in range(6):
            g = h // 2
            full[t, h] = naive.attend(q[t, h].astype(np.float64), [K[j, g].astype(np.float64) for j in range(t + 1)],
                                      [V[j, g].astype(np.float64) for j in range(t + 1)])
    np.testing.assert_allclose(o_slc, full, **TOL)
    np.testing.assert_allclose(o_win, full, **TOL)
    np.testing.assert_allclose(o_slc, attention(q, K, V, np.arange(T), np.arange(T)), **TOL)
    for t in range(T):                                                # every candidate kept
        assert sorted(b for b in kept[t, 0] if b >= 0) == list(range(t // 5 + 1))


def test_limit_case_through_the_model(rng):
    """Whole mixer: with l' n >= T and w >= T the output is G0 o_cmp + (G1 + G2) full attention."""
    model, W, cfg = nsa_layer(nsa_select_block=4, nsa_select_count=5, nsa_window=20)
    T = 20
    x = rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32)
    got, _, _ = run_mixer(model, x)
    _, _, br = naive.nsa_mixer(x.astype(np.float64), W, "model.layers.0", cfg)
    X = x.astype(np.float64)
    q, k, v = naive.qkv(X, W, "model.layers.0", cfg, list(range(T)))
    H, hd = cfg["num_attention_heads"], cfg["head_dim"]
    gates = naive.sigmoid(naive.linear(X, W["model.layers.0.self_attn.gate_proj.weight"])).reshape(T, 3, H)
    o = np.zeros((T, H * hd))
    for t in range(T):
        for h in range(H):
            g = h // 2
            full = naive.attend(q[t, h], [k[j, g] for j in range(t + 1)], [v[j, g] for j in range(t + 1)])
            o[t, h * hd:(h + 1) * hd] = gates[t, 0, h] * br["cmp"][t, h] + (gates[t, 1, h] + gates[t, 2, h]) * full
    np.testing.assert_allclose(got, naive.linear(o, W["model.layers.0.self_attn.o_proj.weight"]), **TOL)


def test_compressed_branch_visibility_and_empty(rng):
    shape = NSAShape(block=4, stride=2, select_block=4, select_count=3, window=3)
    T = 12
    q, K, V, kc, vc = _branches(rng, shape, T)
    o_cmp, o_slc, o_win, _ = nsa_attention(q, K, V, kc, vc, np.arange(T), shape)
    np.testing.assert_array_equal(o_cmp[:3], 0.0)                    # no block complete before t = l-1 = 3
    for t in range(3, T):
        vis = [i for i in range(len(kc)) if i * 2 + 3 <= t]
        for h in range(6):
            g = h // 2
            want = naive.attend(q[t, h].astype(np.float64) * 1.0, [kc[i, g].astype(np.float64) for i in vis],
                                [vc[i, g].astype(np.float64) for i in vis])
            np.testing.assert_allclose(o_cmp[t, h], want, **TOL)
    for t in range(T):                                                # window of w = 3
        for h in range(6):
            g = h // 2
            lo = max(0, t - 2)
            want = naive.attend(q[t, h].astype(np.float64), [K[j, g].astype(np.float64) for j in range(lo, t + 1)],
                                [V[j, g].astype(np.float64) for j in range(lo, t + 1)])
            np.testing.assert_allclose(o_win[t, h], want, **TOL)


def test_selection_ties_go_to_the_lower_block(rng):
    """kc = 0 makes p uniform; with l = s every fully covered selection block gets the same score,
    so the n-3 free choices must be the lowest-numbered non-forced blocks."""
    cfg = small_config(num_hidden_layers=1, layer_types=["sparse_attention"], mlp_types=["dense"],
                       nsa_compress_block=2, nsa_compress_stride=2, nsa_select_block=4, nsa_select_count=5)
    model0, W = build_model(cfg, seed=3)
    W = dict(W)
    W["model.layers.0.self_attn.compress_k.fc2.weight"] = np.zeros_like(W["model.layers.0.self_attn.compress_k.fc2.weight"])
    model, _ = build_model(cfg, tensors=W)
    T = 41
    x = rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32)
    got, kept, _ = run_mixer(model, x)
    lists = kept_as_lists(kept)
    for t in range(20, T):                                            # more than n = 5 candidates
        cur = t // 4
        free = [j for j in range(cur + 1) if j not in (0, cur - 1, cur)][:2]
        for g in range(3):
            assert lists[(t, g)] == sorted({0, cur - 1, cur, *free}), (t, g, lists[(t, g)])
    want, selected, _ = naive.nsa_mixer(x.astype(np.float64), W, "model.layers.0", cfg)
    assert lists == selected
    np.testing.assert_allclose(got, want, **TOL)


def test_selection_is_per_group(rng):
    """One list of blocks per (query, kv group), serving all heads of the group; groups differ."""
    model, W, cfg = nsa_layer(seed=5)
    T = 37
    x = rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32)
    _, kept, _ = run_mixer(model, x)
    # the same blocks for every head of a group: one list per (t, g), and groups may differ
    lists = kept_as_lists(kept)
    assert any(lists[(t, 0)] != lists[(t, 1)] for t in range(16, T))
