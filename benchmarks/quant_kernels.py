"""GB/s of the q8_0 / q4_0 decode kernels on one thread: the default (float arithmetic) against
int8 activations; and each decode GEMV's own ceiling, its matrix in L2, against its rate from memory
and one core's read rate. A benchmark, not a test.

    python benchmarks/quant_kernels.py [--rounds 7]

GEMV: 48 different 2048 x 2048 matrices (from memory), one matrix (in L3) and one of 1024 columns
small enough for L2 (0.4-0.8 MB; the float formats' rows fewer); MoE: 64 different experts of
512 x 1024 (gate, up, down; from memory), one token. Each figure is packed bytes over the process's CPU
time (so that other programs' load on a shared machine counts less), the median of the rounds, the
arithmetics alternating within each round. A kernel whose rate in L2 is not above one core's read rate
is compute-bound: no memory, however fast, makes it faster (docs/performance.md, "Ninth and tenth
sessions").
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
    from cogcore.bench import read_bandwidth
    from cogcore.dtypes import to_storage
    from cogcore.kernels import linear as lk
    from cogcore.kernels import quant as kq
    from cogcore.kernels.threads import set_threads
    from cogcore.quant import quantize_tensor

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    set_threads(1)
    rng = np.random.default_rng(0)
    table = kq.HALF_TO_FLOAT
    read, method, _ = read_bandwidth(2**30, 5, threads=(1,))
    print(f"one core's read rate (cogcore.bench.read_bandwidth over 1 GiB, one thread): {read / 1e9:.1f} GB/s "
          f"({method})\n")
    x = {n: rng.standard_normal((1, n), np.float32) for n in (1024, 2048)}      # by the matrix's columns
    print("| one thread, GB/s of stored bytes | default (float arithmetic) | int8 activations |")
    print("|---|---|---|")
    for kind, name in ((lk.F32, "float32"), (lk.BF16, "bfloat16")):
        W = rng.standard_normal((2048, 2048), np.float32)
        W = W if kind == lk.F32 else to_storage(W, "BF16")
        out = np.empty((1, 2048), np.float32)
        gemv = {"default": lambda m: lk.GEMV[kind][0](x[m.shape[1]], m, out[:, :m.shape[0]])}
        small = np.ascontiguousarray(W[:128 if kind == lk.F32 else 256, :1024])
        for label, items in (("48 matrices 2048 x 2048", [W.copy() for _ in range(48)]),
                             (f"one matrix {small.shape[0]} x 1024, in L2", [small] * 400)):
            r = rate(gemv, items, sum(m.nbytes for m in items), args.rounds)
            print(f"| {name} GEMV, {label} | {r['default']:.1f} | - |", flush=True)
    for qtype in ("q8_0", "q4_0"):
        code = kq.CODE[qtype]
        W = quantize_tensor(rng.standard_normal((2048, 2048), np.float32), qtype).data
        width = lambda m: m.shape[1] // int(kq.BLOCK_BYTES[code]) * 32           # logical columns
        gemv = {"default": lambda m: kq._gemv_1(x[width(m)], (m,), code, table, kq.FLOAT_PATH),
                "int8": lambda m: kq._gemv_1(x[width(m)], (m,), code, table, kq.INT8_PATH)}
        mats = [W.copy() for _ in range(48)]
        small = np.ascontiguousarray(W[:768, :W.shape[1] // 2])
        for label, items in (("48 matrices 2048 x 2048", mats), ("one matrix, in L3", [W] * 48),
                             ("one matrix 768 x 1024, in L2", [small] * 400)):
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
