"""Greedy exact-match evaluation of a model on the generated tasks, with the torch mirror.

    python -m cogcore.train.evaluate weights/cogcore-tiny [--n 300] [--seed SEED]

Decoding mirrors the runtime's ``generate``: ``[bos] + sp.encode(prompt)``, greedy,
stop at EOS (or newline), ``sp.decode`` of the new ids.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch

from ..tasks import EVAL_SEED, RECALL_MAX, RECALL_MIN, TASKS, score

MAX_NEW = {"add": 6, "sort": 18, "recall": 4}


@torch.no_grad()
def greedy_batch(model, sp, prompts: list[str], max_new: int) -> list[str]:
    """Batched greedy decoding with right padding (causal, so padding is harmless)."""
    bos, eos = model.cfg["bos_token_id"], model.cfg["eos_token_id"]
    seqs = [[bos] + sp.encode(p) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    was = model.training
    model.eval()
    for _ in range(max_new):
        T = max(len(s) for s in seqs)
        ids = torch.tensor([s + [eos] * (T - len(s)) for s in seqs])
        logits = model(ids)
        for b, s in enumerate(seqs):
            if done[b]:
                continue
            nxt = int(logits[b, len(s) - 1].argmax())
            if nxt == eos:
                done[b] = True
                continue
            out[b].append(nxt)
            s.append(nxt)
            if "\n" in sp.decode([nxt]):
                done[b] = True
        if all(done):
            break
    model.train(was)
    return [sp.decode(o) for o in out]


def evaluate(model, sp, n: int = 200, seed: int = EVAL_SEED, batch: int = 100,
             recall_by_pairs: bool = False) -> dict:
    res: dict = {}
    for task, make in TASKS.items():
        rng = random.Random(f"{task}:{seed}")
        ex = [make(rng) for _ in range(n)]
        ok = 0
        for s in range(0, n, batch):
            chunk = ex[s:s + batch]
            outs = greedy_batch(model, sp, [p for p, _ in chunk], MAX_NEW[task])
            ok += sum(score(task, p, a, o) for (p, a), o in zip(chunk, outs))
        res[task] = ok / n
    if recall_by_pairs:
        by = {}
        for k in range(RECALL_MIN, RECALL_MAX + 1):
            rng = random.Random(f"recall:{seed}:{k}")
            ex = [TASKS["recall"](rng, n_pairs=k) for _ in range(n)]
            ok = 0
            for s in range(0, n, batch):
                chunk = ex[s:s + batch]
                outs = greedy_batch(model, sp, [p for p, _ in chunk], MAX_NEW["recall"])
                ok += sum(score("recall", p, a, o) for (p, a), o in zip(chunk, outs))
            by[k] = ok / n
        res["recall_by_pairs"] = by
    return res


def load_dir(path: str):
    import sentencepiece as spm
    from safetensors.torch import load_file

    from .torch_model import CogcoreTorch
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    model = CogcoreTorch(cfg)
    model.load_spec(load_file(os.path.join(path, "model.safetensors")))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(path, "tokenizer.model"))
    return model, sp


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="weights/cogcore-tiny")
    ap.add_argument("--n", type=int, default=300, help="examples per task (and per recall pair count)")
    ap.add_argument("--seed", type=int, default=EVAL_SEED)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--by-pairs", action="store_true", help="also score recall at each pair count 2..24")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, sp = load_dir(args.model)
    t0 = time.time()
    res = evaluate(model, sp, args.n, args.seed, recall_by_pairs=args.by_pairs)
    res["seconds"] = round(time.time() - t0, 1)
    res["n"] = args.n
    res["seed"] = args.seed
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
