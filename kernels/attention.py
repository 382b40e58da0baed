"""Causal grouped-query softmax attention, full or sliding (twin of cogcore.blocks.attention.attention).

Few queries over short contexts (decode): one task per (query t, kv head g)
reads each visible key and value of head g once for all G = H/Hkv query heads
of the group, in chunks of CHUNK keys (scores of the chunk, one rescale of the
running sum per chunk, then the weighted values), keeping a running max, sum
and output per head.

Prefill (PREFILL_MIN_T queries or more) and long contexts (BLAS_MIN_KEYS visible
keys or more) take the textbook form, in blocks of queries: the scores Q K^T and
the weighted values P V are matrix products (BLAS, on strided views of the
cache), between them one kernel turns each row of scores into the softmax over
that query's visible keys (zero elsewhere). From about 512 keys the products win
even for one query (docs/performance.md, "A vectorised exp").

The visible keys of a query are a contiguous index
range when keys come in ascending position order, as the caches hand them
over. A decode call is one compiled call: the kernel checks the order and finds
each query's range by binary search (the wrapper's NumPy check, searchsorted and
copies cost more than the attention itself at a few dozen keys); keys in another
order are sorted by the wrapper first.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .expf import divide, expf
from .linear import FAST
from .quant import emit_prefetch
from .rope import rotate_by, rotation_tables
from .threads import pick, twins

CHUNK = 128              # keys per step of the running softmax; scratch buffers are [G, CHUNK]
PREFILL_MIN_T = 16       # queries from which the scores are BLAS products ...
BLAS_MIN_KEYS = 512      # ... and keys (one query is enough then: a long-context decode step)
SCORE_BLOCK = 1 << 21    # score values per block of queries in prefill (8 MiB) at most
QUERY_BLOCK = 64         # queries per block: a causal block computes scores of its diagonal block only
PREFETCH_KEYS = 8        # decode asks for the key and value rows this many keys ahead


@intrinsic
def prefetch(typingctx, arr, i, j, c):
    """Ask for the cache line that holds arr[i, j, c] (3-D; a read, kept close): llvm.prefetch, which
    never faults."""
    if not (isinstance(arr, types.Array) and arr.ndim == 3):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        index = [context.cast(builder, a, t, types.intp) for a, t in zip(args[1:], sig.args[1:])]
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, index, wraparound=False)
        emit_prefetch(builder, builder.bitcast(ptr, ir.IntType(8).as_pointer()))
        return context.get_dummy_value()

    return types.none(arr, i, j, c), codegen


@njit(inline="always")
def prefetch_key(K, V, s, g):
    """Ask for key s's and value s's rows of kv head g (s clipped to the last key)."""
    s = min(s, K.shape[0] - 1)
    for c in range(0, K.shape[2], 16):        # 16 float32: one 64-byte line
        prefetch(K, s, g, c)
        prefetch(V, s, g, c)


@njit(inline="always", fastmath=FAST)
def chunk_scores(q, t, h0, G, K, V, g, c0, n, scale, sc):
    """sc[i, s] = q[t, h0 + i] . K[c0 + s, g] * scale for i < G, s < n: four heads per pass over
    each key (a key's values are loaded once for the four dots). The first pass asks for the key
    and value rows PREFETCH_KEYS ahead: the KV cache has left the CPU caches by the next token (the layer's
    weights went through it), and waiting for each row took longer than the arithmetic."""
    hd = K.shape[2]
    i = 0
    while i + 4 <= G:
        q0, q1, q2, q3 = q[t, h0 + i], q[t, h0 + i + 1], q[t, h0 + i + 2], q[t, h0 + i + 3]
        for s in range(n):
            if i == 0:
                prefetch_key(K, V, c0 + s + PREFETCH_KEYS, g)
            ks = K[c0 + s, g]
            d0 = d1 = d2 = d3 = np.float32(0.0)
            for j in range(hd):
                kj = ks[j]
                d0 += q0[j] * kj
                d1 += q1[j] * kj
                d2 += q2[j] * kj
                d3 += q3[j] * kj
            sc[i, s], sc[i + 1, s], sc[i + 2, s], sc[i + 3, s] = d0 * scale, d1 * scale, d2 * scale, d3 * scale
        i += 4
    for i in range(i, G):
        qi = q[t, h0 + i]
        for s in range(n):
            if i == 0:
                prefetch_key(K, V, c0 + s + PREFETCH_KEYS, g)
            ks = K[c0 + s, g]
            d = np.float32(0.0)
            for j in range(hd):
                d += qi[j] * ks[j]
            sc[i, s] = d * scale


@njit(inline="always", fastmath=FAST)
def chunk_values(V, g, c0, n, G, sc, acc):
    """acc[i] += sum over s < n of sc[i, s] V[c0 + s, g], four keys per pass over each row of acc
    (a quarter of the loads and stores of acc that one key per pass takes)."""
    hd = V.shape[2]
    s = 0
    while s + 4 <= n:
        v0, v1, v2, v3 = V[c0 + s, g], V[c0 + s + 1, g], V[c0 + s + 2, g], V[c0 + s + 3, g]
        for i in range(G):
            e0, e1, e2, e3 = sc[i, s], sc[i, s + 1], sc[i, s + 2], sc[i, s + 3]
            a = acc[i]
            for j in range(hd):
                a[j] += e0 * v0[j] + e1 * v1[j] + e2 * v2[j] + e3 * v3[j]
        s += 4
    for s in range(s, n):
        vs = V[c0 + s, g]
        for i in range(G):
            e = sc[i, s]
            a = acc[i]
            for j in range(hd):
                a[j] += e * vs[j]


# attend_range and attend_task are calls of their own, compiled once per signature and shared by the
# attention kernels: inlined, each kernel and variant re-typed and re-lowered the chunked softmax (minutes of
# cold compile; docs/performance.md, "Seventh session: cold compile time").
@njit(cache=True, fastmath=FAST)
def attend_range(q, t, h0, G, K, V, g, lo, hi, scale, m, l, acc, sc):
    """Fold keys lo..hi-1 of kv head g into the running softmax of query heads h0..h0+G-1 of query t.

    m, l [G] running max and sum; acc [G, hd] running weighted values; sc [G, CHUNK] scratch.
    """
    hd = K.shape[2]
    for c0 in range(lo, hi, CHUNK):
        n = min(hi, c0 + CHUNK) - c0
        chunk_scores(q, t, h0, G, K, V, g, c0, n, scale, sc)
        for i in range(G):
            cmax = -np.inf
            for s in range(n):
                cmax = max(cmax, sc[i, s])
            mnew = max(m[i], cmax)
            corr = expf(m[i] - mnew)
            m[i] = mnew
            l[i] *= corr
            for j in range(hd):
                acc[i, j] *= corr
            tot = np.float32(0.0)
            for s in range(n):
                e = expf(sc[i, s] - mnew)
                sc[i, s] = e
                tot += e
            l[i] += tot
        chunk_values(V, g, c0, n, G, sc, acc)


@njit(inline="always")
def first_after(k_pos, p):
    """The index of the first key whose position exceeds p (k_pos ascending): np.searchsorted(side="right")."""
    lo, hi = 0, k_pos.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if k_pos[mid] <= p:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, fastmath=FAST)
def attend_task(q, t, g, K, V, lo, hi, scale, out):
    """out[t, heads of kv head g] = softmax attention of query t over keys lo..hi-1 of kv head g."""
    H, hd = q.shape[1], q.shape[2]
    G = H // K.shape[1]
    m = np.full(G, -np.inf, np.float32)
    l = np.zeros(G, np.float32)
    acc = np.zeros((G, hd), np.float32)
    sc = np.empty((G, CHUNK), np.float32)
    attend_range(q, t, g * G, G, K, V, g, lo, hi, scale, m, l, acc, sc)
    write_normalized(acc, l, out, t, g * G)


@njit(inline="always")
def write_normalized(acc, l, out, t, h0):
    """out[t, h0 + i] = acc[i] / l[i] for the G rows of a running softmax's weighted values."""
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            out[t, h0 + i, j] = divide(acc[i, j], l[i])


@njit(inline="always")
def copy_rows(v, V, n):
    """V[n:n + T] = v (v [T, Hkv, hd]) by a plain loop (a slice assignment is a parallel region of its
    own at the top of a parallel kernel)."""
    for t in range(v.shape[0]):
        for g in range(v.shape[1]):
            for j in range(v.shape[2]):
                V[n + t, g, j] = v[t, g, j]


def _attention(q, K, V, q_pos, k_pos, window, scale):
    """(out [T, H, hd], True), or (an empty out, False) when k_pos is not ascending: the keys a query
    sees are then a range, found by binary search in each task."""
    T, H, hd = q.shape
    Hkv = K.shape[1]
    for s in range(1, k_pos.shape[0]):
        if k_pos[s] < k_pos[s - 1]:
            return np.empty((0, H, hd), np.float32), False
    out = np.empty((T, H, hd), np.float32)
    for task in prange(T * Hkv):
        t, g = task // Hkv, task % Hkv
        hi = first_after(k_pos, q_pos[t])
        lo = first_after(k_pos, q_pos[t] - window) if window else 0
        attend_task(q, t, g, K, V, lo, hi, scale, out)
    return out, True


_attention_1, _attention_p = twins(_attention, fastmath=FAST)


def _softmax_rows(s, lo, hi, G):
    """Row r of the scores s [rows, n] belongs to query r // G: in place, the softmax over that
    query's visible keys lo..hi-1, zero at the other keys."""
    for r in prange(s.shape[0]):
        row, a, b = s[r], lo[r // G], hi[r // G]
        seen = row[a:b]                  # a view indexed from 0: loops over range(a, b) do not vectorise
        m = np.float32(-np.inf)
        for j in range(seen.shape[0]):
            m = max(m, seen[j])
        total = np.float32(0.0)
        for j in range(seen.shape[0]):
            e = expf(seen[j] - m)
            seen[j] = e
            total += e
        if seen.shape[0] > 0:                    # a query that sees no key keeps a row of zeros
            inv = np.float32(1.0) / total
            for j in range(seen.shape[0]):
                seen[j] *= inv
        row[:a] = 0.0
        row[b:] = 0.0


_softmax_rows_1, _softmax_rows_p = twins(_softmax_rows, fastmath=FAST)


def softmax_rows(s, lo, hi, G):
    """In place: row r of the scores s [rows, n] becomes the softmax over keys lo[r // G]..hi[r // G]-1."""
    pick(_softmax_rows_1, _softmax_rows_p, s.size)(s, lo, hi, G)


def by_blas(q, k, v, lo, hi, longest, scale):
    """softmax(q k^T / sqrt(hd)) v per kv head g and block of queries, the products by BLAS (q, k, v
    float32, keys ascending; longest: the most keys a query sees)."""
    T, H, hd = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    out = np.empty((T, H, hd), np.float32)
    block = max(1, min(QUERY_BLOCK, SCORE_BLOCK // (G * max(1, longest))))
    for g in range(Hkv):
        kg, vg = k[:, g], v[:, g]                                              # [S, hd] views
        for t0 in range(0, T, block):
            t1 = min(T, t0 + block)
            a, b = int(lo[t0:t1].min()), int(hi[t0:t1].max())                  # the keys this block sees
            s = (q[t0:t1, g * G:(g + 1) * G].reshape(-1, hd) * scale) @ kg[a:b].T   # [(t1 - t0) G, b - a]
            softmax_rows(s, lo[t0:t1] - a, hi[t0:t1] - a, G)
            out[t0:t1, g * G:(g + 1) * G] = (s @ vg[a:b]).reshape(t1 - t0, G, hd)
    return out


def visible_ranges(q_pos, k_pos, window):
    """[lo, hi) index ranges of the keys each query sees (k_pos ascending)."""
    hi = np.searchsorted(k_pos, q_pos, side="right")
    lo = np.searchsorted(k_pos, q_pos - window, side="right") if window else np.zeros_like(hi)
    return lo.astype(np.int64), hi.astype(np.int64)


def attention(q, k, v, q_pos, k_pos, window=0):
    """Causal GQA softmax attention, optionally windowed (the reference's contract).

    q [T, H, hd]; k, v [S, Hkv, hd]; q_pos [T], k_pos [S] -> [T, H, hd] float32.
    """
    T, H, hd = q.shape
    scale = np.float32(1.0 / math.sqrt(hd))
    q_pos, k_pos = np.asarray(q_pos, np.int64), np.asarray(k_pos, np.int64)
    if T < PREFILL_MIN_T:
        q, k, v = (np.ascontiguousarray(a, np.float32) for a in (q, k, v))
        kernel = pick(_attention_1, _attention_p, T * len(k_pos) * k.shape[1] * hd * 2)
        if len(k_pos) < BLAS_MIN_KEYS:     # decode: one compiled call, which also checks the keys' order
            out, ascending = kernel(q, k, v, q_pos, k_pos, window, scale)
            if ascending:
                return out
    if len(k_pos) > 1 and not np.all(k_pos[1:] >= k_pos[:-1]):
        order = np.argsort(k_pos, kind="stable")
        k, v, k_pos = k[order], v[order], k_pos[order]
    lo, hi = visible_ranges(q_pos, k_pos, window)
    longest = int((hi - lo).max())
    if T >= PREFILL_MIN_T or longest >= BLAS_MIN_KEYS:
        return by_blas(np.asarray(q, np.float32), np.asarray(k, np.float32), np.asarray(v, np.float32), lo, hi,
                       longest, scale)
    return kernel(q, k, v, q_pos, k_pos, window, scale)[0]


def _rope_attend(q, k, v, cos, sin, K, V, n, scale):
    """`rope_attend` after its checks: q, k rotated by the table cos, sin [T, hd/2] (q into a copy, k
    into K), v copied into V, then each query t (position n + t) attends to rows 0..n+t."""
    T, H, hd = q.shape
    Hkv = K.shape[1]
    qr = np.empty_like(q)
    rotate_by(q, cos, sin, qr)
    rotate_by(k, cos, sin, K[n:n + T])
    copy_rows(v, V, n)
    out = np.empty((T, H, hd), np.float32)
    for task in prange(T * Hkv):
        t, g = task // Hkv, task % Hkv
        attend_task(qr, t, g, K, V, np.int64(0), n + t + 1, scale, out)   # (a literal 0: a compile of its own)
    return out


_rope_attend_1, _rope_attend_p = twins(_rope_attend, fastmath=FAST)


def rope_attend(q, k, v, positions, inv_freq, K, V, n):
    """Decode's full-attention step in one compiled call: RoPE of q [T, H, hd] and k [T, Hkv, hd] at
    positions n..n+T-1 (angles in the dtype of inv_freq, as kernels.rope), the rotated k and v [T, Hkv, hd]
    written to rows n..n+T-1 of a cache's buffers K, V [>= n + T, Hkv, hd] float32 whose rows 0..n-1
    hold positions 0..n-1, and causal attention of the rotated q over rows 0..n+T-1 -> [T, H, hd].
    The twin of `cogcore.blocks.rope.rope` on q and k, `KVCache.extend` and `attention`."""
    T, H, hd = q.shape
    if (k.shape != v.shape or k.shape[0] != T or K.shape != V.shape or K.shape[1:] != k.shape[1:]
            or H % k.shape[1] or len(positions) != T or positions[0] != n or K.shape[0] < n + T
            or not (K.dtype == V.dtype == np.float32 and K.flags.c_contiguous and V.flags.c_contiguous)):
        raise ValueError(f"rope_attend: q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}, {len(positions)} "
                         f"positions and buffers {list(K.shape)} for rows {n}..{n + T - 1} do not fit")
    cos, sin = rotation_tables(positions, inv_freq)
    q, k = np.ascontiguousarray(q, np.float32), np.ascontiguousarray(k, np.float32)
    v = np.ascontiguousarray(v, np.float32)
    kernel = pick(_rope_attend_1, _rope_attend_p, T * (n + T) * k.shape[1] * hd * 2)
    return kernel(q, k, v, cos, sin, K, V, n, np.float32(1.0 / math.sqrt(hd)))
