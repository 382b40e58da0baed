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
