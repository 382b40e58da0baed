"""GB/s of the q8_0 / q4_0 decode kernels on one thread: the default (float arithmetic) against
int8 activations. A benchmark, not a test.

    python benchmarks/quant_kernels.py [--rounds 7]

GEMV: 48 different 2048 x 2048 matrices (from memory) and one matrix (in cache); MoE: 64 different
experts of 512 x 1024 (gate, up, down; from memory), one token. Each figure is packed bytes over the
process's CPU time (so that other programs' load on a shared machine counts less), the median of the
rounds, the two arithmetics alternating within each round.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def rate(fns: dict, items: list, nbytes: int, rounds: int) -> dict[str, float]:
    """Median GB/s of each fn over items (CPU time), the fns alternating within each round."""
    for fn in fns.values():
        fn(items[0])
    res = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.process_time()
            for item in items:
                fn(item)
            res[k].append(nbytes / (time.process_time() - t) / 1e9)
    return {k: statistics.median(v) for k, v in res.items()}


def main(argv=None) -> None:
    from cogcore.kernels import quant as kq
    from cogcore.kernels.threads import set_threads
    from cogcore.quant import quantize_tensor

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    set_threads(1)
    rng = np.random.default_rng(0)
    table = kq.HALF_TO_FLOAT
    print("| one thread, GB/s of packed bytes | default (float arithmetic) | int8 activations |")
    print("|---|---|---|")
    for qtype in ("q8_0", "q4_0"):
        code = kq.CODE[qtype]
        W = quantize_tensor(rng.standard_normal((2048, 2048), np.float32), qtype).data
        x = rng.standard_normal((1, 2048), np.float32)
        gemv = {"default": lambda m: kq._gemv_1(x, (m,), code, table, kq.FLOAT_PATH),
                "int8": lambda m: kq._gemv_1(x, (m,), code, table, kq.INT8_PATH)}
        mats = [W.copy() for _ in range(48)]
        for label, items in (("48 matrices 2048 x 2048", mats), ("one matrix, in cache", [W] * 48)):
            r = rate(gemv, items, sum(m.nbytes for m in items), args.rounds)
            print(f"| {qtype} GEMV, {label} | {r['default']:.1f} | {r['int8']:.1f} |", flush=True)
        G = quantize_tensor(rng.standard_normal((512, 1024), np.float32), qtype).data
        Dn = quantize_tensor(rng.standard_normal((1024, 512), np.float32), qtype).data
        experts = [((G.copy(),), (G.copy(),), (Dn.copy(),)) for _ in range(64)]
        x1 = rng.standard_normal(1024, np.float32)
        y = np.zeros(1024, np.float32)
        moe = {"default": lambda e: kq.experts_decode(x1, *e, [0.5], qtype, y),
               "int8": lambda e: kq.experts_decode(x1, *e, [0.5], qtype, y, int8=True)}
        r = rate(moe, experts, sum(a.nbytes for e in experts for (a,) in e), args.rounds)
        print(f"| {qtype} MoE experts, 64 of 512 x 1024 | {r['default']:.1f} | {r['int8']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
