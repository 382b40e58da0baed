"""Linear layers and MoE experts over GGML q8_0 / q4_0 blocks, computed from the packed bytes.

The NumPy twin dequantizes the whole weight (cogcore/quant.py) and multiplies in
float32. Here the weight is never widened whole:

- decode (a few rows of x): a fused dequantize-dot GEMV. Each weight row is read
  once, block by block (34 or 18 bytes per 32 values): sum over blocks of
  d * (q . x), the block's int8 / 4-bit values q widened to float32 in registers,
  i.e. the float path on GGML-dequantized weights to round-off (q * d is exact in
  float32: at most 8 + 11 significant bits). Output rows are split across threads
  (prange over groups of 16 rows).
- prefill (many rows of x): groups of weight rows are dequantized into a bounded
  float32 scratch and multiplied by BLAS, so memory stays about the file size.
- MoE decode: the fused GEMV over the chosen experts' blocks only (the same
  gate/up -> silu * up -> down pipeline as kernels/moe.py).

The block loops are written in LLVM IR (`dot_q8_0`, `dot_q4_0`, `dequantize_row_*`
below, Numba intrinsics), because LLVM does not vectorise the Numba-level loops well:
it vectorised the per-block loop across blocks with gathers and byte inserts, and a
32-lane accumulator array stayed in memory (1-10 GB/s). In IR a block is two
16-wide float vectors (elements j and j + 16 share lane j), so every instruction in
the loop is a vector one (int8 -> int32 widen, int -> float, multiply-adds), two
blocks per iteration into two accumulators (no stall on the multiply-add latency),
and the 16 lanes are summed once per row. The summation order is fixed by that
code, not left to fastmath.

The float16 scale is decoded through a 65536-entry float32 table, as GGML does.
Kernels that split work across threads come in a serial and a parallel variant
(`threads.twins`). This module imports nothing from cogcore.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .linear import FAST, SMALL_T
from .threads import pick, twins

Q8_0, Q4_0 = 0, 1
CODE = {"q8_0": Q8_0, "q4_0": Q4_0}
BLOCK_BYTES = np.array([34, 18], np.int64)
HALF_TO_FLOAT = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
ROWS_PER_TASK = 16                     # output rows per parallel task
PREFILL_SCRATCH = 1 << 20              # float32 values dequantized per BLAS block (4 MiB)


# ---- the block loops, in LLVM IR -----------------------------------------------------------------
_I8, _I16, _I32, _I64, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
_LANES = 16
ACCUMULATORS = 2                      # blocks in flight per row (independent multiply-add chains)
_VF = ir.VectorType(_F32, _LANES)       # half a block of float32


def _const(ty, value):
    return ir.Constant(ty, value)


def _splat(value, ty):
    return ir.Constant(ir.VectorType(ty, _LANES), [value] * _LANES)


def _load(builder, ptr, offset, ty):
    """The value of type ty at byte offset `offset` of the uint8 pointer ptr (unaligned)."""
    p = builder.gep(ptr, [_const(_I64, offset)]) if isinstance(offset, int) else builder.gep(ptr, [offset])
    return builder.load(builder.bitcast(p, ty.as_pointer()), align=1)


def _vfma(builder, a, b, c):
    """a * b + c lane by lane, fused (llvm.fma on a vector)."""
    name = f"llvm.fma.v{a.type.count}f32"
    fn = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(a.type, [a.type] * 3), name)
    return builder.call(fn, [a, b, c])


def _broadcast(builder, value):
    """A float vector with `value` in every lane."""
    v = builder.insert_element(ir.Constant(_VF, ir.Undefined), value, _const(_I32, 0))
    return builder.shuffle_vector(v, v, _splat(0, _I32))


def _block(builder, qtype, block_ptr, table_ptr):
    """(d, lo, hi): a block's float32 scale and its values q without the scale, elements 0..15 and 16..31
    as two float vectors. q8_0: the 32 int8 after the scale; q4_0: byte j's low nibble is element j, its
    high nibble element j + 16, each minus 8."""
    d = builder.load(builder.gep(table_ptr, [builder.zext(_load(builder, block_ptr, 0, _I16), _I64)]))
    if qtype == Q8_0:
        lo, hi = (_load(builder, block_ptr, off, ir.VectorType(_I8, _LANES)) for off in (2, 18))
    else:
        nibbles = _load(builder, block_ptr, 2, ir.VectorType(_I8, _LANES))
        lo = builder.sub(builder.and_(nibbles, _splat(15, _I8)), _splat(8, _I8))
        hi = builder.sub(builder.lshr(nibbles, _splat(4, _I8)), _splat(8, _I8))
    return d, builder.sitofp(lo, _VF), builder.sitofp(hi, _VF)


def _emit_for(builder, n, init, body):
    """`for i in range(n)` carrying the values `init` through body(i, values) -> values; returns the
    values after the loop."""
    before = builder.block
    head, loop, done = (builder.append_basic_block(f"for.{s}") for s in ("head", "body", "end"))
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(_I64)
    carried = [builder.phi(v.type) for v in init]
    i.add_incoming(_const(_I64, 0), before)
    for phi, v in zip(carried, init):
        phi.add_incoming(v, before)
    builder.cbranch(builder.icmp_unsigned("<", i, n), loop, done)
    builder.position_at_end(loop)
    new = body(i, carried)
    i.add_incoming(builder.add(i, _const(_I64, 1)), builder.block)
    for phi, v in zip(carried, new):
        phi.add_incoming(v, builder.block)
    builder.branch(head)
    builder.position_at_end(done)
    return carried


def _is_vector(ty, dtype):
    return isinstance(ty, types.Array) and ty.dtype == dtype and ty.ndim == 1 and ty.layout == "C"


def _arrays(context, builder, sig, args):
    """The intrinsic's array arguments as Numba array structs (`.data`, `.shape`)."""
    return [context.make_array(t)(context, builder, a) for t, a in zip(sig.args, args)]


def _block_at(builder, qtype, row, table, b):
    """`_block` of block b of a packed row (array structs)."""
    return _block(builder, qtype, builder.gep(row.data, [builder.mul(b, _const(_I64, int(BLOCK_BYTES[qtype])))]),
                  table.data)


def _blocks_in(builder, values):
    """len(values) // 32 of a float32 array struct, and its data as a byte pointer."""
    return (builder.lshr(builder.extract_value(values.shape, 0), _const(_I64, 5)),
            builder.bitcast(values.data, _I8.as_pointer()))


def _dot_intrinsic(qtype):
    @intrinsic
    def dot(typingctx, row, x, table):
        """x . dequantize(row) for one packed row (len(x) // 32 blocks): sum over blocks of d * (q . x)."""
        if not (_is_vector(row, types.uint8) and _is_vector(x, types.float32) and _is_vector(table, types.float32)):
            return None

        def codegen(context, builder, sig, args):
            row_, x_, table_ = _arrays(context, builder, sig, args)
            nblocks, xbytes = _blocks_in(builder, x_)

            def add_block(b, acc):
                """acc + d * (lo * x[32b : 32b + 16] + hi * x[32b + 16 : 32b + 32])"""
                d, lo, hi = _block_at(builder, qtype, row_, table_, b)
                xoff = builder.shl(b, _const(_I64, 7))                    # 32 float32 per block
                xlo = _load(builder, xbytes, xoff, _VF)
                xhi = _load(builder, xbytes, builder.add(xoff, _const(_I64, 64)), _VF)
                s = _vfma(builder, hi, xhi, builder.fmul(lo, xlo))
                return _vfma(builder, _broadcast(builder, d), s, acc)

            zero = ir.Constant(_VF, [0.0] * _LANES)
            k = _const(_I64, ACCUMULATORS)
            # blocks k*i + a into accumulator a, then the last nblocks % k blocks into the first one
            accs = _emit_for(builder, builder.udiv(nblocks, k), [zero] * ACCUMULATORS,
                             lambda i, acc: [add_block(builder.add(builder.mul(i, k), _const(_I64, a)), acc[a])
                                             for a in range(ACCUMULATORS)])
            first = builder.mul(builder.udiv(nblocks, k), k)
            accs[0], = _emit_for(builder, builder.urem(nblocks, k), [accs[0]],
                                 lambda i, acc: [add_block(builder.add(first, i), acc[0])])
            v = accs[0]
            for a in accs[1:]:
                v = builder.fadd(v, a)
            width = _LANES
            while width > 1:                                            # halve: 16 -> 8 -> 4 -> 2 -> 1
                width //= 2
                v = builder.fadd(*(builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, width),
                                                                            list(range(start, start + width))))
                                   for start in (0, width)))
            return builder.extract_element(v, _const(_I32, 0))
        return types.float32(row, x, table), codegen
    return dot


def _dequantize_intrinsic(qtype):
    @intrinsic
    def dequantize_row(typingctx, row, table, out):
        """out[:] = the float32 values of one packed row (len(out) // 32 blocks): q * d, exactly."""
        if not (_is_vector(row, types.uint8) and _is_vector(table, types.float32) and _is_vector(out, types.float32)):
            return None

        def codegen(context, builder, sig, args):
            row_, table_, out_ = _arrays(context, builder, sig, args)
            nblocks, obytes = _blocks_in(builder, out_)

            def one_block(b, _):
                d, lo, hi = _block_at(builder, qtype, row_, table_, b)
                dv = _broadcast(builder, d)
                off = builder.shl(b, _const(_I64, 7))
                for half, v in ((0, lo), (64, hi)):
                    p = builder.gep(obytes, [builder.add(off, _const(_I64, half))])
                    builder.store(builder.fmul(v, dv), builder.bitcast(p, _VF.as_pointer()), align=1)
                return []
            _emit_for(builder, nblocks, [], one_block)
            return context.get_dummy_value()
        return types.none(row, table, out), codegen
    return dequantize_row


dot_q8_0, dot_q4_0 = _dot_intrinsic(Q8_0), _dot_intrinsic(Q4_0)
dequantize_row_q8_0, dequantize_row_q4_0 = _dequantize_intrinsic(Q8_0), _dequantize_intrinsic(Q4_0)


# ---- decode: the fused GEMV ------------------------------------------------------------------------
@njit(inline="always")
def row_dot(row, x, code, table):
    """x . dequantize(row) in the row's format."""
    return dot_q8_0(row, x, table) if code == Q8_0 else dot_q4_0(row, x, table)


@njit(inline="always")
def _gemv_task(x, data, code, table, out, task):
    """out[:, o] = x . dequantize(data[o]) for a group of rows o (each row stays in L1 across the rows of x)."""
    for o in range(task * ROWS_PER_TASK, min(data.shape[0], (task + 1) * ROWS_PER_TASK)):
        for t in range(x.shape[0]):
            out[t, o] = row_dot(data[o], x[t], code, table)


def _gemv(x, data, code, table):
    out = np.empty((x.shape[0], data.shape[0]), np.float32)
    for task in prange((data.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        _gemv_task(x, data, code, table, out, task)
    return out


_gemv_1, _gemv_p = twins(_gemv)


# ---- prefill: blocks of rows dequantized, then BLAS ------------------------------------------------
def _dequantize_rows(data, r0, r1, code, table, out):
    for r in prange(r0, r1):
        if code == Q8_0:
            dequantize_row_q8_0(data[r], table, out[r - r0])
        else:
            dequantize_row_q4_0(data[r], table, out[r - r0])


_dequantize_rows_1, _dequantize_rows_p = twins(_dequantize_rows)


def dequantize_rows(data, r0, r1, code, out):
    """out[:r1-r0] = float32 of the packed rows data[r0:r1] (out [>= r1-r0, cols] float32)."""
    fn = pick(_dequantize_rows_1, _dequantize_rows_p, (r1 - r0) * out.shape[1])
    fn(data, r0, r1, code, HALF_TO_FLOAT, out)


def linear(x: np.ndarray, data: np.ndarray, qtype: str, cols: int) -> np.ndarray:
    """y = x W^T; x [T, cols] float32, W packed uint8 [rows, cols // 32 * bytes] -> [T, rows]."""
    code = CODE[qtype]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[1] != cols or data.shape[1] != cols // 32 * BLOCK_BYTES[code]:
        raise ValueError(f"linear: x has {x.shape[1]} columns, the {qtype} weight {cols} "
                         f"({data.shape[1]} bytes per row)")
    data = np.ascontiguousarray(data)
    T, m = x.shape[0], data.shape[0]
    if T <= SMALL_T:
        return pick(_gemv_1, _gemv_p, m * cols)(x, data, code, HALF_TO_FLOAT)
    out = np.empty((T, m), np.float32)
    rows = max(16, min(m, PREFILL_SCRATCH // max(1, cols)))
    scratch = np.empty((rows, cols), np.float32)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        dequantize_rows(data, r0, r1, code, scratch)
        out[:, r0:r1] = x @ scratch[:r1 - r0].T
    return out


# ---- MoE decode: only the chosen experts' blocks are read ---------------------------------------
@njit(fastmath=FAST, inline="always")
def _gate_up_task(xt, G, U, code, table, h, task):
    """h[o] = silu(gate[o] . xt) * (up[o] . xt) for a group of rows o."""
    for o in range(task * ROWS_PER_TASK, min(h.shape[0], (task + 1) * ROWS_PER_TASK)):
        g, u = row_dot(G[o], xt, code, table), row_dot(U[o], xt, code, table)
        h[o] = g / (np.float32(1.0) + np.exp(-g)) * u


@njit(inline="always")
def _down_task(h, Dn, weight, code, table, yt, task):
    """yt[o] += weight * (down[o] . h) for a group of rows o."""
    for o in range(task * ROWS_PER_TASK, min(yt.shape[0], (task + 1) * ROWS_PER_TASK)):
        yt[o] += weight * row_dot(Dn[o], h, code, table)


def _expert(xt, G, U, Dn, weight, code, table, yt):
    F, D = G.shape[0], yt.shape[0]
    h = np.empty(F, np.float32)
    for task in prange((F + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        _gate_up_task(xt, G, U, code, table, h, task)
    for task in prange((D + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        _down_task(h, Dn, weight, code, table, yt, task)


_expert_1, _expert_p = twins(_expert, fastmath=FAST)


def expert_decode(xt, gate, up, down, weight: float, qtype: str, yt) -> None:
    """yt += weight * down(silu(gate xt) * up xt) for one token xt [D] and one expert's packed
    gate, up [F, bytes] and down [D, bytes]: the MoE decode reads only the chosen experts' blocks
    (each expert may live in its own array: per-expert tensors of a Hugging Face directory)."""
    code, (F, D) = CODE[qtype], (gate.shape[0], xt.shape[0])
    row_bytes = lambda cols: cols // 32 * BLOCK_BYTES[code]
    if (gate.shape != (F, row_bytes(D)) or up.shape != gate.shape or down.shape != (D, row_bytes(F))
            or yt.shape != (D,)):
        raise ValueError(f"expert_decode: x has {D} values; the {qtype} gate {gate.shape}, up {up.shape} and "
                         f"down {down.shape} bytes and the output {yt.shape} do not fit it")
    fn = pick(_expert_1, _expert_p, 3 * F * D)
    fn(xt, np.ascontiguousarray(gate), np.ascontiguousarray(up), np.ascontiguousarray(down), np.float32(weight),
       code, HALF_TO_FLOAT, yt)
