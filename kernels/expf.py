"""A float32 exp that vectorises: `expf(x)`, for the softmax and SiLU loops of the kernels.

Numba lowers `np.exp` on a float32 scalar to a call of the C library's `expf`, which LLVM's
loop vectoriser cannot widen (no vector maths library is linked): about 5 ns a value here,
one at a time. Written out as arithmetic (Cody and Waite's range reduction and the Cephes
polynomial, the method of Cephes' `expf`), the same loop becomes AVX-512 code, 16 values per
instruction:

    n = round(x / ln 2)                    x = n ln 2 + r,  |r| <= ln(2) / 2
    r = (x - n C1) - n C2                  C1 + C2 = ln 2, C1 exact in 9 bits, so n C1 is exact
    e^r = 1 + r + r^2 P(r)                 P of degree 5 (Cephes' coefficients)
    e^x = e^r 2^(n-1) 2                    2^(n-1) built from its exponent bits

Accuracy: within 2 ulp of the exact e^x over the whole float32 range (tests/test_ops.py
checks 2 million points against float64). Special values as `np.exp`: -inf -> 0, +inf ->
+inf, NaN -> NaN, above 88.72 -> +inf. Results below 2^-125 (x < -86.99) are flushed to 0
instead of returned as the 4e-38 .. 1e-45 (sub)normals: an absolute error under 3e-38.

It is an intrinsic (LLVM IR) rather than an `njit` function so that the kernels' fast-math
flags never reach it: with `reassoc` the compiler could fold `n C1 + n C2` into `n ln 2` and
lose the exact split that keeps r accurate.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

LOG2E = 1.44269504088896341
C1 = 0.693359375                 # ln 2 = C1 + C2, C1 has 9 significant bits
C2 = -2.12194440e-4
P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
LOWEST = -86.99                  # below: 0 (n would leave the normal exponents of 2^(n-1))
HIGHEST = 88.72283905206835      # above: +inf (float32's largest value is e^88.7228...)


@intrinsic
def expf(typingctx, x):
    """e**x as a float32 (see the module docstring); a float64 x is rounded to float32 first."""
    if x not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        f32, i32 = ir.FloatType(), ir.IntType(32)
        c = lambda v: ir.Constant(f32, v)
        x = args[0] if signature.args[0] == types.float32 else builder.fptrunc(args[0], f32)
        below = builder.fcmp_ordered("<", x, c(LOWEST))
        above = builder.fcmp_ordered(">", x, c(HIGHEST))
        xc = builder.select(below, c(LOWEST), builder.select(above, c(HIGHEST), x))
        floor = builder.module.declare_intrinsic("llvm.floor", [f32])
        n = builder.call(floor, [builder.fadd(builder.fmul(xc, c(LOG2E)), c(0.5))])
        r = builder.fsub(builder.fsub(xc, builder.fmul(n, c(C1))), builder.fmul(n, c(C2)))
        p = c(P[0])
        for coefficient in P[1:]:
            p = builder.fadd(builder.fmul(p, r), c(coefficient))
        er = builder.fadd(builder.fadd(builder.fmul(p, builder.fmul(r, r)), r), c(1.0))
        # 2^(n-1): exponent field n - 1 + 127, with -125 <= n <= 128 always normal
        bits = builder.shl(builder.add(builder.fptosi(n, i32), ir.Constant(i32, 126)), ir.Constant(i32, 23))
        y = builder.fmul(builder.fmul(er, builder.bitcast(bits, f32)), c(2.0))
        y = builder.select(below, c(0.0), builder.select(above, c(float("inf")), y))
        return builder.select(builder.fcmp_unordered("uno", x, x), x, y)   # NaN stays NaN

    return types.float32(x), codegen


@intrinsic
def divide(typingctx, a, b):
    """a / b for float32 or float64 a, b (the wider type) as IEEE division (b = 0 gives ±inf or NaN),
    which vectorises. Numba's `/` first checks b against zero to raise ZeroDivisionError (its default
    error model), and that branch keeps a loop from vectorising: a SiLU or sigmoid loop ran one value
    at a time (~6 ns each)."""
    floats = (types.float32, types.float64)
    if a not in floats or b not in floats:
        return None
    result = types.float64 if types.float64 in (a, b) else types.float32

    def codegen(context, builder, signature, args):
        x, y = (context.cast(builder, v, t, result) for v, t in zip(args, signature.args))
        return builder.fdiv(x, y)

    return result(a, b), codegen
