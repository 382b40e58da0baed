"""Exact-match evaluation on the generated reasoning tasks of cogcore.tasks (`cogcore eval`).

Instances are drawn fresh from `EVAL_SEED` (training draws from `TRAIN_SEED`), run
through the model with greedy decoding, and scored by exact match of the
continuation up to the first newline or EOS. Recall is also scored by its number of
key=value pairs, so that accuracy can be read against context length.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections import defaultdict

import numpy as np

from . import tasks
from .generate import generate

RECALL_PAIR = re.compile(r"\b[a-z]{2}=\d")


@dataclasses.dataclass
class TaskScore:
    task: str
    correct: int = 0
    total: int = 0
    by_pairs: dict[int, list[int]] = dataclasses.field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    failures: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (prompt, answer, output)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def evaluate_task(model, task: str, n: int, seed: int = tasks.EVAL_SEED, progress=None) -> TaskScore:
    """Score `n` fresh instances of `task`; `progress(done, n, score)` after each."""
    score = TaskScore(task)
    for i, (prompt, answer) in enumerate(tasks.examples(task, n, seed=seed)):
        output = generate(model, prompt, max_new_tokens=len(answer) + 8, temperature=0.0)
        ok = tasks.score(task, prompt, answer, output)
        score.correct += ok
        score.total += 1
        if task == "recall":
            cell = score.by_pairs[len(RECALL_PAIR.findall(prompt))]
            cell[0] += ok
            cell[1] += 1
        if not ok and len(score.failures) < 5:
            score.failures.append((prompt, answer, output))
        if progress:
            progress(i + 1, n, score)
    return score


def progress_bar(done: int, n: int, score: TaskScore, start: float, stream=None) -> None:
    """One self-overwriting line on stderr: task, bar, count, running accuracy, rate."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    if not tty and done != n and done % max(1, n // 10):
        return                        # a log or pipe gets ten lines, not one per instance
    width = 30
    filled = width * done // n
    rate = done / max(time.perf_counter() - start, 1e-9)
    start_, end = ("\r", "\n" if done == n else "") if tty else ("", "\n")
    stream.write(f"{start_}{score.task:7s} [{'#' * filled}{'.' * (width - filled)}] {done}/{n}  "
                 f"acc {score.accuracy:6.1%}  {rate:5.1f}/s{end}")
    stream.flush()


# ---- a model against a reference (quantization error) ---------------------------------------------
@dataclasses.dataclass
class Comparison:
    """Next-token distributions of a model against a reference's, over the same inputs.

    KL(reference || model) per position in nats (llama.cpp's --kl-divergence), and how often
    both rank the same token first.
    """

    positions: int
    mean_kl: float
    p99_kl: float
    max_kl: float
    top1_agreement: float
    answer_positions: int               # the positions that predict a task's answer tokens
    answer_mean_kl: float
    answer_top1_agreement: float


def comparison_inputs(model, n: int = 60, seed: int = tasks.EVAL_SEED) -> list[tuple[list[int], int]]:
    """Fixed inputs (token ids, index of the first position that predicts an answer token):
    task instances with their answers when the model has a tokenizer (n per task), else n
    seeded random sequences of 64 token ids (no answer positions)."""
    try:
        tok = model.tokenizer
    except Exception:   # no tokenizer.model (e.g. a random `cogcore init` model): random ids
        rng = np.random.default_rng(seed)
        return [(list(rng.integers(0, model.config.vocab_size, 64)), 64) for _ in range(n)]
    return [(tok.encode(prompt + answer, bos=True), len(tok.encode(prompt, bos=True)) - 1)
            for task in tasks.TASKS for prompt, answer in tasks.examples(task, n, seed=seed)]


def compare(model, reference, inputs: list[tuple[list[int], int]], progress=None) -> Comparison:
    """Compare `model` with `reference` on every position of every input sequence."""
    kls, same, answer = [], [], []
    for i, (ids, first_answer) in enumerate(inputs):
        logp = log_softmax(model.forward(ids))
        logq = log_softmax(reference.forward(ids))
        kls.append((np.exp(logq) * (logq - logp)).sum(axis=-1))
        same.append(logp.argmax(-1) == logq.argmax(-1))
        answer.append(np.arange(len(ids)) >= first_answer)
        if progress:
            progress(i + 1, len(inputs))
    kl = np.maximum(np.concatenate(kls), 0.0)          # >= 0 up to round-off
    same, answer = np.concatenate(same), np.concatenate(answer)
    return Comparison(len(kl), float(kl.mean()), float(np.percentile(kl, 99)), float(kl.max()),
                      float(same.mean()), int(answer.sum()),
                      float(kl[answer].mean()) if answer.any() else float("nan"),
                      float(same[answer].mean()) if answer.any() else float("nan"))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
