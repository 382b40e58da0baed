"""Caches and incremental decoding (SPEC Section 5): any split of the same tokens gives the same
logits, for every layer type and both backends; caches fork and report their memory."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import cogcore
from cogcore.blocks.sparse_attention import n_complete_blocks
from cogcore.cache import KVCache, RecurrentState, RingKV, ShiftState, SparseKV
from cogcore.create import random_weights
from cogcore.model import Model
from cogcore.weights import Weights

# Every mixer and every FFN type, two recurrent layers (so the value residual is used), and
# small NSA blocks / windows: with 100 tokens selection drops blocks and windows wrap.
LAYERS = ["recurrent", "sliding_attention", "sparse_attention", "full_attention", "recurrent",
          "sparse_attention"]
MLPS = ["moe", "channel_mix", "dense", "moe", "channel_mix", "moe"]
MIXED = dict(vocab_size=64, num_hidden_layers=6, layer_types=LAYERS, mlp_types=MLPS, intermediate_size=48,
             sliding_window=8, nsa_compress_block=4, nsa_compress_stride=2, nsa_select_block=8,
             nsa_select_count=3, nsa_window=8)
T = 100
ATOL = 2e-5


def make_model(backend="numpy", **overrides):
    cfg = cogcore.preset("tiny", **{**MIXED, **overrides})
    return Model(cfg, Weights(random_weights(cfg, seed=3)), backend=backend)


@pytest.fixture(scope="module", params=["numpy", "numba"])
def model(request):
    return make_model(request.param)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, 64, T)


@pytest.fixture(scope="module")
def whole(model, ids):
    logits = model.forward(ids)
    return logits, model.last_pass


def feed(model, ids, cuts, cache=None):
    cache = cache if cache is not None else model.new_cache()
    cuts = [0, *cuts, len(ids)]
    out = np.concatenate([model.forward(ids[a:b], cache) for a, b in zip(cuts, cuts[1:]) if b > a])
    return out, cache


def test_test_model_exercises_selection_and_windows(model, whole):
    logits, ctx = whole
    assert logits.shape == (T, 64) and logits.dtype == np.float32
    for layer in (2, 5):
        kept = ctx.selected_blocks[layer]                       # [T, Hkv, n]
        candidates = np.arange(T) // 8 + 1
        n_kept = (kept >= 0).sum(-1)
        assert (n_kept[candidates > 3] == 3).all()              # blocks were dropped ...
        assert (candidates > 3).sum() > 50
        assert len({tuple(r) for r in kept[candidates > 5, 0]}) > 1   # ... and the choice varies
    assert T > 4 * model.config.sliding_window


@pytest.mark.parametrize("split", ["one_at_a_time", "uneven", "big_then_small", "halves"])
def test_any_split_gives_the_same_logits(model, ids, whole, split):
    cuts = {"one_at_a_time": list(range(1, T)),
            "uneven": [1, 3, 10, 11, 29, 30, 57, 64, 65, 99],
            "big_then_small": [37, 38, 39, 41, 90],
            "halves": [50]}[split]
    logits, cache = feed(model, ids, cuts)
    np.testing.assert_allclose(logits, whole[0], atol=ATOL, rtol=0)
    assert cache.length == T


def test_last_only_reads_out_the_last_token_and_leaves_the_same_cache(model, ids, whole):
    """A prefill's `last_only` logits are the last row of the full ones, and decoding on goes the same."""
    cache = model.new_cache()
    first = model.forward(ids[:60], cache, last_only=True)
    assert first.shape == (1, 64)
    np.testing.assert_allclose(first[0], whole[0][59], atol=ATOL, rtol=0)
    rest, _ = feed(model, ids[60:], [1, 2, 20], cache)
    np.testing.assert_allclose(rest, whole[0][60:], atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def reference(ids):
    m = make_model("numpy")
    return m, m.forward(ids)


@settings(max_examples=8, deadline=None)
@given(cuts=st.lists(st.integers(1, T - 1), max_size=12, unique=True))
def test_random_splits(cuts, ids, reference):
    model, whole = reference
    logits, _ = feed(model, ids, sorted(cuts))
    np.testing.assert_allclose(logits, whole, atol=ATOL, rtol=0)


def test_backends_agree(ids):
    a, b = make_model("numpy").forward(ids), make_model("numba").forward(ids)
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)


def test_cache_contents_per_layer_type(model, ids):
    """SPEC Section 5: what each layer keeps after T tokens, and blocks compressed as soon as complete."""
    cache = model.new_cache()
    cfg = model.config
    shape = model.layers[2].mixer.shape
    for t in range(T):
        model.forward(ids[t:t + 1], cache)
        assert cache.layers[2][0].kc.n == n_complete_blocks(t + 1, shape)   # emitted at i*s+l-1
    assert cache.length == T
    (rec, moe_state), (ring, cm), (sparse, _), (full, _), (rec2, _), _ = cache.layers
    assert moe_state is None
    assert isinstance(rec, RecurrentState) and isinstance(rec2, RecurrentState)
    Hr, N = cfg.hidden_size // cfg.rwkv_head_size, cfg.rwkv_head_size
    assert rec.S.shape == (Hr, N, N) and rec.S.dtype == np.float32 and np.abs(rec.S).sum() > 0
    assert rec.x_prev.shape == (cfg.hidden_size,)
    assert isinstance(cm, ShiftState) and np.abs(cm.x_prev).sum() > 0
    assert isinstance(ring, RingKV)
    assert sorted(ring.pos.tolist()) == list(range(T - cfg.sliding_window, T))
    assert isinstance(full, KVCache) and full.k.n == T
    assert isinstance(sparse, SparseKV) and sparse.kv.k.n == T
    assert sparse.kc.n == sparse.vc.n == (T - 4) // 2 + 1
    # the stored keys are the rotated keys of every position: same as a fresh whole pass
    whole = model.new_cache()
    model.forward(ids, whole)
    np.testing.assert_allclose(sparse.kv.k.view(), whole.layers[2][0].kv.k.view(), atol=1e-5)
    np.testing.assert_allclose(sparse.kc.view(), whole.layers[2][0].kc.view(), atol=1e-5)
    np.testing.assert_allclose(rec.S, whole.layers[0][0].S, atol=1e-5)


def test_fork_gives_independent_results_equal_to_fresh_runs(model, ids):
    prefix, a, b = ids[:60], ids[60:80], ids[80:]
    cache = model.new_cache()
    model.forward(prefix, cache)
    fork = cache.copy()
    assert fork.length == cache.length == 60 and fork.nbytes == cache.nbytes
    out_a = model.forward(a, cache)
    out_b = model.forward(b, fork)
    np.testing.assert_allclose(out_a, model.forward(np.concatenate([prefix, a]))[60:], atol=ATOL, rtol=0)
    np.testing.assert_allclose(out_b, model.forward(np.concatenate([prefix, b]))[60:], atol=ATOL, rtol=0)
    # feeding the fork did not change the original, and vice versa
    assert cache.length == 80 and fork.length == 60 + len(b)
    again = cache.copy()
    np.testing.assert_allclose(model.forward(ids[:5], again), model.forward(ids[:5], cache), atol=0, rtol=0)


def test_sliding_memory_stays_bounded():
    m = make_model("numpy", num_hidden_layers=2, layer_types=["sliding_attention"] * 2,
                   mlp_types=["dense", "channel_mix"])
    rng = np.random.default_rng(1)
    cache = m.new_cache()
    m.forward(rng.integers(0, 64, 5), cache)
    sizes = []
    for _ in range(6):
        m.forward(rng.integers(0, 64, 40), cache)
        sizes.append(cache.nbytes)
    cfg = m.config
    ring = cfg.sliding_window * (2 * cfg.num_key_value_heads * cfg.head_dim * 4 + 8)   # K, V, position
    assert sizes == [2 * ring + cfg.hidden_size * 4] * 6       # + the channel mix's x_prev
    # a full-attention cache grows with the length
    f = make_model("numpy", num_hidden_layers=1, layer_types=["full_attention"], mlp_types=["dense"])
    cache = f.new_cache()
    f.forward(rng.integers(0, 64, 20), cache)
    small = cache.nbytes
    f.forward(rng.integers(0, 64, 200), cache)
    assert cache.nbytes > 5 * small


def test_nbytes_counts_every_state(model, ids):
    empty = model.new_cache().nbytes
    cache = model.new_cache()
    model.forward(ids, cache)
    cfg = model.config
    hd, Hkv = cfg.head_dim, cfg.num_key_value_heads
    # at least: K and V of every position in the full and sparse layers (float32)
    assert cache.nbytes - empty >= 3 * 2 * T * Hkv * hd * 4
    assert empty > 0        # recurrent states and rings exist from the start
