"""The sampler's filters (twin of cogcore.sampling.token_probabilities): tempered softmax,
top-k, top-p, min-p, renormalised, as a float64 distribution [V].

The reference sorts the whole vocabulary. Here only the m most probable ids are
ranked: m = top_k when top-k is on; for top-p alone m starts at 64 and doubles
until the ranked mass reaches top_p (a nucleus is rarely more than a few hundred
ids of a 32k vocabulary). Ranking is (probability descending, id ascending), the
reference's stable order.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always")
def _before(p, i, j):
    """Whether id i ranks before id j: more probable, or as probable and lower."""
    return p[i] > p[j] or (p[i] == p[j] and i < j)


@njit(inline="always")
def _sift_down(p, heap, n, at):
    """Restore the heap heap[:n] (every parent ranked after its children: the root is the last of
    them) below position at."""
    while True:
        child = 2 * at + 1
        if child >= n:
            return
        if child + 1 < n and _before(p, heap[child], heap[child + 1]):
            child += 1
        if not _before(p, heap[at], heap[child]):
            return
        heap[at], heap[child] = heap[child], heap[at]
        at = child


@njit(cache=True)
def _top_m(p, m):
    """Ids of the m most probable, ranked (p descending, ties to the lower id): a heap of the m best
    ids seen so far whose root is the last of them, then emptied root first from the back. (Plain
    loops rather than NumPy's partition and sorts, which took most of the sampler's compile time.)"""
    V = p.shape[0]
    m = min(m, V)
    heap = np.empty(m, np.int64)
    for i in range(m):
        heap[i] = i
    for at in range(m // 2 - 1, -1, -1):
        _sift_down(p, heap, m, at)
    for i in range(m, V):
        if _before(p, i, heap[0]):
            heap[0] = i
            _sift_down(p, heap, m, 0)
    order = np.empty(m, np.int64)
    for n in range(m, 0, -1):
        order[n - 1] = heap[0]
        heap[0] = heap[n - 1]
        _sift_down(p, heap, n - 1, 0)
    return order


@njit(cache=True)
def _probs(logits, temperature, top_k, top_p, min_p):
    V = logits.shape[0]
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    n = V if top_k == 0 else min(top_k, V)
    keep = np.zeros(V, np.bool_)
    if top_p < 1.0 or n < V:
        m = n if (n < V or top_p >= 1.0) else min(64, V)
        total = p.sum()
        while True:
            order = _top_m(p, m)
            if top_p >= 1.0:
                cut = n
                break
            denom = total
            if n < V:
                denom = 0.0
                for r in range(order.shape[0]):
                    denom += p[order[r]]
            cum = 0.0
            cut = -1
            for r in range(order.shape[0]):
                cum += p[order[r]]
                if cum / denom >= top_p - 1e-12:
                    cut = r + 1
                    break
            if cut > 0 or m >= n:
                if cut < 0:
                    cut = order.shape[0]
                break
            m = min(2 * m, n)
        for r in range(min(cut, n)):
            keep[order[r]] = True
        best = order[0]
    else:
        best = 0
        for i in range(V):
            keep[i] = True
            if p[i] > p[best]:
                best = i
    if min_p > 0:
        lim = min_p * p[best]
        for i in range(V):
            if p[i] < lim:
                keep[i] = False
    keep[best] = True
    out = np.zeros(V)
    for i in range(V):
        if keep[i]:
            out[i] = p[i]
    return out / out.sum()


def token_probabilities(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """The distribution [V] float64 that cogcore.sampling.sample draws from (temperature > 0)."""
    return _probs(np.asarray(logits), float(temperature), int(top_k), float(top_p), float(min_p))
