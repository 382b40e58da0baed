"""Time the recurrent layers' decode ops and NSA's block compression alone on `cogcore bench`'s hybrid.

    python benchmarks/recurrent_ops.py [--bench q8_0] [--threads 2] [--rounds 60]

Calls `rwkv7_inputs`, `rwkv7_output` (one decode token) and `nsa_compress` (one block) with the
layers' own weights, each op over all layers of its kind in turn, in two settings: warm caches
(each layer's weights read just before) and after a 64 MiB flush (the weights come from memory, as
in a decode step, which streams the whole model between two calls of a layer). Prints the median
microseconds a call and the bytes it must read (weights, and the state S it reads and writes) as a
rate, to put against the machine's read rate (docs/performance.md: 33-37 GB/s one thread).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _bytes(*arrays) -> int:
    return sum(getattr(a, "nbytes", 0) or getattr(getattr(a, "data", None), "nbytes", 0) for a in arrays)


def main(argv=None) -> None:
    import cogcore  # noqa: F401  (thread pool settings before numpy's first use)
    from cogcore.backends import NumbaOps
    from cogcore.bench import bench_config, bench_weights
    from cogcore.kernels.threads import set_threads
    from cogcore.model import Model
    from cogcore.ops import ops_for
    from cogcore.weights import Weights

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", metavar="PRECISION", default="q8_0", help="the bench model's precision")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=60)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    NumbaOps.warm_up()
    cfg = bench_config()
    model = Model(cfg, Weights(bench_weights(cfg, args.bench)), backend=ops_for("numba", False))
    ops, D = model.ops, cfg.hidden_size
    rng = np.random.default_rng(0)
    x, x_prev = rng.standard_normal((1, D), np.float32), rng.standard_normal(D, np.float32)
    row = lambda: rng.standard_normal((1, D), np.float32)
    r, k, v, v_first = row(), row(), row(), row()
    recurrent = [layer.mixer for layer in model.layers if hasattr(layer.mixer, "lora_pairs")]
    sparse = [layer.mixer for layer in model.layers if hasattr(layer.mixer, "compress_k")]
    calls = {}          # op -> [(call, bytes read)], one per layer
    for m in recurrent:
        st = m.new_state()
        lora = [M for pair in m.lora_pairs if pair is not None for M in pair]
        calls.setdefault("rwkv7_inputs", []).append(
            (lambda m=m: ops.rwkv7_inputs(x, x_prev, m.mix, m.lora_pairs, m.w0, m.a0, m.v0), _bytes(m.mix, *lora)))
        _, _, _, w, a, g, v_gate = ops.rwkv7_inputs(x, x_prev, m.mix, m.lora_pairs, m.w0, m.a0, m.v0)
        w = np.clip(w, 0.5, 1.0)                  # a decay that keeps S bounded over the rounds
        calls.setdefault("rwkv7_output", []).append(
            (lambda m=m, st=st, w=w, a=a, g=g, v_gate=v_gate: ops.rwkv7_output(
                r, w, k, v, a, g, v_gate, v_first, m.k_k, m.k_a, m.r_k, m.ln_w, m.ln_b, cfg.rwkv_group_norm_eps,
                cfg.rwkv_kk_norm, st.S), 2 * st.S.nbytes))
    if sparse:
        m = sparse[0]
        X = rng.standard_normal((2 * m.shape.block, m.Hkv, m.hd), np.float32)
        for m in sparse:
            for which in (m.compress_k, m.compress_v):
                calls.setdefault("nsa_compress", []).append(
                    (lambda which=which, m=m: ops.nsa_compress(X, 1, 2, *which, m.shape), _bytes(*which)))
    flush = np.ones(16 << 20, np.float32)         # 64 MiB: more than the last-level cache
    print(f"bench hybrid {args.bench}, {args.threads} thread(s); median of {args.rounds} rounds")
    print(f"  {'op':<14}{'layers':>7}{'KiB read':>10}{'warm us':>9}{'GB/s':>7}{'cold us':>9}{'GB/s':>7}")
    for op, layer_calls in calls.items():
        med = {}
        for label, cold in (("warm", False), ("cold", True)):
            times = []
            for _ in range(args.rounds):
                for call, _ in layer_calls:
                    if cold:
                        flush.sum()
                    else:
                        call()
                    t = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - t)
            med[label] = float(np.median(times))
        nbytes = float(np.mean([b for _, b in layer_calls]))
        print(f"  {op:<14}{len(layer_calls):>7}{nbytes / 1024:>10.0f}{med['warm'] * 1e6:>9.1f}"
              f"{nbytes / med['warm'] / 1e9:>7.1f}{med['cold'] * 1e6:>9.1f}{nbytes / med['cold'] / 1e9:>7.1f}")


if __name__ == "__main__":
    main()
