"""Seeded generators for the reasoning tasks the shipped model is trained and scored on.

Pure Python (only ``random``), so that the training recipe and the runtime's
``cogcore eval`` command share one definition. Each generator is
``make(rng: random.Random) -> (prompt, answer)``; the answer is what a model should
write after the prompt (greedy continuation up to newline or EOS).

    add     "12+345="                          -> "357"       0 <= A, B <= 999
    sort    "sort 7 2 9 4 ="                   -> "2 4 7 9"   2 to 8 digits, repeats allowed
    recall  "recall ab=3 cd=7 ef=1 ? cd ="     -> "7"         2 to 24 distinct two-letter keys

Training uses ``TRAIN_SEED``; evaluation should use a different seed (``EVAL_SEED``).
"""

from __future__ import annotations

import random
import string
from typing import Callable

TRAIN_SEED = 1234
EVAL_SEED = 20250601

ADD_MAX = 999
ADD_DIGITS = len(str(ADD_MAX))      # the longest operand
SORT_MIN, SORT_MAX = 2, 8
RECALL_MIN, RECALL_MAX = 2, 24

LETTERS = string.ascii_lowercase       # recall keys are two of these


def make_add(rng: random.Random, digits: tuple[int, int] | None = None) -> tuple[str, str]:
    """Uniform A, B in 0..ADD_MAX, or with ``digits=(da, db)`` uniform among the numbers
    of exactly that many digits (0 counts as one digit)."""
    if digits is None:
        a, b = rng.randint(0, ADD_MAX), rng.randint(0, ADD_MAX)
    else:
        a, b = (rng.randint(0 if d == 1 else 10 ** (d - 1), 10 ** d - 1) for d in digits)
    return f"{a}+{b}=", str(a + b)


def make_sort(rng: random.Random, n: int | None = None) -> tuple[str, str]:
    if n is None:
        n = rng.randint(SORT_MIN, SORT_MAX)
    digits = [rng.randint(0, 9) for _ in range(n)]
    prompt = "sort " + " ".join(map(str, digits)) + " ="
    return prompt, " ".join(map(str, sorted(digits)))


def make_recall(rng: random.Random, n_pairs: int | None = None) -> tuple[str, str]:
    if n_pairs is None:
        n_pairs = rng.randint(RECALL_MIN, RECALL_MAX)
    if not 1 <= n_pairs <= len(LETTERS) ** 2:
        raise ValueError(f"n_pairs must be in 1..{len(LETTERS) ** 2}, got {n_pairs}")
    keys: list[str] = []
    seen: set[str] = set()
    while len(keys) < n_pairs:
        key = rng.choice(LETTERS) + rng.choice(LETTERS)
        if key not in seen:
            seen.add(key)
            keys.append(key)
    values = [rng.randint(0, 9) for _ in keys]
    q = rng.randrange(n_pairs)
    body = " ".join(f"{k}={v}" for k, v in zip(keys, values))
    return f"recall {body} ? {keys[q]} =", str(values[q])


TASKS: dict[str, Callable[..., tuple[str, str]]] = {
    "add": make_add,
    "sort": make_sort,
    "recall": make_recall,
}


def score(task: str, prompt: str, answer: str, output: str) -> bool:
    """Exact match of a model's continuation (cut at the first newline, stripped) with the answer."""
    return output.split("\n", 1)[0].strip() == answer


def examples(task: str, n: int, seed: int = EVAL_SEED, **kw) -> list[tuple[str, str]]:
    """``n`` (prompt, answer) pairs of one task from a fresh ``random.Random(seed)``."""
    rng = random.Random(f"{task}:{seed}")
    return [TASKS[task](rng, **kw) for _ in range(n)]
