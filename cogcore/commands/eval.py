"""Score a model on fresh instances of the reasoning tasks (exact match, greedy decoding).

Tasks: add (A+B=), sort (sort 7 2 9 4 =), recall (recall ab=3 cd=7 ? cd =). Instances
come from a seed that training does not use. Recall is also broken down by its
number of key=value pairs.

With --compare REF_DIR (e.g. the float model a quantized --model was made from): the
mean KL divergence of the next-token distributions, KL(reference || model), and top-1
agreement over every position of fixed inputs (task instances with their answers, or
seeded random token ids for a model without a tokenizer), then the task scores.
"""

import sys
import time

from .. import tasks
from ..cli import add_model_argument, load_model
from ..evaluate import compare, comparison_inputs, evaluate_task, progress_bar


def add_arguments(p):
    add_model_argument(p)
    p.add_argument("--task", choices=sorted(tasks.TASKS), action="append",
                   help="task to run (repeatable; default: all)")
    p.add_argument("-n", type=int, default=200, help="instances per task (default 200)")
    p.add_argument("--seed", type=int, default=tasks.EVAL_SEED, help="instance seed (default: the eval seed)")
    p.add_argument("--show-failures", action="store_true", help="print a few wrong answers per task")
    p.add_argument("--compare", metavar="REF_DIR",
                   help="also report KL divergence and top-1 agreement against this reference model")
    p.add_argument("--no-tasks", action="store_true", help="with --compare: skip the task scores")


def run(args):
    from ..errors import InputError
    if args.n < 1:
        raise InputError(f"-n: expected an integer >= 1, found {args.n}")
    model = load_model(args)
    if args.compare:
        compare_with(model, args)
        if args.no_tasks:
            return
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


def compare_with(model, args):
    from ..model import load
    reference = load(args.compare, backend=args.backend)
    inputs = comparison_inputs(model, n=min(args.n, 60), seed=args.seed)

    def progress(done, total):
        if done == total or done % max(1, total // 10) == 0:
            print(f"  compared {done}/{total} sequences", file=sys.stderr, flush=True)
    c = compare(model, reference, inputs, progress=progress)
    print(f"model {args.model} against {args.compare}: {len(inputs)} sequences, {c.positions} positions")
    print(f"  mean KL divergence   {c.mean_kl:.6f} nats   (99th percentile {c.p99_kl:.6f}, max {c.max_kl:.6f})")
    print(f"  top-1 agreement      {c.top1_agreement:.2%}")
    if c.answer_positions:
        print(f"  answer positions     {c.answer_positions}: mean KL {c.answer_mean_kl:.6f} nats, "
              f"top-1 agreement {c.answer_top1_agreement:.2%}")
