"""The blocks of the model, one module each, in NumPy: the readable reference.

A block reads its weights at construction and calls its hot loops through an ops
table (the contract is `cogcore.ops.Ops`), so that the Numba backend
(`cogcore.backends.NumbaOps`) swaps in compiled twins of exactly these functions
while the blocks stay as written here.
"""

import functools

from .. import sampling
from . import attention, linear, moe, norm, rope, rwkv7, sparse_attention
from .linear import linear_int8


class ReferenceOps:
    """The NumPy implementation of every op of `cogcore.ops.Ops` (backend "numpy")."""

    name = "numpy"
    int8_activations = False

    embed = staticmethod(linear.embed)
    linear = staticmethod(linear.linear)
    sigmoid = staticmethod(rwkv7.sigmoid)
    rmsnorm = staticmethod(norm.rmsnorm)
    layernorm = staticmethod(norm.layernorm)
    rope = staticmethod(rope.rope)
    attention = staticmethod(attention.attention)
    nsa_compress = staticmethod(sparse_attention.compress)
    nsa_attention = staticmethod(sparse_attention.nsa_attention)
    wkv7 = staticmethod(rwkv7.wkv7)
    moe = staticmethod(moe.moe)
    token_probabilities = staticmethod(sampling.token_probabilities)


class ReferenceInt8Ops(ReferenceOps):
    """`ReferenceOps` with int8 activations for quantized weights (`linear.linear_int8`: x rounded to
    q8_0 blocks, integer dots per block), as GGML computes q8_0 / q4_0 products on the CPU."""

    int8_activations = True
    linear = staticmethod(linear_int8)
    moe = staticmethod(functools.partial(moe.moe, linear=linear_int8))
