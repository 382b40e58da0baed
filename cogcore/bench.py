"""`cogcore bench`: kernel and model speed, numba against numpy, against this machine's limits.

Every figure is a median of repeated timings taken in one run, next to the machine
limits measured in the same run, so that ratios stay meaningful on a noisy,
shared machine:

- read bandwidth: the best of a numpy sum, Numba serial and parallel sums and a BLAS
  sgemv, at 1 and 2 threads, over an array larger than the last-level cache (decode of
  a big model is bound by reading weights);
- sgemm FLOP/s: a square float32 matmul (prefill is bound by matmul FLOPs).

Sections (`--only`): limits, kernels, model, sparse, and prompt_cache (only when named;
cogcore/prompt_cache_bench.py). Compilation is done (or loaded
from Numba's cache) before anything is timed and reported on its own line.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable

import numpy as np

from .config import Config, preset
from .model import decode_bytes

SECTIONS = ("limits", "kernels", "model", "sparse", "prompt_cache")   # prompt_cache: only when asked
PRECISIONS = ("float32", "bfloat16", "q8_0", "q4_0")   # whole-model decode is benchmarked at each; a new storage type is one entry


def bench_config(layers: int = 8, width: int = 1024, experts: int = 32, expert_width: int = 512,
                 vocab: int = 32000) -> Config:
    """The issue's decode target: an 8-layer, 1024-wide recurrent / sparse-attention hybrid,
    32 experts of 512, top-2; heads of 128 as in the 4b preset (8 query, 2 kv)."""
    return preset("4b", hidden_size=width, num_hidden_layers=layers,
                  layer_types=["recurrent" if i % 2 == 0 else "sparse_attention" for i in range(layers)],
                  mlp_types=["moe"] * layers, num_attention_heads=width // 128, num_key_value_heads=2,
                  head_dim=128, num_experts=experts, moe_intermediate_size=expert_width, vocab_size=vocab)


def bench_weights(config: Config, precision: str, seed: int = 0) -> dict:
    """Random weights at a storage precision: a float dtype, or a GGML block type (q8_0 / q4_0) for
    the tensors `quant.quantizable` picks, quantized from the float32 values, the rest float32
    (as `cogcore init --type` writes them)."""
    from .create import random_weights
    from .quant import QTYPES, quantizable, quantize_tensor

    if precision not in QTYPES:
        return random_weights(config, seed=seed, dtype=precision)
    return {name: quantize_tensor(a, precision, name) if quantizable(name, a.shape) else a
            for name, a in random_weights(config, seed=seed).items()}


def bytes_per_token(config: Config, weights: dict[str, np.ndarray]) -> int:
    """Bytes of weights a decode step reads (`model.decode_bytes` summed over the tensors)."""
    return sum(decode_bytes(name, a, config) for name, a in weights.items())


# ---- timing -------------------------------------------------------------------------------------

def timeit(fn: Callable[[], object], reps: int, min_time: float = 0.0, mean: bool = False) -> float:
    """Median (or mean) seconds of `reps` calls (after one untimed call), more calls while under min_time."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start < min_time and len(times) < 50 * reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.mean(times) if mean else np.median(times))


def wall_and_cpu(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """Medians of wall-clock and of the calling thread's CPU seconds over the same `reps` calls (after
    one untimed call). With one thread (the kernels then run in the caller), CPU time is the time the
    call held a core: on a machine shared with other jobs it leaves out the time slices the scheduler
    gave to them, which wall time counts."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


@dataclasses.dataclass
class Row:
    section: str
    name: str
    numba: float | None = None       # seconds
    numpy: float | None = None       # seconds
    note: str = ""

    @property
    def speedup(self) -> float | None:
        return self.numpy / self.numba if self.numba and self.numpy else None


class Report:
    def __init__(self, out=sys.stdout, progress=sys.stderr):
        self.rows: list[Row] = []
        self.facts: dict[str, float | str] = {}
        self.out, self.progress = out, progress

    def step(self, msg: str) -> None:
        if self.progress is not None:
            print(f"  .. {msg}", file=self.progress, flush=True)

    def line(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        fmt = lambda s: f"{s * 1e3:10.3f}" if s is not None else f"{'-':>10}"
        sp = f"{row.speedup:7.1f}x" if row.speedup else f"{'':8}"
        self.line(f"  {row.name:<44}{fmt(row.numba)}{fmt(row.numpy)} {sp}  {row.note}")
        return row

    def header(self, title: str) -> None:
        self.line()
        self.line(f"## {title}")
        self.line(f"  {'':<44}{'numba ms':>10}{'numpy ms':>10} {'speedup':>8}  vs. limit")


# ---- machine limits -----------------------------------------------------------------------------

def _sums():
    """A serial and a parallel Numba sum over a float32 array (each its own function: Numba's
    disk cache does not key on `parallel=`). Both vectorise; the parallel one is a prange reduction."""
    from numba import njit, prange

    @njit(fastmath=True, cache=True)
    def serial_sum(a):
        s = np.float32(0.0)
        for i in range(a.size):
            s += a[i]
        return s

    @njit(fastmath=True, cache=True, parallel=True)
    def parallel_sum(a):
        s = np.float32(0.0)
        for i in prange(a.size):
            s += a[i]
        return s
    return serial_sum, parallel_sum


def read_bandwidth(nbytes: int, reps: int, threads=(1, 2)) -> tuple[float, str, dict[str, float]]:
    """The best read rate this machine reaches now: the best of several ways of streaming an array
    larger than the last-level cache once (numpy sum, Numba serial and parallel sums, BLAS sgemv
    against ones), at each thread count, `reps` times each. A single method or thread count
    under-reports on some machines (numpy's sum is not always vectorised for float32, OpenBLAS sgemv
    reaches ~half the rate of a plain sum here), and a model can read at any of these rates, so the
    bound is their best. Returns (bytes/s, winning method, best rate of every method)."""
    import numba

    from .kernels.threads import set_threads

    a = np.ones(nbytes // 4, np.float32)
    W, ones = a.reshape(-1, 1024), np.ones(1024, np.float32)
    serial_sum, parallel_sum = _sums()
    serial_sum(a[:64]), parallel_sum(a[:64])
    methods = {"numpy sum": a.sum, "numba sum": lambda: serial_sum(a), "numba parallel sum": lambda: parallel_sum(a),
               "BLAS sgemv with ones": lambda: W @ ones}
    before = numba.get_num_threads()
    rates: dict[str, float] = {}
    try:
        for n in sorted({min(t, numba.config.NUMBA_NUM_THREADS) for t in threads}):
            set_threads(n)
            for name, fn in methods.items():
                if name == "numba sum" and n > 1:
                    continue                      # one thread whatever the setting
                fn()
                best = min(_once(fn) for _ in range(reps))
                rates[f"{name}, {n} thread{'s' * (n > 1)}"] = a.nbytes / best
    finally:
        set_threads(before)
    winner = max(rates, key=rates.get)
    return rates[winner], winner, rates


def _once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def machine_limits(rep: Report, quick: bool) -> dict[str, float]:
    """Read bandwidth (bytes/s) and sgemm FLOP/s, measured now."""
    nbytes = (512 if quick else 1024) * 2**20
    rep.step(f"read bandwidth over {nbytes / 2**20:.0f} MiB: 4 methods x 1 and 2 threads")
    bw, winner, rates = read_bandwidth(nbytes, 3 if quick else 5)
    m = 1024 if quick else 2048
    rep.step(f"sgemm {m}^3")
    A = np.random.default_rng(0).standard_normal((m, m), np.float32)
    t_mm = timeit(lambda: A @ A, 3 if quick else 5)
    flops = 2 * m**3 / t_mm
    rep.line(f"  read bandwidth: {bw / 1e9:.1f} GB/s, best of {len(rates)} ways over {nbytes / 2**20:.0f} MiB "
             f"(won by {winner}; each the best of {3 if quick else 5}):")
    rep.line("    " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in rates.items()))
    rep.line(f"  sgemm: {flops / 1e9:.1f} GFLOP/s  ({m}x{m}x{m} float32)")
    rep.facts.update(bandwidth_GBps=bw / 1e9, bandwidth_method=winner, sgemm_GFLOPs=flops / 1e9,
                     **{f"bandwidth_GBps[{k}]": v / 1e9 for k, v in rates.items()})
    return {"bandwidth": bw, "flops": flops}


# ---- kernels ------------------------------------------------------------------------------------

def kernel_rows(rep: Report, lim: dict, quick: bool) -> None:
    from .backends import NumbaOps
    from .blocks import ReferenceOps
    from .blocks.rope import inv_freq
    from .blocks.sparse_attention import NSAShape
    from .dtypes import to_storage
    from .quant import QTYPES, quantize_tensor

    nb, ref = NumbaOps(), ReferenceOps()
    rng = np.random.default_rng(0)
    reps = 5 if quick else 11
    fl = lim["flops"]

    def row(name, f_nb, f_ref, note_fn=None, ref_reps=None):
        rep.step(name)
        t_nb = timeit(f_nb, reps, 0.2)
        t_ref = timeit(f_ref, ref_reps or reps, 0.2) if f_ref is not None else None
        rep.add(Row("kernels", name, t_nb, t_ref, note_fn(t_nb) if note_fn else ""))

    D, F, E = 1024, 512, 32
    W = rng.standard_normal((4096, D), np.float32) / 32
    x1, xp = rng.standard_normal((1, D), np.float32), rng.standard_normal((512, D), np.float32)
    for tag in ("F32", "BF16", "F16"):
        Ws = to_storage(W, tag)
        row(f"linear decode 1x{D} @ 4096x{D} {tag}", lambda: nb.linear(x1, Ws), lambda: ref.linear(x1, Ws),
            lambda t: f"{Ws.nbytes / t / 1e9:.0f} GB/s (in cache)")
    for qtype in QTYPES:
        Wq = quantize_tensor(W, qtype)
        row(f"linear decode 1x{D} @ 4096x{D} {qtype}", lambda: nb.linear(x1, Wq), lambda: ref.linear(x1, Wq),
            lambda t: f"{Wq.nbytes / t / 1e9:.0f} GB/s (in cache)")
    for tag in ("F32", "BF16"):
        Ws = to_storage(W, tag)
        row(f"linear prefill 512x{D} @ 4096x{D} {tag}", lambda: nb.linear(xp, Ws), lambda: ref.linear(xp, Ws),
            lambda t: f"{2 * 512 * W.size / t / fl:.0%} of sgemm")
    w = np.ones(D, np.float32)

    def ref_add_rmsnorm(x, y):          # the reference's unfused form: h = x + y, then the norm
        h = x + y
        return h, ref.rmsnorm(h, w, 1e-5)

    for T in (1, 2048):
        h = rng.standard_normal((T, D), np.float32)
        row(f"residual add + rmsnorm {T}x{D}", lambda: nb.add_rmsnorm(h, h, w, 1e-5),
            lambda: ref_add_rmsnorm(h, h))
    freqs = inv_freq(128, 1e4)
    for T in (1, 2048):
        q = rng.standard_normal((T, 8, 128), np.float32)
        pos = np.arange(T) + 100
        row(f"rope {T}x8x128", lambda: nb.rope(q, pos, freqs), lambda: ref.rope(q, pos, freqs))
    S = 4096
    K, V = rng.standard_normal((S, 2, 128), np.float32), rng.standard_normal((S, 2, 128), np.float32)
    q = rng.standard_normal((1, 8, 128), np.float32)
    row(f"attention decode, context {S}", lambda: nb.attention(q, K, V, np.array([S - 1]), np.arange(S)),
        lambda: ref.attention(q, K, V, np.array([S - 1]), np.arange(S)),
        lambda t: f"{2 * K.nbytes / t / 1e9:.0f} GB/s of K, V (in cache)")
    shape = NSAShape(32, 16, 64, 16, 512)
    B = (S - 32) // 16 + 1
    kc, vc = rng.standard_normal((B, 2, 128), np.float32), rng.standard_normal((B, 2, 128), np.float32)
    row(f"nsa_attention decode, context {S}", lambda: nb.nsa_attention(q, K, V, kc, vc, np.array([S - 1]), shape),
        lambda: ref.nsa_attention(q, K, V, kc, vc, np.array([S - 1]), shape))
    Tq = 256 if quick else 1024
    qp = rng.standard_normal((Tq, 8, 128), np.float32)
    row(f"nsa_attention prefill {Tq} queries", lambda: nb.nsa_attention(qp, K[:Tq], V[:Tq], kc, vc, np.arange(Tq), shape),
        lambda: ref.nsa_attention(qp, K[:Tq], V[:Tq], kc, vc, np.arange(Tq), shape), ref_reps=1)
    row(f"attention prefill {Tq} queries (full, causal)",
        lambda: nb.attention(qp, K[:Tq], V[:Tq], np.arange(Tq), np.arange(Tq)),
        lambda: ref.attention(qp, K[:Tq], V[:Tq], np.arange(Tq), np.arange(Tq)), ref_reps=3)
    for T in (1, 64):
        r = rng.standard_normal((T, 16, 64), np.float32) / 8
        wd = rng.uniform(0.5, 1, (T, 16, 64)).astype(np.float32)
        kk = r / np.linalg.norm(r, axis=-1, keepdims=True)
        S0 = np.zeros((16, 64, 64), np.float32)
        row(f"wkv7 {T} token(s), 16 heads of 64", lambda: nb.wkv7(r, wd, r, r, kk, wd, S0.copy()),
            lambda: ref.wkv7(r, wd, r, r, kk, wd, S0.copy()))
    router = rng.standard_normal((E, D), np.float32)
    G, U, Dn = (rng.standard_normal(s, np.float32) / 32 for s in ((E, F, D), (E, F, D), (E, D, F)))
    for tag in ("F32", "BF16"):
        Gs, Us, Ds, Rs = (to_storage(a, tag) for a in (G, U, Dn, router))
        per_tok = 2 * 3 * F * D * Gs.itemsize + Rs.nbytes
        row(f"moe decode top-2 of {E}x{F} {tag}", lambda: nb.moe(x1, Rs, Gs, Us, Ds, 2, True),
            lambda: ref.moe(x1, Rs, Gs, Us, Ds, 2, True), lambda t: f"{per_tok / t / 1e9:.0f} GB/s (experts in cache)")
        row(f"moe prefill 512 tokens {tag}", lambda: nb.moe(xp, Rs, Gs, Us, Ds, 2, True),
            lambda: ref.moe(xp, Rs, Gs, Us, Ds, 2, True),
            lambda t: f"{2 * 512 * 2 * 3 * F * D / t / fl:.0%} of sgemm")
    for qtype in QTYPES:
        Gq, Uq, Dq = (quantize_tensor(a, qtype) for a in (G, U, Dn))
        per_tok = 2 * (Gq[0].nbytes + Uq[0].nbytes + Dq[0].nbytes) + router.nbytes
        row(f"moe decode top-2 of {E}x{F} {qtype}", lambda: nb.moe(x1, router, Gq, Uq, Dq, 2, True),
            lambda: ref.moe(x1, router, Gq, Uq, Dq, 2, True), lambda t: f"{per_tok / t / 1e9:.0f} GB/s (experts in cache)")
    logits = rng.standard_normal(32000).astype(np.float32) * 3
    for k, p in ((40, 1.0), (0, 0.9)):
        row(f"sampler filter V=32000 top_k={k} top_p={p}", lambda: nb.token_probabilities(logits, 0.8, k, p, 0.0),
            lambda: ref.token_probabilities(logits, 0.8, k, p, 0.0))


# ---- whole model --------------------------------------------------------------------------------

def decode_row(rep: Report, name: str, models: dict, bpt: int, lim: dict, reps: int, context: int = 64) -> float:
    """Median seconds of one decode step at `context` for each backend in `models`; adds a row with
    tokens/s and the fraction of the bandwidth bound (`bpt` bytes read per token), and with one thread
    the same fraction on CPU time (see `wall_and_cpu`). Returns numba's wall time."""
    import numba

    rng = np.random.default_rng(0)
    prompt = rng.integers(0, next(iter(models.values())).config.vocab_size, context)
    dec = {}
    for b, m in models.items():
        rep.step(f"{name}: decode at context {context}, {b}")
        cache = m.new_cache()
        m.forward(prompt, cache)
        if b == "numba":
            dec[b], cpu = wall_and_cpu(lambda: m.forward([7], cache), reps)
        else:
            dec[b] = timeit(lambda: m.forward([7], cache), max(3, reps // 3))
    # The machine's read rate moves with other programs' load: measure it again right after the
    # decode timings and keep the best seen in this run, so that a slow moment of the first
    # measurement cannot make decode look faster than the bound.
    rep.step("read bandwidth again")
    lim["bandwidth"] = max(lim["bandwidth"], read_bandwidth(512 * 2**20, 2)[0])
    bound = bpt / lim["bandwidth"]
    t = dec["numba"]
    note = (f"{1 / t:6.1f} tok/s, {bound / t:4.0%} of bound ({bound * 1e3:.1f} ms: {bpt / 2**20:.0f} MiB/token "
            f"at {lim['bandwidth'] / 1e9:.1f} GB/s)")
    if "numpy" in dec:
        note += f"; numpy {bound / dec['numpy']:.0%}"
    single = numba.get_num_threads() == 1
    if single:              # with more threads, the work runs on threads the caller's CPU time misses
        note += f"; CPU time {cpu * 1e3:.1f} ms: {bound / cpu:.0%} of bound"
    rep.add(Row("model", f"decode 1 token, {name}", t, dec.get("numpy"), note))
    rep.facts.update({f"decode_tok_s[{name}]": 1 / t, f"decode_bound_fraction[{name}]": bound / t,
                      f"bandwidth_GBps[best before {name}]": lim["bandwidth"] / 1e9})
    if single:
        rep.facts.update({f"decode_cpu_ms[{name}]": cpu * 1e3, f"decode_cpu_bound_fraction[{name}]": bound / cpu})
    return t


def model_rows(rep: Report, lim: dict, quick: bool, precisions: tuple[str, ...], prefill_len: int,
               model_dirs: tuple[str, ...] = (), int8_activations: bool = False) -> None:
    """Decode of the 8 x 1024 hybrid at every precision (and of model directories, e.g. the 4b
    preset written by `cogcore init`), then prefill at the first precision."""
    from .model import Model, load
    from .ops import ops_for
    from .weights import Weights

    cfg = bench_config()
    reps = 5 if quick else 15
    rep.line("  model: 8 layers x 1024, recurrent/sparse_attention, 32 experts x 512 top-2, vocab 32000; "
             "context 64; bound = bytes read per token / read bandwidth")
    first = None
    for precision in precisions:
        rep.step(f"random {precision} weights of the 8-layer bench model")
        tensors = bench_weights(cfg, precision)
        models = {b: Model(cfg, Weights(tensors), backend=ops_for(b, int8_activations)) for b in ("numba", "numpy")}
        t = decode_row(rep, f"8x1024 {precision}", models, bytes_per_token(cfg, tensors), lim, reps)
        if first is None:
            first = (precision, tensors, models, t)
        else:
            del tensors, models
    for path in model_dirs:
        rep.step(f"loading {path} (memory-mapped)")
        m = load(path, int8_activations=int8_activations)
        tensors = m.weights.tensors                  # cogcore's names (a family's or a GGUF file's mapped)
        c = m.config
        experts = (f"{c.num_experts} experts x {c.moe_intermediate_size} top-{c.num_experts_per_tok}"
                   if c.num_experts else "/".join(sorted(set(c.mlp_types))))
        rep.line(f"  {path}: {c.num_hidden_layers} layers x {c.hidden_size}, "
                 f"{'/'.join(sorted(set(c.layer_types)))}, {experts}")
        decode_row(rep, os.path.basename(os.path.normpath(path)), {"numba": m},
                   bytes_per_token(m.config, tensors), lim, max(3, reps // 3))
    if first is None:
        return
    precision, tensors, models, t_dec = first
    params_pt = sum(a.size for a in tensors.values()) * bytes_per_token(cfg, tensors) / sum(
        a.nbytes for a in tensors.values())
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, prefill_len)
    pre = {}
    for b, m in models.items():
        if b == "numpy" and quick:
            continue
        rep.step(f"prefill {prefill_len} tokens, {b}")
        pre[b] = timeit(lambda: m.forward(ids, last_only=True), 1 if b == "numpy" else 2)
    lm_head = cfg.vocab_size * cfg.hidden_size          # a prefill reads out the last token only
    flop = 2 * (params_pt - lm_head) * prefill_len + 2 * lm_head
    per_tok = pre["numba"] / prefill_len
    rep.add(Row("model", f"prefill {prefill_len} tokens, 8x1024 {precision}", pre["numba"], pre.get("numpy"),
                f"{flop / pre['numba'] / lim['flops']:.0%} of sgemm; {per_tok * 1e3:.2f} ms/token = "
                f"{t_dec / per_tok:.1f}x faster per token than decode"))
    rep.facts.update(prefill_sgemm_fraction=flop / pre["numba"] / lim["flops"],
                     prefill_per_token_over_decode=per_tok / t_dec)


# ---- sparse against full attention at long context ---------------------------------------------

def sparse_rows(rep: Report, context: int, quick: bool) -> None:
    from .create import random_weights
    from .model import Model, Pass
    from .weights import Weights

    cfg = bench_config(layers=2, vocab=256).replace(
        layer_types=["full_attention", "sparse_attention"], mlp_types=["dense", "dense"], intermediate_size=8,
        max_position_embeddings=max(131072, 2 * context))
    tensors = random_weights(cfg, seed=0)
    rng = np.random.default_rng(0)
    H, Hkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    K = rng.standard_normal((context, Hkv, hd), np.float32)
    V = rng.standard_normal((context, Hkv, hd), np.float32)
    x = rng.standard_normal((1, cfg.hidden_size), np.float32)
    reps = 5 if quick else 11
    results = {}
    for b in ("numba", "numpy"):
        model = Model(cfg, Weights(tensors), backend=b)
        full, sparse = model.layers[0].mixer, model.layers[1].mixer
        cache = model.new_cache()
        st_full, st_sparse = cache.layers[0][0], cache.layers[1][0]
        rep.step(f"{b}: filling a {context}-position cache (and compressing its blocks)")
        pos = np.arange(context)
        st_full.extend(K, V, pos)
        st_sparse.kv.extend(K, V, pos)
        nblk = (context - sparse.shape.block) // sparse.shape.stride + 1
        st_sparse.kc.append(model.ops.nsa_compress(K, 0, nblk, *sparse.compress_k, sparse.shape))
        st_sparse.vc.append(model.ops.nsa_compress(V, 0, nblk, *sparse.compress_v, sparse.shape))
        def layer(mixer, st):
            step = {"n": context}

            def go():
                ctx = Pass(positions=np.array([step["n"]]))
                mixer(x, st, ctx)
                step["n"] += 1
            return go

        rep.step(f"{b}: decode steps at context {context}")
        steps = 2 * sparse.shape.stride       # the mean over whole strides includes the block compressions
        t_full = timeit(layer(full, st_full), steps, mean=True)
        t_sparse = timeit(layer(sparse, st_sparse), steps, mean=True)
        q = rng.standard_normal((1, H, hd), np.float32)
        qp = np.array([context - 1])
        ops = model.ops
        Kf, Vf = st_full.k.view()[:context], st_full.v.view()[:context]
        t_core_full = timeit(lambda: ops.attention(q, Kf, Vf, qp, np.arange(context)), reps)
        kc, vc = st_sparse.kc.view(), st_sparse.vc.view()
        t_core_sparse = timeit(lambda: ops.nsa_attention(q, Kf, Vf, kc, vc, qp, sparse.shape), reps)
        results[b] = (t_full, t_sparse, t_core_full, t_core_sparse)
    nbr, npr = results["numba"], results["numpy"]
    sh = sparse.shape           # NSA's memory-access model (paper, Table 4): tokens of K/V read per query
    read = (context - sh.block) // sh.stride + 1 + sh.select_block * sh.select_count + sh.window
    rep.add(Row("sparse", f"full attention layer decode, context {context}", nbr[0], npr[0]))
    rep.add(Row("sparse", f"sparse attention layer decode, context {context}", nbr[1], npr[1],
                f"{nbr[0] / nbr[1]:.1f}x faster than full (numpy {npr[0] / npr[1]:.1f}x)"))
    rep.add(Row("sparse", "  attention core only, full", nbr[2], npr[2]))
    rep.add(Row("sparse", "  attention core only, sparse (3 branches)", nbr[3], npr[3],
                f"{nbr[2] / nbr[3]:.1f}x faster than full (memory-access model: {context / read:.1f}x)"))
    rep.facts.update(sparse_layer_speedup=nbr[0] / nbr[1], sparse_core_speedup=nbr[2] / nbr[3],
                     sparse_access_model=context / read)


# ---- entry --------------------------------------------------------------------------------------

def run(only: list[str] | None = None, quick: bool = False, threads: int | None = None,
        precisions: tuple[str, ...] = PRECISIONS, context: int = 16384, prefill_len: int = 2048,
        model_dirs: tuple[str, ...] = (), int8_activations: bool = False, out=sys.stdout,
        progress=sys.stderr) -> Report:
    import platform

    import numba

    from .backends import NumbaInt8Ops, NumbaOps
    from .kernels.threads import set_threads

    rep = Report(out, progress)
    sections = only or [s for s in SECTIONS if s != "prompt_cache"]
    blas_set = set_threads(threads) if threads else None
    rep.line(f"# cogcore bench{' --quick' if quick else ''}")
    rep.line(f"  machine: {platform.processor() or platform.machine()}, {numba.config.NUMBA_NUM_THREADS} cores; "
             f"threads: numba {numba.get_num_threads()}"
             + ("" if blas_set is None else f", OpenBLAS {'set' if blas_set else 'not settable'} to {threads}")
             + f"; numpy {np.__version__}, numba {numba.__version__}")
    rep.step("compiling / loading the kernels")
    t_compile = (NumbaInt8Ops if int8_activations else NumbaOps).warm_up()
    rep.line(f"  kernel warm-up (compile, or load from numba's cache): {t_compile:.1f} s (excluded below)")
    rep.facts["warm_up_s"] = t_compile
    rep.header("machine limits")
    lim = machine_limits(rep, quick)
    if "kernels" in sections:
        rep.header("kernels")
        kernel_rows(rep, lim, quick)
    if "model" in sections:
        rep.header("whole model")
        if int8_activations:
            rep.line("  --int8-activations: q8_0/q4_0 weights dotted with activations rounded to q8_0 blocks")
            rep.facts["int8_activations"] = True
        model_rows(rep, lim, quick, tuple(precisions), 512 if quick else prefill_len, tuple(model_dirs),
                   int8_activations)
    if "sparse" in sections:
        context = 4096 if quick and context == 16384 else context
        rep.header(f"sparse against full attention decode at context {context}")
        sparse_rows(rep, context, quick)
    if "prompt_cache" in sections:
        from .prompt_cache_bench import prompt_cache_rows
        rep.header("prompt cache: time to first token, 4096-token context + 16-token query")
        prompt_cache_rows(rep, quick)
    return rep
