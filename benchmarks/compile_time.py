"""Cold compile time of the Numba backend: `warm_up` with an empty Numba cache, split by kernel.

    python benchmarks/compile_time.py [--int8-activations] [--top 25]

Runs the table's `warm_up` in a child process whose NUMBA_CACHE_DIR is a fresh temporary folder
(nothing is loaded from kernels/__pycache__, nothing is left there), then a second time in another
child on that cache (what every later start pays). Each kernel's row is the seconds of its
top-level compilations (inclusive of the kernels it calls that were not compiled yet, which appear
nested under it and not again at the top), from Numba's "numba:compile" events.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
from numba.core import event

stack, rows = [], []

class Timer(event.Listener):
    def on_start(self, ev):
        stack.append(time.perf_counter())

    def on_end(self, ev):
        start = stack.pop()
        fn = ev.data["dispatcher"].py_func
        rows.append((len(stack), fn.__module__.split(".")[-1] + "." + fn.__qualname__, time.perf_counter() - start))

event.register("numba:compile", Timer())
from cogcore.backends import NumbaInt8Ops, NumbaOps
ops = NumbaInt8Ops if sys.argv[1] == "int8" else NumbaOps
seconds = ops.warm_up()
print(json.dumps({"seconds": seconds, "rows": rows}))
"""


def warm_up(cache: str, arithmetic: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", CHILD, arithmetic], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--int8-activations", action="store_true", help="warm up NumbaInt8Ops instead of NumbaOps")
    ap.add_argument("--top", type=int, default=25, help="kernels listed (default 25)")
    args = ap.parse_args()
    arithmetic = "int8" if args.int8_activations else "float"
    with tempfile.TemporaryDirectory(prefix="cogcore-numba-") as cache:
        cold = warm_up(cache, arithmetic)
        warm = warm_up(cache, arithmetic)
    by_kernel: dict[str, list] = {}
    for depth, name, seconds in cold["rows"]:
        if depth == 0:
            entry = by_kernel.setdefault(name, [0.0, 0])
            entry[0] += seconds
            entry[1] += 1
    print(f"warm_up ({arithmetic} arithmetic): {cold['seconds']:.1f} s with an empty cache, "
          f"{warm['seconds']:.1f} s loading from it")
    print(f"{'seconds':>8}  {'signatures':>10}  kernel")
    for name, (seconds, count) in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"{seconds:8.1f}  {count:10d}  {name}")


if __name__ == "__main__":
    main()
