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


@njit(cache=True)
def _top_m(p, m):
    """Ids of the m most probable, ranked (p descending, ties to the lower id)."""
    V = p.shape[0]
    if m >= V:
        return np.argsort(-p, kind="mergesort")
    thr = np.partition(p.copy(), V - m)[V - m]
    cand = np.empty(m, np.int64)
    c = 0
    for i in range(V):                      # strictly above the threshold: all of them
        if p[i] > thr:
            cand[c] = i
            c += 1
    for i in range(V):                      # at the threshold: the lowest ids first
        if c >= m:
            break
        if p[i] == thr:
            cand[c] = i
            c += 1
    cand = np.sort(cand[:c])
    order = np.argsort(-p[cand], kind="mergesort")
    return cand[order]


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
            denom = p[order].sum() if n < V else total
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
        keep[:] = True
        best = np.argmax(p)
    if min_p > 0:
        lim = min_p * p[best]
        for i in range(V):
            if p[i] < lim:
                keep[i] = False
    keep[best] = True
    out = np.where(keep, p, 0.0)
    return out / out.sum()


def token_probabilities(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """The distribution [V] float64 that cogcore.sampling.sample draws from (temperature > 0)."""
    return _probs(np.asarray(logits), float(temperature), int(top_k), float(top_p), float(min_p))
