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
  gate/up -> silu * up -> down pipeline as kernels/moe.py), all the experts a token
  chose in one call: one parallel region for their gate and up rows, one for their
  down rows.

The block loops are written in LLVM IR (`dot_rows_q8_0`, `dot_rows_q4_0`,
`dequantize_row_*` below, Numba intrinsics), because LLVM does not vectorise the
Numba-level loops well: it vectorised the per-block loop across blocks with gathers and
byte inserts, and a 32-lane accumulator array stayed in memory (1-10 GB/s). In IR a
block is two 16-wide float vectors (elements j and j + 16 share lane j), so every
instruction in the loop is a vector one (int8 -> int32 widen, int -> float,
multiply-adds; on AVX-512 q4_0's nibbles become floats by a 16-entry table lookup,
vpermps). Four weight rows share each pass over x (x loaded once per block for all
four, one accumulator each: independent multiply-add chains), each row is prefetched
8 KiB ahead, and the 16 lanes are summed once per row. The summation order is fixed by
that code, not left to fastmath.

An option, off by default, computes as GGML does on the CPU: the activations rounded
to q8_0 blocks and integer block dots (`linear_i8`, `experts_decode(..., int8=True)`). The
decode kernels are written once for both arithmetics: the type of their `mode` argument
(FLOAT_PATH or INT8_PATH) picks, at compile time, what `activations` makes of x and which
intrinsic `dot_rows_of` calls.

The float16 scale is decoded through a 65536-entry float32 table, as GGML does.
Kernels that split work across threads come in a serial and a parallel variant
(`threads.twins`). This module imports nothing from cogcore.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .linear import FAST, SMALL_T, as_float32
from .moe import silu_mul
from .threads import pick, threads_of, twins

Q8_0, Q4_0 = 0, 1
CODE = {"q8_0": Q8_0, "q4_0": Q4_0}
QTYPES = tuple(CODE)
BLOCK_BYTES = np.array([34, 18], np.int64)
HALF_TO_FLOAT = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
ROWS_PER_TASK = 16                     # output rows per parallel task
PREFILL_SCRATCH = 1 << 20              # float32 values dequantized per BLAS block (4 MiB)


# ---- the block loops, in LLVM IR -----------------------------------------------------------------
_I8, _I16, _I32, _I64, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
_LANES = 16
_VF = ir.VectorType(_F32, _LANES)       # half a block of float32


def _target_has(*features) -> bool:
    """Whether the CPU Numba compiles for has every one of the LLVM features ("avx512f", ...)."""
    from numba import config
    if config.CPU_NAME and config.CPU_NAME != "host":          # NUMBA_CPU_NAME: a portable target
        return {f"+{f}" for f in features} <= set((config.CPU_FEATURES or "").split(","))
    import llvmlite.binding as llvm
    host = llvm.get_host_cpu_features()
    return all(host.get(f, False) for f in features)


AVX512 = _target_has("avx512f")                           # vpermps on zmm: a 16-entry float table
VNNI = _target_has("avx512f", "avx512bw", "avx512vnni")   # vpdpbusd on zmm


def _indices(values):
    return ir.Constant(ir.VectorType(_I32, len(values)), list(values))


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


def _scale(builder, block_ptr, table_ptr):
    """A block's float16 scale as float32 (through the 65536-entry table)."""
    return builder.load(builder.gep(table_ptr, [builder.zext(_load(builder, block_ptr, 0, _I16), _I64)]))


_NIBBLE_VALUES = ir.Constant(_VF, [float(v - 8) for v in range(16)])     # q4_0: nibble v -> v - 8


def _permute(builder, table, index):
    """table[index[i] % 16] lane by lane (vpermps: only the low 4 bits of each index count)."""
    name = "llvm.x86.avx512.permvar.sf.512"
    fn = builder.module.globals.get(name) or ir.Function(
        builder.module, ir.FunctionType(_VF, [_VF, ir.VectorType(_I32, _LANES)]), name)
    return builder.call(fn, [table, index])


def _block(builder, qtype, block_ptr, table_ptr, permute=AVX512):
    """(d, lo, hi): a block's float32 scale and its values q without the scale, elements 0..15 and 16..31
    as two float vectors. q8_0: the 32 int8 after the scale; q4_0: byte j's low nibble is element j, its
    high nibble element j + 16, each minus 8. permute (AVX-512): q4_0's nibbles become floats by a table
    lookup (the 16 bytes widened to int32 once, vpermps on them and on them shifted right by 4), instead
    of masks, subtractions and two int -> float conversions."""
    d = _scale(builder, block_ptr, table_ptr)
    if qtype == Q8_0:
        lo, hi = (_load(builder, block_ptr, off, ir.VectorType(_I8, _LANES)) for off in (2, 18))
    elif permute:
        index = builder.zext(_load(builder, block_ptr, 2, ir.VectorType(_I8, _LANES)), ir.VectorType(_I32, _LANES))
        return d, _permute(builder, _NIBBLE_VALUES, index), _permute(builder, _NIBBLE_VALUES,
                                                                     builder.lshr(index, _splat(4, _I32)))
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


def _block_at(builder, qtype, row, table, b, permute):
    """`_block` of block b of a packed row (array structs)."""
    return _block(builder, qtype, builder.gep(row.data, [builder.mul(b, _const(_I64, int(BLOCK_BYTES[qtype])))]),
                  table.data, permute)


def _blocks_in(builder, values):
    """len(values) // 32 of a float32 array struct, and its data as a byte pointer."""
    return (builder.lshr(builder.extract_value(values.shape, 0), _const(_I64, 5)),
            builder.bitcast(values.data, _I8.as_pointer()))


def _sum_lanes(builder, v):
    """The sum of the lanes of the float vector v (halved: 16 -> 8 -> 4 -> 2 -> 1)."""
    width = v.type.count
    while width > 1:
        width //= 2
        v = builder.fadd(*(builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, width),
                                                                    list(range(start, start + width))))
                           for start in (0, width)))
    return builder.extract_element(v, _const(_I32, 0))


def _dequantize_intrinsic(qtype, permute=AVX512):
    @intrinsic
    def dequantize_row(typingctx, row, table, out):
        """out[:] = the float32 values of one packed row (len(out) // 32 blocks): q * d, exactly."""
        if not (_is_vector(row, types.uint8) and _is_vector(table, types.float32) and _is_vector(out, types.float32)):
            return None

        def codegen(context, builder, sig, args):
            row_, table_, out_ = _arrays(context, builder, sig, args)
            nblocks, obytes = _blocks_in(builder, out_)

            def one_block(b, _):
                d, lo, hi = _block_at(builder, qtype, row_, table_, b, permute)
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


dequantize_row_q8_0, dequantize_row_q4_0 = _dequantize_intrinsic(Q8_0), _dequantize_intrinsic(Q4_0)


ROWS = 4                             # weight rows per pass over the activation row
PREFETCH_BYTES = 8192                 # how far ahead the weight rows are prefetched (at least)


def emit_prefetch(builder, ptr):
    """Ask for the cache line at ptr (an i8*; a read, kept close): llvm.prefetch, which never faults."""
    name = "llvm.prefetch.p0i8"
    fn = builder.module.globals.get(name) or ir.Function(
        builder.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]), name)
    builder.call(fn, [ptr, _const(_I32, 0), _const(_I32, 3), _const(_I32, 1)])


def _rows_typed(data, first, table, out, at):
    """Whether the shared arguments of a rows intrinsic have the types it needs."""
    return (isinstance(data, types.Array) and data.dtype == types.uint8 and data.ndim == 2 and data.layout == "C"
            and isinstance(first, types.Integer) and isinstance(at, types.Integer)
            and _is_vector(table, types.float32) and _is_vector(out, types.float32))


def _rows_codegen(context, builder, sig, args, qtype, nrows, loop):
    """The body of a rows intrinsic f(data, first, *x, table, out, at): out[at + k] = the dot of packed
    row first + k of data with the activation arrays x, for k < nrows. loop(x arrays, block pointer of
    row k at block b as row_block(k, b), prefetch(block pointer), table) -> one float vector per row,
    whose lanes are summed. Each row is prefetched PREFETCH_BYTES ahead (whole groups of nrows rows):
    several rows interleaved defeat the hardware prefetcher (9.5 against 31 GB/s here)."""
    arrays = [context.make_array(t)(context, builder, a) if isinstance(t, types.Array) else None
              for t, a in zip(sig.args, args)]
    data_, table_, out_ = arrays[0], arrays[-3], arrays[-2]
    first, at = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, len(args) - 1))
    stride = builder.extract_value(data_.strides, 0)
    rows = [builder.gep(data_.data, [builder.mul(builder.add(first, _const(_I64, k)), stride)]) for k in range(nrows)]
    group = builder.mul(stride, _const(_I64, nrows))
    ahead = builder.mul(builder.udiv(builder.add(_const(_I64, PREFETCH_BYTES - 1), group), group), group)
    block_bytes = _const(_I64, int(BLOCK_BYTES[qtype]))
    accs = loop(builder, arrays[2:-3], lambda k, b: builder.gep(rows[k], [builder.mul(b, block_bytes)]),
                lambda ptr: emit_prefetch(builder, builder.gep(ptr, [ahead])), table_)
    for k, acc in enumerate(accs):
        builder.store(_sum_lanes(builder, acc), builder.gep(out_.data, [builder.add(at, _const(_I64, k))]))
    return context.get_dummy_value()


def _float_rows(qtype, nrows, permute=AVX512):
    """The default (float path) loop over nrows rows: per block, acc_k += d * (lo * x_lo + hi * x_hi),
    x's 32 floats loaded once for all rows. permute: q4_0's nibbles to floats by vpermps (`_block`)."""
    def loop(builder, x_arrays, row_block, prefetch, table_):
        nblocks, xbytes = _blocks_in(builder, x_arrays[0])

        def add_block(b, accs, fetch):
            xoff = builder.shl(b, _const(_I64, 7))                        # 32 float32 per block
            xlo = _load(builder, xbytes, xoff, _VF)
            xhi = _load(builder, xbytes, builder.add(xoff, _const(_I64, 64)), _VF)
            out = []
            for k, acc in enumerate(accs):
                block = row_block(k, b)
                if fetch:
                    prefetch(block)
                d, lo, hi = _block(builder, qtype, block, table_.data, permute)
                s = _vfma(builder, hi, xhi, builder.fmul(lo, xlo))
                out.append(_vfma(builder, _broadcast(builder, d), s, acc))
            return out

        def add_pair(i, accs):                        # q4_0: one prefetch a row per pair (36 bytes)
            b = builder.shl(i, _const(_I64, 1))
            accs = add_block(b, accs, True)
            return add_block(builder.add(b, _const(_I64, 1)), accs, qtype == Q8_0)
        zero = ir.Constant(_VF, [0.0] * _LANES)
        accs = _emit_for(builder, builder.lshr(nblocks, _const(_I64, 1)), [zero] * nrows, add_pair)
        last = builder.sub(nblocks, _const(_I64, 1))
        return _emit_for(builder, builder.and_(nblocks, _const(_I64, 1)), accs,
                         lambda i, accs: add_block(last, accs, False))

    @intrinsic
    def dot_rows(typingctx, data, first, x, table, out, at):
        """out[at + k] = x . dequantize(data[first + k]) for k < nrows: sum over blocks of d * (q . x)."""
        if not (_rows_typed(data, first, table, out, at) and _is_vector(x, types.float32)):
            return None
        return (types.none(data, first, x, table, out, at),
                lambda context, builder, sig, args: _rows_codegen(context, builder, sig, args, qtype, nrows, loop))
    return dot_rows


dot_rows_q8_0, dot_rows_q4_0 = _float_rows(Q8_0, ROWS), _float_rows(Q4_0, ROWS)
dot_row_q8_0, dot_row_q4_0 = _float_rows(Q8_0, 1), _float_rows(Q4_0, 1)


# ---- int8 activations (an option, off by default): GGML's vec_dot_q8_0_q8_0 / vec_dot_q4_0_q8_0 ----
# The activation row is rounded to q8_0 blocks once (`quantize_activations`): int8 xq, float32 xd
# (the block's float16 scale), and xs, minus the sum of each 4 consecutive xq. A weight block is
# then dotted with it in integers, y = sum over blocks of d_w * d_x * (q_w . q_x), as unsigned
# bytes u times signed xq: q4_0's nibbles are u = q_w + 8, q8_0's bytes xor 0x80 are u = q_w + 128,
# so q_w . q_x = u . q_x - 8 (or 128) * sum(q_x), and the correction is where the int32 lanes start.
# On AVX-512 VNNI one vpdpbusd does 64 byte products into 16 int32 lanes (two blocks, lane i the
# sum of bytes 4i..4i+3); elsewhere the same lanes come from int32 products (`_dpbusd`).
_V16I8, _V32I8, _V64I8 = (ir.VectorType(_I8, n) for n in (16, 32, 64))
_V8I32, _V16I32 = ir.VectorType(_I32, 8), ir.VectorType(_I32, 16)
_OFFSET_SHIFT = {Q4_0: 3, Q8_0: 7}           # the unsigned bytes are q_w + 2**shift


def _dpbusd(builder, acc, a, b, vnni):
    """acc[i] + sum over k < 4 of a[4i + k] * b[4i + k], 16 int32 lanes; a <64 x i8> unsigned, b signed.

    vnni: the vpdpbusd instruction (declared in the <16 x i32> form, which LLVM 22 upgrades to its
    <64 x i8> one and older LLVMs take as is); otherwise int32 products summed four by four."""
    if vnni:
        name = "llvm.x86.avx512.vpdpbusd.512"
        fn = builder.module.globals.get(name) or ir.Function(
            builder.module, ir.FunctionType(_V16I32, [_V16I32] * 3), name)
        return builder.call(fn, [acc, builder.bitcast(a, _V16I32), builder.bitcast(b, _V16I32)])
    wide = ir.VectorType(_I32, 64)
    products = builder.mul(builder.zext(a, wide), builder.sext(b, wide))
    for k in range(4):
        acc = builder.add(acc, builder.shuffle_vector(products, products, _indices(range(k, 64, 4))))
    return acc


def _unsigned_pair(builder, qtype, first, second):
    """Two weight blocks' 64 values (block pointers first, second; second None: zeros) as unsigned
    bytes in element order: q_w + 128 for q8_0 (the int8 xor 0x80), q_w + 8 for q4_0 (the nibbles:
    the 16 bytes of each block twice, the second copy shifted right by 4 within each 64-bit lane,
    then masked: low nibbles are elements 0..15, high ones 16..31)."""
    half = _V32I8 if qtype == Q8_0 else _V16I8
    a = _load(builder, first, 2, half)
    b = ir.Constant(half, [0] * half.count) if second is None else _load(builder, second, 2, half)
    if qtype == Q8_0:
        return builder.xor(builder.shuffle_vector(a, b, _indices(range(64))), ir.Constant(_V64I8, [-128] * 64))
    twice = builder.shuffle_vector(a, b, _indices([*range(16), *range(16), *range(16, 32), *range(16, 32)]))
    qwords = ir.VectorType(_I64, 8)
    shifted = builder.lshr(builder.bitcast(twice, qwords), ir.Constant(qwords, [0, 0, 4, 4] * 2))
    return builder.and_(builder.bitcast(shifted, _V64I8), ir.Constant(_V64I8, [15] * 64))


def _int8_rows(qtype, nrows, vnni):
    """The int8-activation loop over nrows rows, two blocks per step (one vpdpbusd each row), the
    activation's bytes loaded once for all rows."""
    def loop(builder, x_arrays, row_block, prefetch, table_):
        xq_, xs_, xd_ = x_arrays
        nblocks = builder.extract_value(xd_.shape, 0)
        xs_bytes = builder.bitcast(xs_.data, _I8.as_pointer())
        shift = ir.Constant(_V16I32, [_OFFSET_SHIFT[qtype]] * 16)

        def add_blocks(b, accs, pair):
            """accs[k] + d * float(lanes) for blocks b and b + 1 (pair) or b alone (the other half zero)
            of every row k."""
            off = builder.shl(b, _const(_I64, 5))                          # 32 bytes of xq, 8 int32 of xs
            b1 = builder.add(b, _const(_I64, 1))
            if pair:
                x = _load(builder, xq_.data, off, _V64I8)
                lanes = _load(builder, xs_bytes, off, _V16I32)
                dx = [builder.load(builder.gep(xd_.data, [i])) for i in (b, b1)]
            else:
                x = builder.shuffle_vector(_load(builder, xq_.data, off, _V32I8), ir.Constant(_V32I8, [0] * 32),
                                           _indices(range(64)))
                lanes = builder.shuffle_vector(_load(builder, xs_bytes, off, _V8I32), ir.Constant(_V8I32, [0] * 8),
                                               _indices(range(16)))
                dx = [builder.load(builder.gep(xd_.data, [b]))]
            lanes = builder.shl(lanes, shift)                              # minus 8 or 128 times sum(q_x)
            out = []
            for k, acc in enumerate(accs):
                blocks = [row_block(k, i) for i in ((b, b1) if pair else (b,))]
                if pair:                                         # the lines of both blocks
                    for block in blocks[::2 if qtype == Q4_0 else 1]:
                        prefetch(block)
                u = _unsigned_pair(builder, qtype, blocks[0], blocks[1] if pair else None)
                dots = _dpbusd(builder, lanes, u, x, vnni)                  # q_w . q_x, four bytes a lane
                pair_d = ir.Constant(ir.VectorType(_F32, 2), [0.0, 0.0])
                for i, (block, d) in enumerate(zip(blocks, dx)):
                    pair_d = builder.insert_element(pair_d, builder.fmul(_scale(builder, block, table_.data), d),
                                                    _const(_I32, i))
                scale = builder.shuffle_vector(pair_d, pair_d, _indices([0] * 8 + [1] * 8))
                out.append(_vfma(builder, scale, builder.sitofp(dots, _VF), acc))
            return out

        zero = ir.Constant(_VF, [0.0] * _LANES)
        accs = _emit_for(builder, builder.lshr(nblocks, _const(_I64, 1)), [zero] * nrows,
                         lambda i, accs: add_blocks(builder.shl(i, _const(_I64, 1)), accs, True))
        last = builder.sub(nblocks, _const(_I64, 1))
        return _emit_for(builder, builder.and_(nblocks, _const(_I64, 1)), accs,
                         lambda i, accs: add_blocks(last, accs, False))

    @intrinsic
    def dot_rows(typingctx, data, first, xq, xs, xd, table, out, at):
        """out[at + k] = sum over blocks of d_w * d_x * (q_w . q_x) for rows first + k (k < nrows) of the
        packed data, against one q8_0 activation row (xq int8 [cols], xs int32 [cols // 4], xd float32
        [cols // 32])."""
        if not (_rows_typed(data, first, table, out, at) and _is_vector(xq, types.int8)
                and _is_vector(xs, types.int32) and _is_vector(xd, types.float32)):
            return None
        return (types.none(data, first, xq, xs, xd, table, out, at),
                lambda context, builder, sig, args: _rows_codegen(context, builder, sig, args, qtype, nrows, loop))
    return dot_rows


def dot_i8_intrinsics(vnni: bool = VNNI, nrows: int = ROWS):
    """{code: int8-activation dot intrinsic over nrows rows}; vnni=False forces the generic form (tests)."""
    return {code: _int8_rows(code, nrows, vnni) for code in (Q8_0, Q4_0)}


_DOTS_I8, _DOT_I8 = dot_i8_intrinsics(), dot_i8_intrinsics(nrows=1)
dot_rows_q8_0_q8_0, dot_rows_q4_0_q8_0 = _DOTS_I8[Q8_0], _DOTS_I8[Q4_0]
dot_row_q8_0_q8_0, dot_row_q4_0_q8_0 = _DOT_I8[Q8_0], _DOT_I8[Q4_0]


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


def _check_linear(x, data, code, cols):
    if x.shape[1] != cols or data.shape[1] != cols // 32 * BLOCK_BYTES[code]:
        raise ValueError(f"linear: x has {x.shape[1]} columns, the {QTYPES[code]} weight {cols} "
                         f"({data.shape[1]} bytes per row)")


def linear(x: np.ndarray, data: np.ndarray, qtype: str, cols: int) -> np.ndarray:
    """y = x W^T; x [T, cols] float32, W packed uint8 [rows, cols // 32 * bytes] -> [T, rows]."""
    code = CODE[qtype]
    x = np.ascontiguousarray(x, dtype=np.float32)
    _check_linear(x, data, code, cols)
    if x.shape[0] <= SMALL_T:
        return _decode(x, (data,), code, FLOAT_PATH)
    return _prefill(x, np.ascontiguousarray(data), code, cols)


def _prefill(x, data, code, cols):
    """x W^T for many rows of x: blocks of weight rows dequantized into a bounded scratch, then BLAS."""
    T, m = x.shape[0], data.shape[0]
    out = np.empty((T, m), np.float32)
    rows = max(16, min(m, PREFILL_SCRATCH // max(1, cols)))
    scratch = np.empty((rows, cols), np.float32)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        dequantize_rows(data, r0, r1, code, scratch)
        out[:, r0:r1] = x @ scratch[:r1 - r0].T
    return out


# ---- int8 activations: decode GEMV, MoE experts, prefill --------------------------------------------
@intrinsic
def float32_bits(typingctx, value):
    """The uint32 bit pattern of a float32 (a register bitcast, no memory)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], _I32)
    return types.uint32(types.float32), codegen


@njit(inline="always")
def to_float16(d):
    """The float32 value of float16(d) for d >= 0, rounded to nearest, ties to even (GGML_FP32_TO_FP16)."""
    if d < np.float32(6.1035156e-05):                  # 2**-14: float16's subnormals, multiples of 2**-24
        return np.rint(d * np.float32(16777216.0)) * np.float32(5.9604645e-08)
    bits = float32_bits(d)                             # keep 10 of the 23 mantissa bits, ties to even
    bits = (bits + np.uint32(0xFFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    r = as_float32(bits)
    return r if r <= np.float32(65504.0) else np.float32(np.inf)


@njit(inline="always")
def _quantize_row(x, xq, xs, xd):
    """One activation row x [cols] float32 -> q8_0: xq int8 [cols], xd float32 [cols // 32] (the float16
    scale's value), xs int32 [cols // 4] = minus the sum of each 4 consecutive xq.
    GGML's reference quantizer: d = max|x| / 127, q = roundf(x * (1 / d)), halves away from zero.
    A block holding a NaN gets scale NaN (max() would skip it), so that the dots come out NaN as on
    the float path and the model reports the layer, instead of a finite wrong answer."""
    for b in range(xd.shape[0]):
        amax = np.float32(0.0)
        nan = False
        for j in range(32 * b, 32 * b + 32):
            amax = max(amax, abs(x[j]))
            nan |= x[j] != x[j]
        d = amax / np.float32(127.0)
        inv = np.float32(1.0) / d if d != 0 and not nan else np.float32(0.0)
        xd[b] = np.float32(np.nan) if nan else to_float16(d)
        for j in range(32 * b, 32 * b + 32):
            v = x[j] * inv
            a = abs(v)
            whole = np.floor(a)
            q = np.int8(whole) + np.int8(a - whole >= np.float32(0.5))
            xq[j] = -q if v < 0 else q
        for g in range(8 * b, 8 * b + 8):
            xs[g] = -(np.int32(xq[4 * g]) + np.int32(xq[4 * g + 1]) + np.int32(xq[4 * g + 2]) + np.int32(xq[4 * g + 3]))


@njit(cache=True)
def _quantize_rows(x):
    T, cols = x.shape
    xq, xs, xd = np.empty((T, cols), np.int8), np.empty((T, cols // 4), np.int32), np.empty((T, cols // 32), np.float32)
    for t in range(T):
        _quantize_row(x[t], xq[t], xs[t], xd[t])
    return xq, xs, xd


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [T, cols] float32 (cols a multiple of 32) -> its rows as q8_0 blocks: xq int8 [T, cols],
    xs int32 [T, cols // 4] (minus the sum of each 4 consecutive xq), xd float32 [T, cols // 32]."""
    return _quantize_rows(np.ascontiguousarray(x, dtype=np.float32))


# ---- decode: one kernel body for both arithmetics -------------------------------------------------
# The decode kernels take `mode`, FLOAT_PATH or INT8_PATH: a scalar whose type picks the arithmetic
# when Numba compiles them. `activations` turns rows of x into what the dots read (x itself, or its
# rows as q8_0 blocks), `dot_rows_of` dots packed rows with one such row. Each kernel is one Python
# function compiled once per mode (the signatures differ, so Numba's cache keeps both).
FLOAT_PATH, INT8_PATH = np.float32(0), np.int8(0)


def activations(x, mode):
    """x [T, cols] float32 as the dots read it: x itself (FLOAT_PATH), or (xq, xs, xd), its rows as
    q8_0 blocks (INT8_PATH, `quantize_activations`)."""


@overload(activations, inline="always")
def _activations(x, mode):
    if mode == types.int8:
        return lambda x, mode: _quantize_rows(x)
    return lambda x, mode: x


def activation_row(act, t):
    """Row t of what `activations` returned."""


@overload(activation_row, inline="always")
def _activation_row(act, t):
    if isinstance(act, types.BaseTuple):
        return lambda act, t: (act[0][t], act[1][t], act[2][t])
    return lambda act, t: act[t]


def _dot(nrows):
    """A stub whose overload dots nrows packed rows from row r with an activation row a, into
    out[at:at + nrows]: the float or the int8 intrinsic, by a's type."""
    def dot(data, r, a, code, table, out, at):
        pass

    @overload(dot, inline="always")
    def _typed(data, r, a, code, table, out, at):
        if isinstance(a, types.BaseTuple):
            intrinsics = _DOTS_I8 if nrows == ROWS else _DOT_I8
            q8, q4 = intrinsics[Q8_0], intrinsics[Q4_0]

            def int8(data, r, a, code, table, out, at):
                if code == Q8_0:
                    q8(data, r, a[0], a[1], a[2], table, out, at)
                else:
                    q4(data, r, a[0], a[1], a[2], table, out, at)
            return int8
        q8, q4 = (dot_rows_q8_0, dot_rows_q4_0) if nrows == ROWS else (dot_row_q8_0, dot_row_q4_0)

        def float_path(data, r, a, code, table, out, at):
            if code == Q8_0:
                q8(data, r, a, table, out, at)
            else:
                q4(data, r, a, table, out, at)
        return float_path
    return dot


_dot_four, _dot_one = _dot(ROWS), _dot(1)


@njit(inline="always")
def dot_rows_of(data, r0, r1, a, code, table, out, at):
    """out[at + r - r0] = the dot of packed row r of data with the activation row a (a float32 row,
    or a row of q8_0 blocks), for r0 <= r < r1: ROWS rows per pass over a, then one at a time."""
    r = r0
    while r + ROWS <= r1:
        _dot_four(data, r, a, code, table, out, at + r - r0)
        r += ROWS
    for o in range(r, r1):
        _dot_one(data, o, a, code, table, out, at + o - r0)


def _gemv(x, mats, code, table, mode):
    """x [T, cols] times each packed matrix of the tuple mats, side by side: out [T, total rows]. One
    parallel region for all of them (`gemv_each_into`), x's rows quantized once (INT8_PATH)."""
    rows = 0
    for m in range(len(mats)):
        rows += mats[m].shape[0]
    out = np.empty((x.shape[0], rows), np.float32)
    gemv_each_into(activations(x, mode), x.shape[0], 0, mats, code, table, out)
    return out


_gemv_1, _gemv_p = twins(_gemv)


def _packed(arrays) -> tuple:
    """The packed matrices as one tuple that a kernel may index at run time: C-contiguous and, when
    some are read-only (memory-mapped) and some not, all read-only views (one Numba type)."""
    arrays = tuple(arrays)
    for a in arrays:                     # (a loop: cheaper than all() over a generator for 1-4 arrays)
        if not a.flags.c_contiguous or a.flags.writeable:
            break
    else:
        return arrays                    # QuantTensor blocks
    arrays = tuple(np.ascontiguousarray(a) for a in arrays)
    if len({a.flags.writeable for a in arrays}) > 1:
        arrays = tuple(a.view() for a in arrays)
        for a in arrays:
            a.flags.writeable = False
    return arrays


def _decode(x, mats, code, mode):
    """`_gemv` on the serial or parallel variant, by the work of the whole call."""
    rows = 0
    for m in mats:
        rows += m.shape[0]
    return pick(_gemv_1, _gemv_p, rows * x.shape[1])(x, _packed(mats), code, HALF_TO_FLOAT, mode)


def linear_many(x: np.ndarray, datas: tuple, qtype: str, cols: int, int8: bool = False) -> np.ndarray:
    """`linear` (int8: `linear_i8`) of a few rows x [T <= SMALL_T, cols] with several packed weights of
    one format, side by side in one kernel call (one parallel region; x quantized once): [T, total rows]."""
    code = CODE[qtype]
    x = np.ascontiguousarray(x, dtype=np.float32)
    for data in datas:
        _check_linear(x, data, code, cols)
    return _decode(x, tuple(datas), code, INT8_PATH if int8 else FLOAT_PATH)


@njit(inline="always")
def gemv_each_into(act, T, step, mats, code, table, out):
    """out[t, the rows of matrix m] = packed matrix m times row m * step + t of act (what `activations`
    made of the inputs: step 0, one input for all; step T, inputs stacked matrix by matrix), for every m
    and t < T: one parallel region (tasks of ROWS_PER_TASK rows of one matrix) when inlined into a
    parallel kernel. No np.zeros task tables: in a parallel kernel Numba makes each one a parallel
    region of its own (~1 us a call at two threads), so each task finds its matrix by walking the few
    matrices."""
    tasks = 0
    for m in range(len(mats)):
        tasks += (mats[m].shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for task in prange(tasks):
        m, first_task, first_row = 0, 0, 0            # matrix m's first task and output row
        while task >= first_task + (mats[m].shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK:
            first_task += (mats[m].shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
            first_row += mats[m].shape[0]
            m += 1
        data = mats[m]
        r0 = (task - first_task) * ROWS_PER_TASK
        r1 = min(data.shape[0], r0 + ROWS_PER_TASK)
        for t in range(T):                           # the task's rows stay in L1 across the rows of x
            dot_rows_of(data, r0, r1, activation_row(act, m * step + t), code, table, out[t], first_row + r0)


def linear_i8(x: np.ndarray, data: np.ndarray, qtype: str, cols: int) -> np.ndarray:
    """`linear` with the rows of x rounded to q8_0 blocks first (GGML's int8 activations).

    Decode (T <= SMALL_T): integer block dots (`dot_rows_of`). Prefill: the
    rounded x (xq * d_x, exact in float32) through the dequantize + BLAS path, which is the same
    sum to round-off."""
    code = CODE[qtype]
    x = np.ascontiguousarray(x, dtype=np.float32)
    _check_linear(x, data, code, cols)
    T = x.shape[0]
    if T <= SMALL_T:
        return _decode(x, (data,), code, INT8_PATH)
    xq, _, xd = quantize_activations(x)
    rounded = (xq.reshape(T, -1, 32) * xd[:, :, None]).reshape(T, cols)
    return _prefill(rounded, np.ascontiguousarray(data), code, cols)


# ---- MoE decode: only the chosen experts' blocks are read ---------------------------------------
# The experts kernel takes the k chosen experts in one of two forms, as three arguments (a parallel
# loop's body cannot take a tuple of tuples):
#   gates, ups, downs: tuples of the chosen experts' packed matrices (`experts_decode`; compiled once per
#   k, the tuples' length), or
#   buffers, at, chosen: the three 1-D uint8 buffers that hold every expert's gate, up and down blocks,
#   each expert's byte offsets at [3, E] in them, the chosen experts' ids [k] (kernels.layer_step,
#   which finds the chosen experts inside its compiled step, and `experts_decode_buffers`: one compile
#   for every k, shared with the layer step).
def expert_count(gates_or_buffers, ups_or_at, downs_or_chosen):
    """k, the number of chosen experts."""


@overload(expert_count)
def _expert_count(gates_or_buffers, ups_or_at, downs_or_chosen):
    if gates_or_buffers.dtype.ndim == 2:
        return lambda gates_or_buffers, ups_or_at, downs_or_chosen: len(gates_or_buffers)
    return lambda gates_or_buffers, ups_or_at, downs_or_chosen: downs_or_chosen.shape[0]


def expert_matrix(gates_or_buffers, ups_or_at, downs_or_chosen, which, nth, F, D, code):
    """The nth chosen expert's packed gate (which 0), up (1) [F, bytes] or down (2) [D, bytes]."""


@overload(expert_matrix)
def _expert_matrix(gates_or_buffers, ups_or_at, downs_or_chosen, which, nth, F, D, code):
    if gates_or_buffers.dtype.ndim == 2:
        def in_tuples(gates_or_buffers, ups_or_at, downs_or_chosen, which, nth, F, D, code):
            if which == 0:
                return gates_or_buffers[nth]
            return ups_or_at[nth] if which == 1 else downs_or_chosen[nth]
        return in_tuples

    def in_buffers(gates_or_buffers, ups_or_at, downs_or_chosen, which, nth, F, D, code):
        rows, cols = (F, D) if which < 2 else (D, F)
        width = cols // 32 * BLOCK_BYTES[code]
        start = ups_or_at[which, downs_or_chosen[nth]]
        return gates_or_buffers[which][start:start + rows * width].reshape((rows, width))
    return in_buffers


@njit(inline="always")
def _one_expert(c, a, gates_or_buffers, ups_or_at, downs_or_chosen, F, code, table, mode, g, u, h, out):
    """out[c] = down_c(silu(gate_c x) * up_c x) for chosen expert c of `_experts`, on one thread."""
    D = out.shape[1]
    gate = expert_matrix(gates_or_buffers, ups_or_at, downs_or_chosen, 0, c, F, D, code)
    up = expert_matrix(gates_or_buffers, ups_or_at, downs_or_chosen, 1, c, F, D, code)
    down = expert_matrix(gates_or_buffers, ups_or_at, downs_or_chosen, 2, c, F, D, code)
    for r0 in range(0, F, ROWS_PER_TASK):
        r1 = min(F, r0 + ROWS_PER_TASK)
        dot_rows_of(gate, r0, r1, a, code, table, g[c], r0)
        dot_rows_of(up, r0, r1, a, code, table, u[c], r0)
        for o in range(r0, r1):
            h[c, o] = silu_mul(g[c, o], u[c, o])
    dot_rows_of(down, 0, D, activation_row(activations(h[c:c + 1], mode), 0), code, table, out[c], 0)


def _experts(x, gates_or_buffers, ups_or_at, downs_or_chosen, F, weights, code, table, mode, y, threads):
    """y += sum over c of weights[c] * down_c(silu(gate_c x) * up_c x) for one token x [1, D] and the
    chosen experts (in either form above; F hidden rows each), on `threads` threads (1 for the serial
    variant). When the threads can take whole experts (k a multiple of their number: any k on one thread,
    top-2 on two), each thread its experts from gate to down (one parallel region, no barrier and no
    serial quantization of the hidden between); otherwise one region for every expert's gate and up rows,
    one for their down rows (each task finds its matrices again: ~0.1 us, which on one thread made the
    experts ~20 % slower than their whole matrices). Either way each row's dot is the same, and each
    output row adds the experts in order."""
    k, D = expert_count(gates_or_buffers, ups_or_at, downs_or_chosen), y.shape[0]
    a = activation_row(activations(x, mode), 0)
    g, u, h = np.empty((k, F), np.float32), np.empty((k, F), np.float32), np.empty((k, F), np.float32)
    out = np.empty((k, D), np.float32)
    if k % threads == 0:
        for c in prange(k):
            _one_expert(c, a, gates_or_buffers, ups_or_at, downs_or_chosen, F, code, table, mode, g, u, h, out)
    else:
        per_hidden = (F + ROWS_PER_TASK - 1) // ROWS_PER_TASK        # tasks per expert, gate and up rows
        for task in prange(k * per_hidden):
            c = task // per_hidden
            r0 = (task - c * per_hidden) * ROWS_PER_TASK
            r1 = min(F, r0 + ROWS_PER_TASK)
            gate = expert_matrix(gates_or_buffers, ups_or_at, downs_or_chosen, 0, c, F, D, code)
            up = expert_matrix(gates_or_buffers, ups_or_at, downs_or_chosen, 1, c, F, D, code)
            dot_rows_of(gate, r0, r1, a, code, table, g[c], r0)
            dot_rows_of(up, r0, r1, a, code, table, u[c], r0)
            for o in range(r0, r1):
                h[c, o] = silu_mul(g[c, o], u[c, o])
        hidden = activations(h, mode)                # each expert's hidden quantized once (INT8_PATH)
        per_output = (D + ROWS_PER_TASK - 1) // ROWS_PER_TASK        # tasks per expert, down rows
        for task in prange(k * per_output):         # one expert's matrix after the other (reads faster
            c = task // per_output                    # than their rows interleaved: 23 against 17-20 GB/s)
            r0 = (task - c * per_output) * ROWS_PER_TASK
            down = expert_matrix(gates_or_buffers, ups_or_at, downs_or_chosen, 2, c, F, D, code)
            dot_rows_of(down, r0, min(D, r0 + ROWS_PER_TASK), activation_row(hidden, c), code, table, out[c], r0)
    for o in range(D):
        for c in range(k):
            y[o] += weights[c] * out[c, o]


_experts_1, _experts_p = twins(_experts, fastmath=FAST)


def _check_expert(gate, up, down, yt, code, F, D):
    block = BLOCK_BYTES[code]
    if gate.shape != (F, D // 32 * block) or up.shape != gate.shape or down.shape != (D, F // 32 * block) \
            or yt.shape != (D,):
        raise ValueError(f"experts_decode: x has {D} values; the {QTYPES[code]} gate {gate.shape}, up {up.shape} "
                         f"and down {down.shape} bytes and the output {yt.shape} do not fit it")


def experts_decode(xt, gates, ups, downs, weights, qtype: str, yt, int8: bool = False) -> None:
    """yt += sum over c of weights[c] * down_c(silu(gate_c xt) * up_c xt) for one token xt [D] and the
    chosen experts' packed gate, up [F, bytes] and down [D, bytes] (sequences, one entry per expert; each
    expert may live in its own array: per-expert tensors of a Hugging Face directory). The MoE decode
    reads only these blocks. int8: the token and each expert's hidden rounded to q8_0 blocks, integer
    dots (GGML's arithmetic)."""
    code, (F, D) = CODE[qtype], (gates[0].shape[0], xt.shape[0])
    for gate, up, down in zip(gates, ups, downs):
        _check_expert(gate, up, down, yt, code, F, D)
    k, mats = len(gates), _packed((*gates, *ups, *downs))    # one array type: `expert_matrix` returns any
    experts_decode_packed(np.ascontiguousarray(xt, np.float32).reshape(1, D), mats[:k], mats[k:2 * k], mats[2 * k:],
                          np.asarray(weights, np.float32), code, yt, int8)


def experts_decode_packed(x, gates, ups, downs, weights, code: int, yt, int8: bool) -> None:
    """`experts_decode` without its checks, for a caller that made them once: x [1, D] float32, the
    chosen experts' blocks as tuples that `_packed` would return, weights [k] float32, code of CODE."""
    _run_experts(x, gates, ups, downs, gates[0].shape[0], len(gates), weights, code, yt, int8)


def experts_decode_buffers(x, buffers, at, chosen, F, weights, code: int, yt, int8: bool) -> None:
    """`experts_decode_packed` over experts whose blocks lie where kernels.layer_step finds them: the
    gate, up and down buffers (1-D read-only uint8), each expert's byte offsets at [3, E] int64 and the
    chosen ids [k] int64; F hidden rows. One compiled kernel for every k (the tuples' type holds k)."""
    _run_experts(x, buffers, at, chosen, F, len(chosen), weights, code, yt, int8)


def _run_experts(x, gates_or_buffers, ups_or_at, downs_or_chosen, F, k, weights, code, yt, int8):
    fn = pick(_experts_1, _experts_p, 3 * F * x.shape[1] * k)
    fn(x, gates_or_buffers, ups_or_at, downs_or_chosen, F, weights, code, HALF_TO_FLOAT,
       INT8_PATH if int8 else FLOAT_PATH, yt, threads_of(fn, _experts_1))
