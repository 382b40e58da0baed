"""Mixture of experts (SPEC 4.5) against naive loops."""

import numpy as np
import pytest

from cogcore.model import Pass

import naive
from conftest import build_model, small_config

TOL = dict(rtol=1e-4, atol=1e-5)


def ffn_layer(mlp, seed=8, **over):
    cfg = small_config(num_hidden_layers=1, layer_types=["full_attention"], mlp_types=[mlp], **over)
    model, W = build_model(cfg, seed=seed)
    return model, W, cfg


def run_ffn(model, x, start=0, state=None):
    ffn = model.layers[0].ffn
    ctx = Pass(positions=np.arange(start, start + len(x)))
    state = ffn.new_state() if state is None else state
    return ffn(x, state, ctx), ctx, state


@pytest.mark.parametrize("over", [
    dict(),
    dict(norm_topk_prob=False),
    dict(num_experts_per_tok=1),
    dict(num_experts_per_tok=5),                                       # every expert
    dict(num_experts=7, num_experts_per_tok=3, num_shared_experts=1, shared_expert_intermediate_size=6),
    dict(norm_topk_prob=False, num_shared_experts=1, shared_expert_intermediate_size=3),
])
def test_moe_against_naive(rng, over):
    model, W, cfg = ffn_layer("moe", **over)
    T = 17
    x = rng.standard_normal((T, cfg["hidden_size"])).astype(np.float32)
    got, ctx, _ = run_ffn(model, x)
    want, counts, _ = naive.moe(x.astype(np.float64), W, "model.layers.0", cfg)
    np.testing.assert_allclose(got, want, **TOL)
    np.testing.assert_array_equal(ctx.expert_counts[0], counts)
    assert ctx.expert_counts[0].sum() == T * cfg["num_experts_per_tok"]


def test_norm_topk_prob_changes_the_output(rng):
    a, W, cfg = ffn_layer("moe", norm_topk_prob=True)
    b, _ = build_model(small_config(**{**cfg, "norm_topk_prob": False}), tensors=W)
    x = rng.standard_normal((5, cfg["hidden_size"])).astype(np.float32)
    ya, _, _ = run_ffn(a, x)
    yb, _, _ = run_ffn(b, x)
    # the unnormalised weights are p[top] <= normalised; the ratio per token is sum(p[top])
    probs = np.stack([naive.softmax(naive.linear(xi.astype(np.float64), W["model.layers.0.mlp.gate.weight"]))
                      for xi in x])
    top_sum = np.sort(probs, axis=1)[:, -2:].sum(axis=1)
    np.testing.assert_allclose(yb, ya * top_sum[:, None], rtol=1e-4, atol=1e-6)


def test_exact_ties_go_to_the_lower_expert():
    """Integer router rows and inputs make logits exact: experts 1, 3 and 4 tie for the top."""
    cfg = small_config(num_hidden_layers=1, layer_types=["full_attention"], mlp_types=["moe"],
                       num_experts=5, num_experts_per_tok=2)
    _, W = build_model(cfg, seed=1)
    W = dict(W)
    D = cfg["hidden_size"]
    router = np.zeros((5, D), np.float32)
    router[0, :3] = [1, 0, 0]
    router[1, :3] = [2, 1, 0]
    router[3] = router[1]
    router[4] = router[1]
    router[2, :3] = [0, 0, 1]
    W["model.layers.0.mlp.gate.weight"] = router
    model, _ = build_model(cfg, tensors=W)
    x = np.zeros((4, D), np.float32)
    x[:, 0], x[:, 1], x[:, 2] = [1, 2, 1, 3], [1, 0, 2, 1], [0, 1, 0, 2]
    got, ctx, _ = run_ffn(model, x)
    np.testing.assert_array_equal(ctx.expert_counts[0], [0, 4, 0, 4, 0])
    # both chosen experts have equal p, so each gets weight 1/2 after normalisation
    want = np.zeros((4, D))
    for t in range(4):
        for e in (1, 3):
            want[t] += 0.5 * naive.swiglu(x[t].astype(np.float64), W["model.layers.0.mlp.experts.gate_proj"][e],
                                          W["model.layers.0.mlp.experts.up_proj"][e],
                                          W["model.layers.0.mlp.experts.down_proj"][e])
    np.testing.assert_allclose(got, want, **TOL)
    # with k = 1 the single choice is expert 1, the lowest of the three
    model1, _ = build_model(small_config(**{**cfg, "num_experts_per_tok": 1}), tensors=W)
    _, ctx1, _ = run_ffn(model1, x)
    np.testing.assert_array_equal(ctx1.expert_counts[0], [0, 4, 0, 0, 0])


def test_router_softmax_over_all_experts(rng):
    """Without normalisation the weight is p over all E, not a softmax over the top k only."""
    model, W, cfg = ffn_layer("moe", norm_topk_prob=False, num_experts_per_tok=1)
    x = rng.standard_normal((3, cfg["hidden_size"])).astype(np.float32)
    got, ctx, _ = run_ffn(model, x)
    for t in range(3):
        logits = naive.linear(x[t].astype(np.float64), W["model.layers.0.mlp.gate.weight"])
        e = int(np.argmax(logits))
        p = np.exp(logits[e]) / np.exp(logits).sum()
        expert = naive.swiglu(x[t].astype(np.float64), W["model.layers.0.mlp.experts.gate_proj"][e],
                              W["model.layers.0.mlp.experts.up_proj"][e], W["model.layers.0.mlp.experts.down_proj"][e])
        np.testing.assert_allclose(got[t], p * expert, **TOL)


@pytest.mark.parametrize("tag", ["F32", "BF16", "F16"])
def test_float_experts_by_whole_experts_or_by_rows_agree(tag):
    """The float experts decode's two splits (each thread whole experts when their number divides k;
    else every expert's rows shared out) give the same output to the bit, serial and parallel, k = 2
    and 3, sizes that end inside a task and inside a pass of several rows; and equal a float64 loop
    over the stored (rounded) weights."""
    from cogcore.dtypes import f32, to_storage
    from cogcore.kernels import moe as km
    from cogcore.kernels.linear import kind_of, raw

    rng = np.random.default_rng(4)
    T, D, F, E = 2, 37, 45, 5                    # 37 and 45 rows: a task of 32 and a rest; odd for the 2- and 4-row dots
    x = rng.standard_normal((T, D)).astype(np.float32)
    Wg, Wu, Wd = (to_storage(rng.standard_normal(s).astype(np.float32) * .3, tag)
                  for s in ((E, F, D), (E, F, D), (E, D, F)))
    g64, u64, d64 = (f32(W).astype(np.float64) for W in (Wg, Wu, Wd))
    for k in (2, 3):
        top = np.array([[4, 1, 2][:k], [0, 3, 1][:k]], np.int64)
        wts = rng.uniform(.1, 1, (T, k)).astype(np.float32)
        got = [fn(x, top, wts, raw(Wg), raw(Wu), raw(Wd), kind_of(Wg), threads)
               for fn, threads in ((km._experts_1, 1), (km._experts_p, 1), (km._experts_p, 2), (km._experts_1, 2))]
        for g in got[1:]:
            np.testing.assert_array_equal(g, got[0])
        want = np.zeros((T, D))
        for t in range(T):
            for c in range(k):
                e = top[t, c]
                gate, up = g64[e] @ x[t], u64[e] @ x[t]
                want[t] += wts[t, c] * (d64[e] @ (gate / (1 + np.exp(-gate)) * up))
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
