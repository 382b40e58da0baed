"""How many threads the kernels use, and their serial / parallel variants.

Every kernel that splits work with `prange` is compiled twice by `twins`: a serial
variant for small calls and a parallel one for large calls; `pick` chooses per
call. Numba's disk cache (`cache=True`) keys a compiled function by its qualified
name and signature, not by `parallel=`, so one Python function compiled both ways
would share one cache entry and load whichever variant was compiled first for
both: each variant here is its own Python function.

On a machine shared with other work, two pools that spin while they wait (OpenMP
for Numba, pthreads for OpenBLAS) can slow each other down badly; `cogcore bench
--threads N` sets both to N so that figures are taken with a known thread count.

Both pools sleep soon after their work is done: `import cogcore` sets `GOMP_SPINCOUNT` and
`OPENBLAS_THREAD_TIMEOUT` unless the environment sets them (cogcore/__init__.py says why).

When to split. A parallel region costs ~2 us when the other threads' cores are free, but when
another program holds one of them it waits for that core (~0.1 ms per region here, up to a
scheduler time slice), and a decode step has dozens of regions: two threads then decode 2-3x
slower than one. So `pick` splits a kernel when it has at least PARALLEL_MIN_WORK elements of
work *and* the cores were free at the last probe: every PROBE_EVERY seconds it reads how much
CPU other programs used since the last probe (Linux's /proc: the busy time of all cores less
this process's own) and calls the cores busy from OTHERS_BUSY of a core on (without /proc it
times an empty parallel region instead, `_others_hold_a_core`). While they are busy every kernel
runs on the calling thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import time
import types

import numba
import numpy as np

PARALLEL_MIN_WORK = 1 << 18          # elements touched below which a kernel runs on one thread (256K:
                                     # a 256 x 1024 projection splits; a router, norms, short attention not)
PROBE_EVERY = 0.1                    # seconds between two probes of whether the cores are free
OTHERS_BUSY = 0.5                    # cores' worth of CPU that other programs used since the last probe:
                                     # from this on a core is busy (/proc)
PROBE_BUSY = 25e-6                   # without /proc: an awake empty parallel region this slow: a core is busy
PARALLEL_KERNELS: list[tuple] = []      # (serial, parallel) dispatchers made by `twins`
_probe = {"next": 0.0, "free": True, "on": True, "threads": 0,   # threads: Numba's count at the last probe
          "ticks": None}                                          # `_cpu_ticks` and the time, at the last probe
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

_BLAS_SYMBOLS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                 "openblas_set_num_threads64_", "openblas_set_num_threads")


def _renamed(fn, suffix: str):
    """A new Python function with fn's code under the name fn.__name__ + suffix."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__,
                              fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + suffix
    twin.__doc__, twin.__module__ = fn.__doc__, fn.__module__
    return twin


def twins(fn, **options):
    """(serial, parallel) compiled variants of the prange kernel fn, each cached on its own."""
    serial = numba.njit(cache=True, **options)(_renamed(fn, "_serial"))
    parallel = numba.njit(cache=True, parallel=True, **options)(_renamed(fn, "_parallel"))
    PARALLEL_KERNELS.append((serial, parallel))
    return serial, parallel


def pick(serial, parallel, work: int):
    """The parallel variant of a kernel only when there is enough work to pay for waking threads.

    A parallel region costs a few microseconds on an idle machine, but when other programs
    hold the cores it can wait a whole scheduler time slice for a worker thread, so small
    kernels (every kernel of a small model, most of a decode step) stay on one thread.
    """
    if work >= PARALLEL_MIN_WORK and cores_free() and _probe["threads"] > 1:
        return parallel
    return serial


def parallel_threads() -> int:
    """The number of threads `pick`'s parallel variants run on (Numba's count at the last probe)."""
    return _probe["threads"]


def threads_of(chosen, serial) -> int:
    """The number of threads the variant `pick` returned runs on: 1 if it is `serial`, else
    `parallel_threads()` (for kernels that split their work by it)."""
    return 1 if chosen is serial else parallel_threads()


def cores_free() -> bool:
    """Whether the worker threads' cores were free at the last probe (probed every PROBE_EVERY s).

    The probe also notes Numba's thread count for `pick` (`numba.get_num_threads` takes a lock:
    0.5 us, a few dozen times a decode step): `set_threads` notes it at once, a direct
    `numba.set_num_threads` is seen at the next probe (until then `pick` may choose the other
    variant, which gives the same results)."""
    now = time.perf_counter()
    if _probe["on"] and now >= _probe["next"]:
        n = _probe["threads"] = numba.get_num_threads()
        if n > 1:
            _probe["free"] = not _others_hold_a_core(n)
        _probe["next"] = now + PROBE_EVERY
    return _probe["free"]


def _cpu_ticks():
    """(clock ticks every core spent busy, including time the host took: /proc/stat; clock ticks this
    process spent, all its threads: /proc/self/stat), or None without /proc."""
    try:
        with open("/proc/stat", "rb") as f:
            cpu = [int(v) for v in f.readline().split()[1:9]]   # user nice system idle iowait irq softirq steal
        with open("/proc/self/stat", "rb") as f:
            own = f.read().rsplit(b")", 1)[1].split()            # (the name may hold spaces) state ppid ...
    except (OSError, ValueError, IndexError):
        return None
    return sum(cpu) - cpu[3] - cpu[4], int(own[11]) + int(own[12])   # utime + stime


def _others_hold_a_core(n: int) -> bool:
    """Whether other programs used OTHERS_BUSY cores' worth of CPU or more since the last probe: the
    busy ticks of all cores less this process's own (/proc). Without /proc: whether an empty parallel
    region of n threads, timed right after another (so the workers are awake), took PROBE_BUSY or more
    (free: 2-3 us; one core held by another program: ~115 us). That timing misreads on this VM: a
    quarter to a half of the probes of a plain two-thread decode, nothing else running, read ~110 us
    three times in a row, and those windows ran on one thread (the step 13-28 % longer than with the
    probe off; docs/performance.md, "Seventh session: the cores-free probe")."""
    ticks, now = _cpu_ticks(), time.perf_counter()
    last, _probe["ticks"] = _probe["ticks"], (ticks, now)
    if ticks is not None:
        if last is None or last[0] is None or now <= last[1]:
            return False                                  # the first probe: no window yet
        others = (ticks[0] - last[0][0]) - (ticks[1] - last[0][1])
        return others >= OTHERS_BUSY * (now - last[1]) * _TICKS_PER_SECOND
    thread_ids_parallel(n)                                # wakes the workers
    t = time.perf_counter()
    thread_ids_parallel(n)
    return time.perf_counter() - t >= PROBE_BUSY


@contextlib.contextmanager
def parallel_from(work: int):
    """Within the block, `pick` takes the parallel variants from `work` elements on (0: always),
    whether or not the cores are free."""
    global PARALLEL_MIN_WORK
    saved = PARALLEL_MIN_WORK, dict(_probe)
    PARALLEL_MIN_WORK = work
    _probe.update(on=False, free=True, threads=numba.get_num_threads())
    try:
        yield
    finally:
        PARALLEL_MIN_WORK = saved[0]
        _probe.update(saved[1], threads=numba.get_num_threads())


@numba.njit(inline="always")
def filled(a, value):
    """a with every element set to value, by a plain loop: at the top of a parallel kernel np.zeros,
    np.full and slice assignment each become a parallel region of their own (~1 us at two threads)."""
    flat = a.reshape(-1)
    for i in range(flat.shape[0]):
        flat[i] = value
    return a


def _thread_ids(n):
    """The Numba thread that ran each of n iterations (how tests see a variant run in parallel)."""
    out = np.empty(n, np.int64)
    for i in numba.prange(n):
        out[i] = numba.get_thread_id()
    return out


thread_ids_serial, thread_ids_parallel = twins(_thread_ids)


def _openblas():
    libdir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in glob.glob(os.path.join(libdir, "*openblas*.so*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _BLAS_SYMBOLS:
            fn = getattr(lib, name, None)
            if fn is not None:
                return fn
    return None


def set_threads(n: int) -> bool:
    """Numba's and OpenBLAS's thread counts to n; returns whether OpenBLAS could be set."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    _probe["threads"] = n
    fn = _openblas()
    if fn is None:
        return False
    fn(ctypes.c_int(n))
    return True
