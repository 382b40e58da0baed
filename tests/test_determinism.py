"""Run-to-run determinism of the Numba backend: the same model, inputs and thread count give bitwise the
same logits every time, wherever the heap puts a kernel's buffers and whichever twin (serial or parallel)
`threads.pick` takes (docs/performance.md, "Ninth and tenth sessions", "Determinism")."""

from __future__ import annotations

import numpy as np

from conftest import build_model, small_config

from cogcore.kernels import rwkv7, threads
from cogcore.quant import quantizable, quantize_tensor


def heap_shuffled(rng, D):
    """Arrays of random sizes, held while the next call runs: its own buffers land elsewhere on the heap."""
    return [np.empty(int(n), np.float32) for n in rng.integers(1, 4 * D, rng.integers(1, 16))]


def test_time_mix_step_does_not_depend_on_where_its_buffers_lie():
    """A loop that both stored and summed (wkv7's state row and its output, the bonus, |kk|^2) was
    vectorised with a run-time overlap check of its arrays; where the heap put them close together the
    scalar loop ran instead, which sums in another order: the same inputs gave outputs a few ulp apart
    (before the sums got loops of their own this test failed in each of five runs; kernels.linear, FAST)."""
    D, N, R = 256, 64, 32
    rng = np.random.default_rng(0)

    def layer():
        f = lambda *s, scale=1.0: (rng.standard_normal(s) * scale).astype(np.float32)
        return dict(x=f(1, D), x_prev=f(D), mix=np.abs(f(6, D)) % 1,
                    lora=tuple((f(D, R, scale=.1), f(R, D, scale=.1)) for _ in range(4)), w0=f(D), a0=f(D), v0=f(D),
                    mats=[quantize_tensor(f(D, D, scale=D ** -.5), "q4_0").data for _ in range(4)], v_first=f(1, D),
                    k_k=f(D), k_a=f(D), r_k=f(D // N, N, scale=.1), ln_w=f(D), ln_b=f(D), S=f(D // N, N, N, scale=.1))

    def step(p):
        return rwkv7.time_mix_step(p["x"], p["x_prev"], p["mix"], p["lora"], p["w0"], p["a0"], p["v0"], p["mats"],
                                   "q4_0", False, p["v_first"], p["k_k"], p["k_a"], p["r_k"], p["ln_w"], p["ln_b"],
                                   1e-3, "clamp", p["S"].copy())[0]

    layers = [layer() for _ in range(3)]
    with threads.parallel_from(1 << 62):
        first = [step(p) for p in layers]
        for _ in range(50):
            for p, want in zip(layers, first):
                held = heap_shuffled(rng, D)
                assert np.array_equal(step(p), want)
                del held


def test_model_logits_are_bitwise_the_same_every_run_and_on_either_twin():
    """A q4_0 model whose sizes are multiples of 64 (as the presets' are), prefill then decode: the same
    logits, bit for bit, run after run (the heap shuffled between tokens) and with every kernel on its
    serial or on its parallel twin, so that the cores-free probe's choice never changes a result."""
    cfg = small_config(vocab_size=64, hidden_size=128, num_hidden_layers=2,
                       layer_types=["recurrent", "sparse_attention"], mlp_types=["moe", "moe"],
                       num_attention_heads=2, num_key_value_heads=1, head_dim=64, rwkv_head_size=64,
                       rwkv_decay_rank=32, rwkv_a_rank=32, rwkv_v_rank=32, rwkv_gate_rank=64,
                       moe_intermediate_size=64, num_experts=4)
    _, floats = build_model(cfg, seed=5)
    tensors = {n: quantize_tensor(a, "q4_0", n) if quantizable(n, a.shape) else a for n, a in floats.items()}
    model, _ = build_model(cfg, backend="numba", tensors=tensors)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, cfg["vocab_size"], 24)

    def decode(work):
        cache, out = model.new_cache(), []
        with threads.parallel_from(work):
            out.append(model.forward(ids[:9], cache))
            for t in ids[9:]:
                held = heap_shuffled(rng, 128)
                out.append(model.forward([t], cache))
                del held
        return np.concatenate(out)

    serial = decode(1 << 62)
    assert np.array_equal(decode(1 << 62), serial)
    assert np.array_equal(decode(0), serial)            # (conftest asks Numba for two threads)
