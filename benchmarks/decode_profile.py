"""Where a decode step's time goes: each op of the kernels' table against the NumPy glue between them.

    python benchmarks/decode_profile.py DIR [--threads 1] [--steps 20] [--context 32]
    python benchmarks/decode_profile.py --bench q4_0          # the 8 x 1024 model of `cogcore bench`
    python benchmarks/decode_profile.py DIR --int8-activations   # quantized weights, GGML's arithmetic
    python benchmarks/decode_profile.py --bench q4_0 --threads 2 --no-probe   # parallel whatever others do

Every op of the model's ops table (`cogcore.ops.Ops`: linear, moe, wkv7, nsa_attention, ...)
is wrapped by a timer; `linear` is split by weight format and shape (lm_head shows on its
own). What is left of the step is the Python / NumPy glue of cogcore/blocks and model.py.
A last pass times the compiled kernels alone (every Numba dispatcher of the kernel modules
wrapped by a timer, ~0.3 us a call added): the rest of the step is what runs outside them
(argument checks, allocations, the Python of the blocks and of the op wrappers).
Both wall-clock and CPU time (this process's) are reported: on a machine shared with
other programs the wall clock also counts the time the process waited for a core, the
CPU time does not. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import time

import numpy as np

OPS = ("attention_moe_step", "linear", "linears", "moe", "attention", "rope_attend", "nsa_attention", "rope_nsa",
       "nsa_step", "nsa_compress", "wkv7", "rope", "rmsnorm", "layernorm", "add_rmsnorm", "add_layernorm", "embed",
       "sigmoid", "rwkv7_inputs", "rwkv7_output", "rwkv7_step")


def weight_label(W) -> str:
    fmt = getattr(W, "qtype", None) or {"uint16": "bfloat16"}.get(str(W.dtype), str(W.dtype))
    return f"{fmt} {W.shape[0]}x{W.shape[1]}"


def instrument(ops, clock):
    """Wrap the ops of `ops` (an instance) with timers; returns {label: [calls, seconds]}."""
    spent = collections.defaultdict(lambda: [0, 0.0])

    def wrap(name, fn):
        def timed(*args, **kw):
            t = clock()
            out = fn(*args, **kw)
            label = f"linear {weight_label(args[1])}" if name == "linear" else name
            if name == "linears":
                label = "linears " + " + ".join(weight_label(W) for W in args[1])
            if name == "moe":
                label = f"moe (router + chosen experts) {weight_label(args[2][0])}"
            s = spent[label]
            s[0] += 1
            s[1] += clock() - t
            return out
        return timed

    for name in OPS:
        if hasattr(ops, name):
            setattr(ops, name, wrap(name, getattr(ops, name)))
    return spent


def instrument_kernels(clock):
    """Wrap every compiled kernel of the kernel modules with a timer; returns ({label: [calls,
    seconds]}, a function that puts the kernels back)."""
    import importlib

    spent, undo = collections.defaultdict(lambda: [0, 0.0]), []

    def wrap(label, fn):
        def timed(*args):
            t = clock()
            out = fn(*args)
            s = spent[label]
            s[0] += 1
            s[1] += clock() - t
            return out
        return timed

    for name in ("attention", "layer_step", "linear", "moe", "norm", "quant", "rope", "rwkv7", "sparse_attention"):
        mod = importlib.import_module(f"cogcore.kernels.{name}")
        for attr, obj in list(vars(mod).items()):
            if type(obj).__name__ == "CPUDispatcher" and getattr(obj, "py_func", None) is not None \
                    and obj.py_func.__module__ == mod.__name__:
                setattr(mod, attr, wrap(f"{name}.{attr}", obj))
                undo.append((mod, attr, obj))
    gemv = importlib.import_module("cogcore.kernels.linear").GEMV
    saved = dict(gemv)
    for kind, pair in saved.items():
        gemv[kind] = tuple(wrap(f"linear.gemv kind {kind}", fn) for fn in pair)

    def restore():
        for mod, attr, obj in undo:
            setattr(mod, attr, obj)
        gemv.update(saved)
    return spent, restore


def profile(model, steps: int, context: int, clock, kernels: bool = False) -> tuple[dict, list[float]]:
    spent, restore = instrument_kernels(clock) if kernels else (instrument(model.ops, clock), None)
    cache = model.new_cache()
    model.forward(np.random.default_rng(0).integers(3, model.config.vocab_size, context), cache)
    for _ in range(3):
        model.forward([7], cache)
    spent.clear()
    times = []
    for _ in range(steps):
        t = clock()
        model.forward([7], cache)
        times.append(clock() - t)
    if restore:
        restore()
    return spent, times


def main(argv=None) -> None:
    import cogcore
    from cogcore.backends import NumbaOps
    from cogcore.kernels import threads

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", nargs="?", help="a model directory")
    ap.add_argument("--bench", metavar="PRECISION", help="instead of DIR: the bench model at this precision")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--context", type=int, default=32)
    ap.add_argument("--int8-activations", action="store_true", help="quantized weights dotted with int8 activations")
    ap.add_argument("--no-probe", action="store_true",
                    help="do not ask whether other programs hold a core: on a shared machine a busy moment would "
                         "run some steps on one thread (kernels.threads)")
    args = ap.parse_args(argv)
    threads.set_threads(args.threads)
    NumbaOps.warm_up()
    if args.bench:
        from cogcore.bench import bench_config, bench_weights
        from cogcore.model import Model
        from cogcore.ops import ops_for
        from cogcore.weights import Weights
        cfg = bench_config()
        model = Model(cfg, Weights(bench_weights(cfg, args.bench)), backend=ops_for("numba", args.int8_activations))
    else:
        model = cogcore.load(args.dir, int8_activations=args.int8_activations)
    with threads.parallel_from(threads.PARALLEL_MIN_WORK) if args.no_probe else contextlib.nullcontext():
        report(model, args)


def report(model, args) -> None:
    """Profile the step (op by op, then the compiled kernels alone) and print where its time goes."""
    for clock_name, clock in (("wall clock", time.perf_counter), ("CPU time", time.process_time)):
        spent, times = profile(model, args.steps, args.context, clock)
        step = statistics.median(times)
        total = sum(t for _, t in spent.values()) / args.steps       # mean per step
        mean_step = sum(times) / args.steps
        print(f"\n{clock_name}: decode step median {step * 1e3:.1f} ms ({1 / step:.1f} tok/s), mean "
              f"{mean_step * 1e3:.1f} ms; {args.steps} steps at context {args.context}, {args.threads} thread(s)")
        print(f"  {'op':<52}{'calls':>6}{'ms/step':>9}{'share':>7}")
        for label, (n, t) in sorted(spent.items(), key=lambda kv: -kv[1][1]):
            print(f"  {label:<52}{n // args.steps:>6}{t / args.steps * 1e3:>9.2f}{t / args.steps / mean_step:>7.0%}")
        glue = mean_step - total
        print(f"  {'glue (NumPy / Python between the ops)':<52}{'':>6}{glue * 1e3:>9.2f}{glue / mean_step:>7.0%}")
    spent, times = profile(model, args.steps, args.context, time.perf_counter, kernels=True)
    mean_step = sum(times) / args.steps
    inside = sum(t for _, t in spent.values()) / args.steps
    print(f"\nwall clock, compiled kernels alone: decode step mean {mean_step * 1e3:.2f} ms")
    for label, (n, t) in sorted(spent.items(), key=lambda kv: -kv[1][1]):
        print(f"  {label:<52}{n // args.steps:>6}{t / args.steps * 1e3:>9.3f}")
    print(f"  {'outside the compiled kernels':<52}{'':>6}{(mean_step - inside) * 1e3:>9.3f}"
          f"{(mean_step - inside) / mean_step:>7.0%}")


if __name__ == "__main__":
    main()
