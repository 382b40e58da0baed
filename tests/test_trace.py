"""`cogcore trace`: the recorded internals are the ones the forward pass used, checked against
the forward pass itself, the naive SPEC transcription (tests/naive.py), and the cache."""

import json
import os

import numpy as np
import pytest

import naive
from conftest import build_model, small_config
from cogcore import CogcoreError, trace
from cogcore.blocks.sparse_attention import NSAShape, select_blocks
from cogcore.cli import DEFAULT_MODEL, main

TOKENS = [1, 5, 9, 3, 3, 7, 30, 2, 11, 12, 13, 4, 8, 21, 22, 6, 17, 19, 25, 26, 5, 0]   # T=22 > l'*n


@pytest.fixture(scope="module")
def traced():
    cfg = small_config(nsa_window=30)
    model, tensors = build_model(cfg, seed=3)
    return model, tensors, cfg, trace.record(model, TOKENS)


def test_trace_records_what_the_forward_pass_used(traced):
    model, tensors, cfg, tr = traced
    reference_logits, info = naive.forward(tensors, cfg, TOKENS)
    np.testing.assert_allclose(model.forward(TOKENS), reference_logits, atol=2e-4)  # taps removed
    assert set(model.last_pass.selected_blocks) == {i for i, k in enumerate(cfg["layer_types"])
                                                    if k == "sparse_attention"}
    for i, kept in model.last_pass.selected_blocks.items():
        np.testing.assert_array_equal(tr.layers[i]["selected_blocks"], kept)
        for (t, g), blocks in info["selected"][i].items():
            assert [b for b in tr.layers[i]["selected_blocks"][t, g] if b >= 0] == blocks
    for i, counts in model.last_pass.expert_counts.items():
        E = cfg["num_experts"]
        np.testing.assert_array_equal(np.bincount(tr.layers[i]["experts"].ravel(), minlength=E), counts)
        np.testing.assert_array_equal(counts, info["expert_counts"][i])


def test_recorded_internals_are_consistent(traced):
    model, tensors, cfg, tr = traced
    shape = NSAShape(*(cfg[f] for f in trace.NSA_FIELDS))
    T, E, k = len(TOKENS), cfg["num_experts"], cfg["num_experts_per_tok"]
    for i, kind in enumerate(cfg["layer_types"]):
        layer = tr.layers[i]
        if kind == "sparse_attention":
            scores, selection = layer["block_scores"], layer["selection"]
            for t in range(T):
                n_cand = t // shape.select_block + 1
                for g in range(cfg["num_key_value_heads"]):
                    kept = layer["selected_blocks"][t, g]
                    np.testing.assert_array_equal(select_blocks(scores[t, g, :n_cand], t, shape), kept[kept >= 0])
                    assert np.isnan(scores[t, g, n_cand:]).all() and (selection[t, g, n_cand:] == -1).all()
                    forced = {0, t // shape.select_block, t // shape.select_block - 1} if n_cand > 4 else set()
                    assert set(np.flatnonzero(selection[t, g] == 2)) == forced
                    assert set(np.flatnonzero(selection[t, g] > 0)) == set(kept[kept >= 0])
            # compressed weights: a distribution over the blocks complete at t, zero elsewhere
            complete = (np.arange(layer["compressed_weights"].shape[2]) * shape.stride + shape.block - 1)
            visible = complete[None, :] <= np.arange(T)[:, None]
            p = layer["compressed_weights"]
            assert (p[~np.broadcast_to(visible[:, None, :], p.shape)] == 0).all()
            np.testing.assert_allclose(p.sum(-1)[visible.any(1)], 1, rtol=1e-5)
            assert ((layer["gates"] > 0) & (layer["gates"] < 1)).all()
        if kind in ("sparse_attention", "full_attention", "sliding_attention"):
            attn = layer["attention"]                                          # [T, H, T]
            np.testing.assert_allclose(attn.sum(-1), 1, rtol=1e-5)
            assert (np.triu(np.ones((T, T), bool), 1)[:, None, :] <= (attn == 0)).all()   # causal
            if kind == "sliding_attention":
                far = np.tril(np.ones((T, T), bool), -cfg["sliding_window"])
                assert (attn.transpose(0, 2, 1)[far] == 0).all()
        if kind == "recurrent":
            assert ((layer["decay"] > 0.545) & (layer["decay"] < 1)).all()
            assert ((layer["in_context_rate"] > 0) & (layer["in_context_rate"] < 1)).all()
        if cfg["mlp_types"][i] == "moe":
            probs = layer["router_probs"]
            np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
            np.testing.assert_array_equal(layer["experts"], np.argsort(-probs, axis=1, kind="stable")[:, :k])
            assert probs.shape == (T, E)


def test_state_norm_ends_at_the_cached_state(traced):
    model, tensors, cfg, tr = traced
    cache = model.new_cache()
    model.forward(TOKENS[:9], cache=cache)
    model.forward(TOKENS[9:], cache=cache)
    for i, kind in enumerate(cfg["layer_types"]):
        if kind == "recurrent":
            S = cache.layers[i][0].S                                           # [Hr, N, N]
            np.testing.assert_allclose(tr.layers[i]["state_norm"][-1], np.linalg.norm(S, axis=(1, 2)),
                                       rtol=1e-5)


def test_numba_backend_traces_the_same_choices(traced):
    model, tensors, cfg, tr = traced
    fast, _ = build_model(cfg, seed=3, backend="numba")
    tr_fast = trace.record(fast, TOKENS)
    for i, layer in enumerate(tr.layers):
        for name in ("selected_blocks", "experts"):
            if name in layer:
                np.testing.assert_array_equal(tr_fast.layers[i][name], layer[name])


def test_save_load_round_trip(traced, tmp_path):
    tr = traced[3]
    trace.save(tr, tmp_path)
    back = trace.load(tmp_path)
    assert back.token_ids == tr.token_ids and back.layer_types == tr.layer_types and back.nsa == tr.nsa
    for layer, layer_back in zip(tr.layers, back.layers):
        assert layer.keys() == layer_back.keys()
        for name, a in layer.items():
            assert layer_back[name].dtype == (np.int64 if name in trace.INTEGER_TENSORS else np.float32)
            np.testing.assert_array_equal(layer_back[name], a)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def _corrupt(tmp_path, edit):
    meta_path = tmp_path / trace.META_FILE
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format="gguf"), "format"),
    (lambda m: m.update(version=99), "version"),
    (lambda m: m.pop("pieces"), "pieces"),
    (lambda m: m.update(token_ids=[1, 2]), "token_ids"),
    (lambda m: m["tensors"].append("layers.0.nothing"), "layers.0.nothing"),
    (lambda m: m["tensors"].append("layers.99.router_probs"), "layers.99.router_probs"),
    (lambda m: m.update(top_next=[["a"]]), "top_next"),
])
def test_load_names_what_is_wrong(traced, tmp_path, edit, message):
    trace.save(traced[3], tmp_path)
    _corrupt(tmp_path, edit)
    with pytest.raises(CogcoreError, match=message):
        trace.load(tmp_path)


def test_load_fuzzed_files_never_crash(traced, tmp_path):
    trace.save(traced[3], tmp_path)
    rng = np.random.default_rng(0)
    originals = {name: (tmp_path / name).read_bytes() for name in (trace.META_FILE, trace.TENSORS_FILE)}
    for trial in range(60):
        name = list(originals)[trial % 2]
        data = bytearray(originals[name])
        if trial % 3 == 0:
            data = data[:rng.integers(0, len(data))]                          # truncated
        else:
            for pos in rng.integers(0, len(data), size=4):
                data[pos] = rng.integers(0, 256)                              # flipped bytes
        (tmp_path / name).write_bytes(bytes(data))
        try:
            trace.load(tmp_path)
        except CogcoreError:
            pass
        (tmp_path / name).write_bytes(originals[name])
    with pytest.raises(CogcoreError, match="not found"):
        trace.load(tmp_path / "missing")


@pytest.mark.skipif(not os.path.isdir(DEFAULT_MODEL), reason="the shipped model is not in weights/")
def test_cli_writes_a_loadable_trace(tmp_path, capsys):
    assert main(["trace", "--backend", "numpy", "recall ab=3 cd=7 ? cd =", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    tr = trace.load(tmp_path)
    assert f"{tr.T} tokens" in out and tr.pieces[0] == "<s>" and tr.prompt == "recall ab=3 cd=7 ? cd ="
    assert main(["trace", "", "--out", str(tmp_path)]) == 1
