"""Benchmark of `cogcore serve` (not a test): concurrent chat clients sharing a long system prompt.

    python -m cogcore.serve_bench [--model DIR] [--clients 8] [--requests 20] [--system-tokens 300]

Starts the server in this process on a free 127.0.0.1 port, first without a prompt
cache, then with a fresh one (`--no-cache` skips the latter). The first server also
answers every distinct request alone (one at a time, greedy, no cache): the
reference answers. In each run `--clients` threads each send `--requests` streamed
chat requests at once. Printed per run: failed requests, answers that differ from
the served-alone ones, and the median (p50) and p90 time to first token (request
sent -> first content chunk received), then the ratio of the p50s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import statistics
import sys
import time

SYSTEM_TEXT = ("You are a careful calculator. Read each question, add the two numbers digit by digit "
               "from the right, carry when a column passes nine, and answer with the sum only. ")


def system_prompt(model, tokens: int) -> str:
    """Copies of SYSTEM_TEXT cut to about `tokens` tokens (at a word boundary)."""
    text = ""
    while len(model.tokenizer.encode(text)) < tokens:
        text += SYSTEM_TEXT
    words = text.split(" ")
    while len(model.tokenizer.encode(" ".join(words))) > tokens:
        words.pop()
    return " ".join(words)


def ask(client, model_id: str, system: str, question: str, max_tokens: int) -> tuple[str, float]:
    """(answer, seconds to the first content chunk) of one streamed greedy chat request."""
    start, first = time.perf_counter(), None
    pieces = []
    for chunk in client.chat.completions.create(
            model=model_id, messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=max_tokens, temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            pieces.append(chunk.choices[0].delta.content)
    return "".join(pieces), (first or time.perf_counter()) - start


def run(model, prompt_cache, args, system: str, questions: list[list[str]], alone: dict) -> dict:
    """One server, `args.clients` concurrent clients; fills `alone` (question -> answer) if empty."""
    import openai
    from .server import create_app, serving
    app = create_app(model, prompt_cache=prompt_cache, max_active=args.clients, max_queue=4 * args.clients)
    model_id = app.state.server.model_id
    with serving(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
        if not alone:
            alone.update((q, ask(client, model_id, system, q, args.max_tokens)[0])
                         for q in sorted({q for qs in questions for q in qs}))

        def one_client(qs):
            out = []
            for q in qs:
                try:
                    out.append((q, *ask(client, model_id, system, q, args.max_tokens)))
                except Exception as e:          # counted as a failure, the benchmark goes on
                    out.append((q, e, None))
            return out

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            results = [r for rs in pool.map(one_client, questions) for r in rs]
        wall = time.perf_counter() - start
    failed = [r for r in results if r[2] is None]
    ttft = sorted(r[2] for r in results if r[2] is not None)
    return {"requests": len(results), "failed": len(failed),
            "differ": sum(1 for q, a, t in results if t is not None and a != alone[q]),
            "p50": statistics.median(ttft), "p90": ttft[math.ceil(0.9 * len(ttft)) - 1], "wall": wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cogcore.serve_bench", description=__doc__.split("\n")[0])
    from .cli import DEFAULT_MODEL
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="DIR")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=20, help="requests per client")
    p.add_argument("--system-tokens", type=int, default=300)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--cache-bytes", type=int, default=256 << 20)
    p.add_argument("--no-cache", action="store_true", help="only the run without a prompt cache")
    args = p.parse_args(argv)

    import cogcore
    from kernels import warm_up
    model = cogcore.load(args.model)
    warm_up()
    system = system_prompt(model, args.system_tokens)
    questions = [[f"{37 * c + 11 * r}+{101 + 7 * c + 13 * r}=" for r in range(args.requests)]
                 for c in range(args.clients)]
    print(f"{args.clients} clients x {args.requests} requests, system prompt of "
          f"{len(model.tokenizer.encode(system))} tokens, max_tokens {args.max_tokens}", flush=True)
    runs, alone = {}, {}
    kinds = [("no cache", lambda: None)]
    if not args.no_cache:
        kinds.append(("prompt cache", lambda: cogcore.PromptCache(model, max_bytes=args.cache_bytes)))
    for name, make_cache in kinds:
        r = runs[name] = run(model, make_cache(), args, system, questions, alone)
        print(f"{name:13s} requests {r['requests']}  failed {r['failed']}  differ from served alone "
              f"{r['differ']}  TTFT p50 {r['p50'] * 1e3:.0f} ms  p90 {r['p90'] * 1e3:.0f} ms  "
              f"wall {r['wall']:.1f} s", flush=True)
    if len(runs) == 2:
        print(f"p50 TTFT without / with the prompt cache: "
              f"{runs['no cache']['p50'] / runs['prompt cache']['p50']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
