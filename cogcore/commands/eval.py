"""Score a model on fresh instances of the reasoning tasks (exact match, greedy decoding).

Tasks: add (A+B=), sort (sort 7 2 9 4 =), recall (recall ab=3 cd=7 ? cd =). Instances
come from a seed that training does not use. Recall is also broken down by its
number of key=value pairs.
"""

import time

from .. import tasks
from ..cli import add_model_argument, load_model
from ..evaluate import evaluate_task, progress_bar


def add_arguments(p):
    add_model_argument(p)
    p.add_argument("--task", choices=sorted(tasks.TASKS), action="append",
                   help="task to run (repeatable; default: all)")
    p.add_argument("-n", type=int, default=200, help="instances per task (default 200)")
    p.add_argument("--seed", type=int, default=tasks.EVAL_SEED, help="instance seed (default: the eval seed)")
    p.add_argument("--show-failures", action="store_true", help="print a few wrong answers per task")


def run(args):
    from ..errors import InputError
    if args.n < 1:
        raise InputError(f"-n: expected an integer >= 1, found {args.n}")
    model = load_model(args)
    scores = []
    for task in args.task or list(tasks.TASKS):
        start = time.perf_counter()
        scores.append(evaluate_task(model, task, args.n, args.seed,
                                    progress=lambda d, n, s: progress_bar(d, n, s, start)))
    print(f"\nmodel {args.model}, {args.n} instances per task, seed {args.seed}, greedy")
    print(f"{'task':8s} {'exact match':>12s}")
    for s in scores:
        print(f"{s.task:8s} {s.accuracy:11.1%}  ({s.correct}/{s.total})")
    for s in scores:
        if s.by_pairs:
            print(f"\n{s.task} by number of pairs:")
            for pairs in sorted(s.by_pairs):
                ok, n = s.by_pairs[pairs]
                print(f"  {pairs:3d} pairs  {ok / n:6.1%}  ({ok}/{n})")
        if args.show_failures and s.failures:
            print(f"\n{s.task} failures:")
            for prompt, answer, output in s.failures:
                print(f"  {prompt!r} -> {output!r} (expected {answer!r})")
