"""The whole forward pass (SPEC Section 4) against the independent naive implementation
(tests/naive.py) on small random configs of mixed layer types, and the model's input checks."""

import numpy as np
import pytest

import cogcore
from cogcore.config import Config
from cogcore.create import init_model, random_weights
from cogcore.model import Model
from cogcore.weights import Weights

import naive
from conftest import build_model, small_config

CONFIGS = {
    "mixed-rms": small_config(),
    "layernorm-embnorm-tied": small_config(
        norm_type="layernorm", embedding_norm=True, tie_word_embeddings=True,
        layer_types=["sparse_attention", "recurrent", "sliding_attention", "recurrent"],
        mlp_types=["dense", "moe", "moe", "channel_mix"], norm_topk_prob=False,
        num_shared_experts=1, shared_expert_intermediate_size=5),
    "two-recurrent-gqa3": small_config(
        num_hidden_layers=5, vocab_size=41, hidden_size=21, rwkv_head_size=7,
        num_attention_heads=6, num_key_value_heads=2, head_dim=4,
        layer_types=["recurrent", "recurrent", "full_attention", "sparse_attention", "recurrent"],
        mlp_types=["channel_mix", "moe", "dense", "moe", "moe"], num_experts=7, num_experts_per_tok=3,
        nsa_compress_block=6, nsa_compress_stride=3, nsa_select_block=3, nsa_select_count=3, nsa_window=4),
    "attention-only-tied": small_config(
        num_hidden_layers=3, layer_types=["sliding_attention", "sparse_attention", "full_attention"],
        mlp_types=["moe", "moe", "dense"], tie_word_embeddings=True, sliding_window=3, eos_token_id=36),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_against_naive(name):
    cfg = CONFIGS[name]
    model, W = build_model(cfg, seed=list(CONFIGS).index(name) + 20)
    tokens = np.random.default_rng(len(name)).integers(0, cfg["vocab_size"], 26)
    got = model.forward(tokens)
    want, info = naive.forward(W, cfg, tokens)
    assert got.dtype == np.float32 and got.shape == (26, cfg["vocab_size"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    last = model.last_pass
    assert sorted(last.expert_counts) == sorted(info["expert_counts"])
    for layer, counts in info["expert_counts"].items():
        np.testing.assert_array_equal(last.expert_counts[layer], counts)
    assert sorted(last.selected_blocks) == sorted(info["selected"])
    for layer, sel in info["selected"].items():
        kept = last.selected_blocks[layer]
        got_sel = {(t, g): sorted(int(b) for b in kept[t, g] if b >= 0)
                   for t in range(kept.shape[0]) for g in range(kept.shape[1])}
        assert got_sel == sel


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_forward_with_narrow_weights(dtype):
    cfg = CONFIGS["mixed-rms"]
    model, W = build_model(cfg, seed=4, dtype=dtype)
    tokens = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7]
    want, _ = naive.forward(W, cfg, tokens)           # naive widens the same stored values
    np.testing.assert_allclose(model.forward(tokens), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_forward_in_chunks_matches_whole():
    model, W = build_model(CONFIGS["mixed-rms"], seed=12)
    tokens = np.random.default_rng(0).integers(0, 37, 23)
    whole = model.forward(tokens)
    cache = model.new_cache()
    parts = [model.forward(tokens[a:b], cache=cache) for a, b in ((0, 1), (1, 8), (8, 9), (9, 23))]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-4, atol=1e-5)
    assert cache.length == 23


def test_single_token_and_last_pass_positions():
    model, _ = build_model(CONFIGS["mixed-rms"], seed=1)
    cache = model.new_cache()
    model.forward([5, 6, 7], cache=cache)
    model.forward([8], cache=cache)
    np.testing.assert_array_equal(model.last_pass.positions, [3])


def test_tied_embeddings_use_the_embedding_as_head():
    cfg = CONFIGS["attention-only-tied"]
    model, W = build_model(cfg, seed=0)
    assert "lm_head.weight" not in W
    assert model.lm_head is model.embed_tokens


def test_load_from_directory_matches_in_memory(tmp_path):
    cfg = Config.from_dict(CONFIGS["layernorm-embnorm-tied"])
    init_model(tmp_path / "m", cfg, seed=3)
    loaded = cogcore.load(tmp_path / "m", backend="numpy")
    assert loaded.config == cfg
    mem = Model(cfg, Weights(random_weights(cfg, 3)), backend="numpy")
    tokens = [0, 36, 5, 5, 12]
    np.testing.assert_array_equal(loaded.forward(tokens), mem.forward(tokens))


@pytest.mark.parametrize("tokens,fragments", [
    ([1, 37, 2], ["token_ids[1]", "0..36", "37"]),
    ([-1], ["token_ids[0]", "0..36", "-1"]),
    ([], ["empty"]),
    ([[1, 2]], ["1-D", "[1, 2]"]),
    ([1.0, 2.0], ["integers", "float64"]),
])
def test_bad_token_ids(tokens, fragments):
    model, _ = build_model(CONFIGS["mixed-rms"], seed=0)
    with pytest.raises(cogcore.InputError) as e:
        model.forward(tokens)
    assert isinstance(e.value, cogcore.CogcoreError)
    for f in fragments:
        assert f in str(e.value)


def test_cache_unchanged_by_a_rejected_call():
    model, _ = build_model(CONFIGS["mixed-rms"], seed=0)
    cache = model.new_cache()
    model.forward([1, 2], cache=cache)
    with pytest.raises(cogcore.CogcoreError):
        model.forward([99], cache=cache)
    assert cache.length == 2


def test_max_position_embeddings_enforced():
    model, _ = build_model(small_config(max_position_embeddings=6), seed=0)
    cache = model.new_cache()
    model.forward([1, 2, 3, 4], cache=cache)
    with pytest.raises(cogcore.InputError) as e:
        model.forward([1, 2, 3], cache=cache)
    for f in ("4 cached", "3 new", "max_position_embeddings=6"):
        assert f in str(e.value)


def test_bad_backend_name():
    cfg = Config.from_dict(CONFIGS["mixed-rms"])
    with pytest.raises(cogcore.CogcoreError) as e:
        Model(cfg, Weights(random_weights(cfg, 0)), backend="cuda")
    assert "backend" in str(e.value) and "numba, numpy" in str(e.value) and "'cuda'" in str(e.value)


def test_missing_tensor_in_memory_names_tensor_and_shape():
    cfg = Config.from_dict(CONFIGS["mixed-rms"])
    W = random_weights(cfg, 0)
    del W["model.layers.0.rwkv.g2"]
    with pytest.raises(cogcore.WeightsError) as e:
        Model(cfg, Weights(W), backend="numpy")
    assert "'model.layers.0.rwkv.g2'" in str(e.value) and "[7, 30]" in str(e.value)
