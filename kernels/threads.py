"""How many threads the kernels and BLAS use (both pools, set together).

On a machine shared with other work, two pools that spin while they wait (OpenMP
for Numba, pthreads for OpenBLAS) can slow each other down badly; `cogcore bench
--threads N` sets both to N so that figures are taken with a known thread count.
"""

from __future__ import annotations

import ctypes
import glob
import os

import numba
import numpy as np

_BLAS_SYMBOLS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                 "openblas_set_num_threads64_", "openblas_set_num_threads")


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
    fn = _openblas()
    if fn is None:
        return False
    fn(ctypes.c_int(n))
    return True


def get_threads() -> int:
    return numba.get_num_threads()
