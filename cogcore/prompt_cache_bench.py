"""`cogcore bench --only prompt_cache`: time to first token with a prompt cache (issue 12).

A fixed context of 4,096 tokens plus a 16-token query on the 8 x 1024 hybrid of `cogcore
bench` (random weights, Numba backend). Time to first token = restoring + prefilling what
is left + choosing the first token (greedy), for:

- miss:    an empty store (the whole prompt is computed, and the result stored);
- hit:     the store holds the context, the prompt is context + query;
- partial: the store holds the context, the prompt leaves it 100 tokens before its end
           (context[:-100] + 116 new tokens: the same length as the others).

Also: the memory of the stored context, per checkpoint and per token, and the cost of the
model identity (sampled) against a full hash of the weights.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from .bench import Report, bench_config, timeit


def prompt_cache_rows(rep: Report, quick: bool, context: int = 4096, query: int = 16,
                      diverge: int = 100) -> None:
    from .create import random_weights
    from .model import Model
    from .prompt_cache import PromptCache, model_identity
    from .weights import Weights

    cfg = bench_config()
    rep.step("random float32 weights of the 8-layer bench model")
    model = Model(cfg, Weights(random_weights(cfg, seed=0)), backend="numba")
    rng = np.random.default_rng(0)
    ctx = np.concatenate([[cfg.bos_token_id], rng.integers(3, cfg.vocab_size, context - 1)])
    hit_prompt = np.concatenate([ctx, rng.integers(3, cfg.vocab_size, query)])
    partial_prompt = np.concatenate([ctx[:context - diverge], rng.integers(3, cfg.vocab_size, diverge + query)])

    rep.step(f"prefill and store the {context}-token context")
    store = PromptCache(model)
    t0 = time.perf_counter()
    store.prefill(ctx)
    rep.line(f"  stored the context in {time.perf_counter() - t0:.2f} s")
    (entry,) = store.entries.values()

    def first_token(prompt, with_context: bool):
        pc = PromptCache(model)
        if with_context:
            pc.add(entry)
        _, logits, restored, _ = pc.prefill(prompt)
        return int(np.argmax(logits)), restored

    def plain(prompt):
        cache = model.new_cache()
        for a in range(0, len(prompt), 256):
            logits = model.forward(prompt[a:a + 256], cache, last_only=True)
        return int(np.argmax(logits[-1]))

    reps = 1 if quick else 3
    times = {}
    for name, prompt, with_context in (("miss", hit_prompt, False), ("hit", hit_prompt, True),
                                       ("partial", partial_prompt, True)):
        rep.step(f"time to first token, {name}")
        times[name] = timeit(lambda: first_token(prompt, with_context), reps if name == "miss" else 3 * reps)
    rep.step("time to first token without a prompt cache")
    times["plain"] = timeit(lambda: plain(hit_prompt), reps)
    assert first_token(hit_prompt, True)[0] == first_token(hit_prompt, False)[0] == plain(hit_prompt)
    restored = {name: first_token(p, True)[1] for name, p in (("hit", hit_prompt), ("partial", partial_prompt))}

    n = len(hit_prompt)
    rep.line(f"  prompt: {context} context + {query} query tokens; partial: diverges {diverge} tokens "
             f"before the end of the context")
    rep.line(f"  no prompt cache (chunks of 256):  {times['plain'] * 1e3:9.1f} ms")
    rep.line(f"  miss (computes and stores {n}):  {times['miss'] * 1e3:9.1f} ms")
    for name in ("hit", "partial"):
        rep.line(f"  {name + ' (restores ' + str(restored[name]) + ')':<33} {times[name] * 1e3:9.1f} ms   "
                 f"{times['miss'] / times[name]:6.1f}x faster than the miss")
    rep.facts.update({f"prompt_cache_{k}_s": v for k, v in times.items()})

    per_ckpt = sum(a.nbytes for k, a in entry.tensors.items()
                   if k == "logits" or k.endswith((".S", ".x_prev"))) / len(entry.checkpoints)
    rep.line(f"  stored context: {entry.nbytes / 2**20:.1f} MiB ({entry.nbytes / context / 1024:.1f} KiB/token), "
             f"{len(entry.checkpoints)} checkpoints of {per_ckpt / 2**20:.2f} MiB each")
    model._prompt_cache_identity = None
    t0 = time.perf_counter()
    model_identity(model)
    sampled = time.perf_counter() - t0
    t0 = time.perf_counter()
    h = hashlib.sha256()
    for name in sorted(model.weights.tensors):
        h.update(np.ascontiguousarray(model.weights.tensors[name]).view(np.uint8).reshape(-1))
    full = time.perf_counter() - t0
    total = sum(a.nbytes for a in model.weights.tensors.values())
    rep.line(f"  model identity: sampled {sampled * 1e3:.1f} ms; a full sha256 of the "
             f"{total / 2**20:,.0f} MiB of weights {full * 1e3:,.0f} ms")
