"""Choosing the next token from logits: a pure function of (logits, options, rng).

    logits ──repetition penalty──> tempered softmax ──top-k──> top-p ──min-p──> renormalise ──> draw

- Repetition penalty (Keskar et al., 2019, "CTRL", Sec. 4.1; the Hugging Face form):
  for every id already in the context, a positive logit is divided by `penalty`, a
  negative one multiplied by it. `penalty` 1 does nothing.
- Temperature 0 is greedy: the argmax, ties going to the lowest id; top-k, top-p
  and min-p are then irrelevant and no random number is drawn.
- Otherwise `p = softmax(logits / temperature)` in float64, then, in this order
  (the Hugging Face order: temperature first, then the filters):
  - top-k (k > 0): keep the k most probable ids (ties to the lower id);
  - top-p (p < 1; Holtzman et al., 2020, "nucleus sampling"): of what is left,
    renormalised, keep the smallest set of most probable ids whose mass is >= p;
  - min-p (m > 0): keep the ids with `p_i >= m * max(p)` (ratios do not change with
    renormalisation, so this is the same over the full or the filtered distribution);
  then renormalise what is kept and draw one id by inverse CDF with one `rng.random()`.
  The most probable id is never filtered out.

`token_probabilities` returns the final distribution, so tests can compare it with
the closed forms above; `sample` draws from it.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError


def check_options(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                  repetition_penalty: float = 1.0) -> None:
    """An InputError naming the option when one is out of range."""
    def bad(name, expected, found):
        raise InputError(f"{name}: expected {expected}, found {found!r}")

    if not _is_finite(temperature) or temperature < 0:
        bad("temperature", "a finite number >= 0 (0 = greedy)", temperature)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        bad("top_k", "an integer >= 0 (0 = off)", top_k)
    if not _is_number(top_p) or not 0 < top_p <= 1:
        bad("top_p", "a number in (0, 1] (1 = off)", top_p)
    if not _is_number(min_p) or not 0 <= min_p <= 1:
        bad("min_p", "a number in [0, 1] (0 = off)", min_p)
    if not _is_finite(repetition_penalty) or repetition_penalty <= 0:
        bad("repetition_penalty", "a finite number > 0 (1 = off)", repetition_penalty)


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _is_finite(x) -> bool:
    """A finite number (a Python int too big for a float is not)."""
    try:
        return _is_number(x) and math.isfinite(float(x))
    except OverflowError:
        return False


def apply_repetition_penalty(logits: np.ndarray, previous_ids, penalty: float) -> np.ndarray:
    """CTRL-style penalty: logits of ids in `previous_ids` divided by `penalty` if > 0, else multiplied.

    Each id is penalised once however often it occurred. Returns a new array (float32 in, float32 out).
    """
    out = np.array(logits, copy=True)
    if penalty == 1.0:
        return out
    ids = np.unique(np.asarray(previous_ids, dtype=np.int64))
    if ids.size == 0:
        return out
    seen = out[ids].astype(np.float64)
    scaled = np.where(seen > 0, seen / penalty, seen * penalty)
    big = np.finfo(out.dtype).max if np.issubdtype(out.dtype, np.floating) else np.inf
    out[ids] = np.clip(scaled, -big, big)   # extreme penalties saturate instead of overflowing to inf
    return out


def greedy(logits: np.ndarray) -> int:
    """The argmax, ties to the lowest id."""
    return int(np.argmax(logits))


def token_probabilities(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0,
                        top_p: float = 1.0, min_p: float = 0.0) -> np.ndarray:
    """The distribution [V] (float64, sums to 1) that `sample` draws from.

    temperature 0 gives a one-hot vector on the greedy id.
    """
    logits = np.asarray(logits)
    if logits.ndim != 1 or logits.size == 0:
        raise InputError(f"logits: expected a non-empty 1-D array, found shape {list(logits.shape)}")
    if np.isnan(logits).any():
        raise InputError("logits: found NaN (the model produced invalid numbers)")
    V = logits.size
    if temperature == 0:
        p = np.zeros(V)
        p[greedy(logits)] = 1.0
        return p
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    # ids from most to least probable, ties to the lower id
    order = np.argsort(-p, kind="stable")
    keep = np.zeros(V, bool)
    n = V if top_k == 0 else min(top_k, V)
    if top_p < 1.0:
        ranked = p[order[:n]]
        cum = np.cumsum(ranked) / ranked.sum()
        # the smallest prefix whose mass reaches top_p (with a little slack for round-off)
        n = min(n, int(np.searchsorted(cum, top_p - 1e-12, side="left")) + 1)
    keep[order[:n]] = True
    if min_p > 0:
        keep &= p >= min_p * p[order[0]]
    keep[order[0]] = True
    p = np.where(keep, p, 0.0)
    return p / p.sum()


def sample(logits: np.ndarray, rng: np.random.Generator | None = None, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, probabilities=None) -> int:
    """One token id from logits [V]. Greedy when temperature is 0 (rng unused); otherwise one
    `rng.random()` draw by inverse CDF over `token_probabilities(...)`, ids in ascending order.
    `probabilities` replaces `token_probabilities` (the Numba backend passes its compiled twin)."""
    if temperature == 0:
        return greedy(logits)
    if rng is None:
        raise InputError("sample: an rng (numpy.random.Generator) is needed when temperature > 0")
    p = (probabilities or token_probabilities)(logits, temperature, top_k, top_p, min_p)
    cdf = np.cumsum(p)
    u = rng.random() * cdf[-1]
    i = int(np.searchsorted(cdf, u, side="right"))
    i = min(i, len(p) - 1)
    while p[i] == 0:          # round-off at the top end: step back to a kept id
        i -= 1
    return i


def sample_next(logits: np.ndarray, rng: np.random.Generator | None, previous_ids=(),
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                repetition_penalty: float = 1.0, probabilities=None) -> int:
    """`apply_repetition_penalty` then `sample`: what generation calls for each new token."""
    if repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, previous_ids, repetition_penalty)
    return sample(logits, rng, temperature, top_k, top_p, min_p, probabilities)
