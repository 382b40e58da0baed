"""Numba twins of the hot functions of cogcore.blocks (backend="numba")."""

from cogcore.blocks import ReferenceOps


class NumbaOps(ReferenceOps):
    """Compiled kernels where they exist; the NumPy reference for the rest."""

    name = "numba"
