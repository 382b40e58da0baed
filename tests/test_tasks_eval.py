"""The reasoning tasks (cogcore.tasks) and the exact-match harness of `cogcore eval`.

Answers are recomputed here from the prompt text alone, so a generator that wrote a
wrong answer, or a scorer that counted wrong, would fail.
"""

import io
import random
import re

import pytest

from cogcore import cli, evaluate, tasks

try:
    from textmodel import make_text_model, train_tokenizer
except ImportError:  # tests/ imported as a package
    from tests.textmodel import make_text_model, train_tokenizer


def solve(task: str, prompt: str) -> str:
    """The answer to a prompt, parsed from its text only."""
    if task == "add":
        a, b = re.fullmatch(r"(\d+)\+(\d+)=", prompt).groups()
        return str(int(a) + int(b))
    if task == "sort":
        digits = re.fullmatch(r"sort((?: \d)+) =", prompt).group(1).split()
        return " ".join(sorted(digits))
    body, key = re.fullmatch(r"recall (.*) \? ([a-z]{2}) =", prompt).groups()
    pairs = dict(kv.split("=") for kv in body.split())
    return pairs[key]


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_generated_answers_are_right(task):
    for prompt, answer in tasks.examples(task, 300, seed=7):
        assert solve(task, prompt) == answer


def test_task_ranges():
    adds = [tuple(map(int, re.findall(r"\d+", p))) for p, _ in tasks.examples("add", 20000)]
    assert min(min(a) for a in adds) == 0 and max(max(a) for a in adds) == 999
    sorts = [len(p.split()) - 2 for p, _ in tasks.examples("sort", 2000)]
    assert (min(sorts), max(sorts)) == (2, 8)
    for prompt, _ in tasks.examples("recall", 500):
        keys = re.findall(r"\b([a-z]{2})=\d", prompt)
        assert 2 <= len(keys) <= 24 and len(set(keys)) == len(keys)   # distinct keys
    assert len(evaluate.RECALL_PAIR.findall(tasks.make_recall(random.Random(0), n_pairs=17)[0])) == 17


@pytest.mark.parametrize("digits", [(1, 3), (2, 2), (3, 1)])
def test_add_with_digit_counts(digits):
    """Operands of exactly the asked lengths, covering each length's whole range (0 is one digit)."""
    rng = random.Random(5)
    adds = [tuple(map(int, re.findall(r"\d+", tasks.make_add(rng, digits=digits)[0]))) for _ in range(20000)]
    for d, vals in zip(digits, zip(*adds)):
        lo, hi = (0, 9) if d == 1 else (10 ** (d - 1), 10 ** d - 1)
        assert (min(vals), max(vals)) == (lo, hi)


def test_examples_are_seeded_and_eval_differs_from_training():
    assert tasks.examples("add", 50, seed=3) == tasks.examples("add", 50, seed=3)
    train = set(tasks.examples("add", 200, seed=tasks.TRAIN_SEED))
    held = set(tasks.examples("add", 200, seed=tasks.EVAL_SEED))
    assert len(train & held) < 5     # 10^6 possible sums: overlap only by chance


def test_score_cuts_at_newline():
    assert tasks.score("add", "1+2=", "3", "3\nmore") and tasks.score("add", "1+2=", "3", " 3 ")
    assert not tasks.score("add", "1+2=", "3", "33") and not tasks.score("add", "1+2=", "3", "")


def test_evaluate_counts_against_an_oracle(monkeypatch):
    """A 'model' that answers every second recall question right scores exactly that."""
    asked = []

    def oracle(model, prompt, **options):
        asked.append(prompt)
        right = solve("recall", prompt)
        return right if len(asked) % 2 else str((int(right) + 1) % 10)

    monkeypatch.setattr(evaluate, "generate", oracle)
    score = evaluate.evaluate_task(None, "recall", 40, seed=11)
    assert (score.correct, score.total) == (20, 40)
    assert sum(n for _, n in score.by_pairs.values()) == 40
    assert sum(ok for ok, _ in score.by_pairs.values()) == 20
    for pairs, (ok, n) in score.by_pairs.items():
        expected = [i % 2 == 0 for i, p in enumerate(asked)
                    if len(evaluate.RECALL_PAIR.findall(p)) == pairs]
        assert (ok, n) == (sum(expected), len(expected))
    assert len(score.failures) == 5


def test_cli_eval_runs_a_model(tmp_path, capsys):
    tok = tmp_path / "tok.model"
    n = train_tokenizer(str(tok))
    model_dir = make_text_model(str(tmp_path), str(tok), n)
    rc = cli.main(["eval", "--model", model_dir, "--backend", "numpy", "--task", "add",
                   "--task", "recall", "-n", "6"])
    out, err = capsys.readouterr()
    assert rc == 0
    lines = out.splitlines()
    assert any(re.fullmatch(r"add\s+\d+\.\d%\s+\(\d/6\)", line) for line in lines)
    assert any(re.fullmatch(r"recall\s+\d+\.\d%\s+\(\d/6\)", line) for line in lines)
    assert "recall by number of pairs:" in out and "6/6" in err


def test_cli_eval_rejects_bad_n(tmp_path, capsys):
    assert cli.main(["eval", "--model", str(tmp_path), "-n", "0"]) == 1
    assert "-n: expected an integer >= 1, found 0" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_overwrites_on_a_terminal_and_logs_ten_lines_elsewhere():
    score = evaluate.TaskScore("add")
    log, tty = io.StringIO(), _Terminal()
    for done in range(1, 101):
        score.correct, score.total = done // 2, done
        evaluate.progress_bar(done, 100, score, start=0.0, stream=log)
        evaluate.progress_bar(done, 100, score, start=0.0, stream=tty)
    lines = log.getvalue().splitlines()
    assert [int(re.search(r"(\d+)/100", line).group(1)) for line in lines] == list(range(10, 101, 10))
    assert "\r" not in log.getvalue() and "acc  50.0%" in lines[-1]
    assert tty.getvalue().count("\r") == 100 and tty.getvalue().count("\n") == 1
