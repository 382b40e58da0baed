"""The training recipe of ``weights/cogcore-tiny`` (seeded, CPU, PyTorch).

    python -m cogcore.train --out weights/cogcore-tiny [--steps N] [--threads 2]

1. trains the sentencepiece tokenizer on a generated corpus (``tokenizer.py``: characters
   plus one piece per recall key and per ``=digit``);
2. trains the PyTorch mirror of the SPEC model (``torch_model.py``) on freshly
   generated ``add`` / ``sort`` / ``recall`` examples (``cogcore.tasks``, seed
   ``TRAIN_SEED`` + step), each one ``[bos] + encode(prompt) + encode(answer) + [eos]``
   with the loss on the answer tokens and EOS, plus a load-balancing term;
   Fine-tuning options (off by default): ``--init-from DIR`` starts from a model directory's
   weights and tokenizer; ``--router-margin M --margin-weight W`` adds a hinge on each token's
   gap between its k-th and (k+1)-th router logits, so that routing is not decided on near ties;
   ``--distill W`` keeps the initial model's predictions at the positions the loss does not
   score; ``--router-jitter EPS`` is Switch Transformer's multiplicative router-input noise;
3. exports config.json, model.safetensors (SPEC tensor names, float32) and
   generation_config.json, every file written under a temporary name then renamed.

Checkpoints go to ``--ckpt`` (default ``runs/cogcore-tiny``) every ``--ckpt-every``
steps; ``--resume`` continues from the last one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import torch

from ..tasks import ADD_DIGITS, TASKS, TRAIN_SEED
from ..tensorfile import write_json
from .tokenizer import SHIPPED_TOKENIZER, TOKENIZERS, train_tokenizer

# The shipped shape. vocab_size is filled in from the tokenizer.
CONFIG = {
    "model_type": "cogcore",
    "vocab_size": None,
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "layer_types": ["recurrent", "sparse_attention", "recurrent", "sparse_attention"],
    "mlp_types": ["moe", "moe", "moe", "moe"],
    "norm_type": "rmsnorm",
    "norm_eps": 1e-5,
    "embedding_norm": False,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "max_position_embeddings": 512,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "rope_theta": 10000.0,
    "nsa_compress_block": 16,
    "nsa_compress_stride": 8,
    "nsa_compress_hidden": 32,
    "nsa_select_block": 16,
    "nsa_select_count": 4,
    "nsa_window": 256,
    "rwkv_head_size": 16,
    "rwkv_decay_rank": 16,
    "rwkv_a_rank": 16,
    "rwkv_v_rank": 8,
    "rwkv_gate_rank": 32,
    "num_experts": 32,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 64,
    "norm_topk_prob": True,
    "num_shared_experts": 0,
    "shared_expert_intermediate_size": 0,
}

# after the curriculum, tasks take turns, one per step: add (the slowest to learn) three in five
TASK_ORDER = ["add", "recall", "add", "sort", "add"]
# batch size per task relative to --batch (short tasks get more examples per step)
BATCH_SCALE = {"recall": 1.0, "add": 3.0, "sort": 1.5}

GENERATION_CONFIG = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 32,
                     "bos_token_id": 1, "eos_token_id": 2,
                     "chat_history": "reset"}   # one question per sequence in training (docs/generation.md)


def extra_recall_queries(sp, prompt: str, rng: random.Random, n: int):
    """Token ids and loss weights of ``n`` more questions about the same pairs, appended
    after the first answer: `` ? cd =`` (weight 0) then the value (weight 1)."""
    pairs = [kv.split("=") for kv in prompt[len("recall "):].split(" ? ")[0].split(" ")]
    ids: list[int] = []
    wts: list[float] = []
    for _ in range(n):
        key, value = rng.choice(pairs)
        q = sp.encode(f" ? {key} =")
        a = sp.encode(value)
        ids += q + a
        wts += [0.0] * len(q) + [1.0] * len(a)
    return ids, wts


def make_batch(sp, cfg, rng: random.Random, batch: int, prompt_weight: float, task: str,
               recall_short: float = 0.0, recall_short_max: int = 8, recall_multi: int = 0,
               add_mixed: float = 0.0):
    """One task's batch: ids [B, T], targets [B, T], weights [B, T] (the loss weight of
    predicting targets[b, t]). Batches are one task each (tasks take turns by step), so
    that short tasks are not padded to the length of recall prompts."""
    bos, eos = cfg["bos_token_id"], cfg["eos_token_id"]
    seqs, masks = [], []
    for b in range(batch):
        if task == "recall" and recall_short > 0 and rng.random() < recall_short:
            prompt, answer = TASKS[task](rng, n_pairs=rng.randint(2, recall_short_max))
        elif task == "add" and add_mixed > 0 and rng.random() < add_mixed:
            prompt, answer = TASKS[task](rng, digits=(rng.randint(1, ADD_DIGITS), rng.randint(1, ADD_DIGITS)))
        else:
            prompt, answer = TASKS[task](rng)
        p = [bos] + sp.encode(prompt)
        a = sp.encode(answer)
        w = [prompt_weight] * (len(p) - 1) + [1.0] * len(a)
        if task == "recall" and recall_multi > 0:
            # more questions on the same pairs (a stronger signal per sequence); the token
            # after each answer but the last is not scored, so EOS is still what follows
            # an answer whenever it is scored
            extra, extra_w = extra_recall_queries(sp, prompt, rng, recall_multi)
            a = a + extra
            w = w + [0.0 if j == 0 else extra_w[j] for j in range(len(extra))]
        seqs.append(p + a + [eos])
        masks.append(w + [1.0])
    T = max(len(s) for s in seqs) - 1
    ids = torch.full((batch, T), eos, dtype=torch.long)
    tgt = torch.full((batch, T), eos, dtype=torch.long)
    wt = torch.zeros((batch, T))
    for b, (s, m) in enumerate(zip(seqs, masks)):
        n = len(s) - 1
        ids[b, :n] = torch.tensor(s[:-1])
        tgt[b, :n] = torch.tensor(s[1:])
        wt[b, :n] = torch.tensor(m)
    return ids, tgt, wt


def router_margin_loss(router_logits: list, valid: torch.Tensor, k: int, margin: float) -> torch.Tensor:
    """Mean hinge ``max(0, margin - (l_k - l_{k+1}))`` over the real tokens and MoE layers,
    ``l_k`` the k-th largest router logit of a token: zero once the last chosen expert
    leads the first unchosen one by ``margin``, so that a small change of the router's
    input (e.g. q8_0 weights upstream) does not change which experts are chosen."""
    mask = valid.reshape(-1).to(router_logits[0].dtype)
    total = torch.zeros(())
    for logits in router_logits:                                   # [B*T, E] per MoE layer
        top = torch.topk(logits, k + 1, dim=-1).values
        hinge = torch.relu(margin - (top[:, k - 1] - top[:, k]))
        total = total + (hinge * mask).sum() / mask.sum()
    return total / max(1, len(router_logits))


def export(model, cfg, out_dir: str, dtype=torch.float32):
    from safetensors.torch import save_file
    tensors = {n: t.to(dtype).contiguous() for n, t in model.state_dict_spec().items()}
    tmp = os.path.join(out_dir, "model.safetensors.tmp")
    save_file(tensors, tmp, metadata={"format": "pt", "producer": "cogcore.train"})
    os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
    write_json(os.path.join(out_dir, "config.json"), cfg)
    write_json(os.path.join(out_dir, "generation_config.json"), GENERATION_CONFIG)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="weights/cogcore-tiny")
    ap.add_argument("--ckpt", default="runs/cogcore-tiny")
    ap.add_argument("--steps", type=int, default=4500)
    ap.add_argument("--batch", type=int, default=40, help="recall batch; add x3, sort x1.5")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--aux", type=float, default=0.01, help="load-balancing loss weight")
    ap.add_argument("--router-margin", type=float, default=0.0,
                    help="logit gap wanted between the k-th and (k+1)-th router logits (0: no margin term)")
    ap.add_argument("--margin-weight", type=float, default=0.0, help="weight of the router margin term")
    ap.add_argument("--router-jitter", type=float, default=0.0,
                    help="multiply router inputs by uniform(1-eps, 1+eps) in training (Switch Transformer)")
    ap.add_argument("--distill", type=float, default=0.0,
                    help="with --init-from: weight of KL(initial model || model) at the positions the task loss "
                         "does not score (keeps the base model's predictions where the answers say nothing)")
    ap.add_argument("--init-from", default=None,
                    help="start from this model directory's weights and tokenizer (a fine-tune)")
    ap.add_argument("--prompt-weight", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=TRAIN_SEED)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--final-eval", type=int, default=200, help="instances per task scored after training (0: none)")
    ap.add_argument("--max-minutes", type=float, default=0.0, help="stop (and export) after this long")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--stop-at", type=int, default=0,
                    help="stop (and export) after this many steps, keeping the --steps schedule")
    ap.add_argument("--export-only", action="store_true",
                    help="export the last checkpoint in --ckpt to --out without training")
    ap.add_argument("--task-order", default=",".join(TASK_ORDER),
                    help="comma-separated tasks taking turns by step")
    ap.add_argument("--recall-multi", type=int, default=4,
                    help="extra questions appended to each recall training sequence (loss on their answers)")
    ap.add_argument("--recall-short", type=float, default=0.3,
                    help="fraction of recall examples drawn with 2..--recall-short-max pairs (the rest 2..24)")
    ap.add_argument("--recall-short-max", type=int, default=8)
    ap.add_argument("--add-mixed", type=float, default=0.5,
                    help="fraction of add examples whose operands' digit counts are uniform in 1..3 "
                         "(uniform A, B are 3-digit 90 %% of the time; unequal lengths are the hard cases)")
    ap.add_argument("--curriculum", default="recall:300",
                    help="first phase, TASK:STEPS blocks in order (e.g. add:600,recall:600), recall prompts 2..--recall-short-max pairs")
    ap.add_argument("--tokenizer", default=SHIPPED_TOKENIZER, choices=sorted(TOKENIZERS),
                    help="extra pieces on top of the characters (cogcore.train.tokenizer.TOKENIZERS)")
    ap.add_argument("--override", default="{}", help="JSON of config keys to change (experiments)")
    args = ap.parse_args(argv)

    import sentencepiece as spm

    from .evaluate import evaluate
    from .torch_model import CogcoreTorch

    task_order = args.task_order.split(",")
    curriculum = [task for block in filter(None, args.curriculum.split(","))
                  for task, n in [block.split(":")] for _ in range(int(n))]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.ckpt, exist_ok=True)

    tok_path = os.path.join(args.out, "tokenizer.model")
    if args.init_from:
        # a fine-tune keeps the model's tokenizer and shape
        if os.path.abspath(args.init_from) != os.path.abspath(args.out):
            shutil.copyfile(os.path.join(args.init_from, "tokenizer.model"), tok_path + ".tmp")
            os.replace(tok_path + ".tmp", tok_path)
        with open(os.path.join(args.init_from, "config.json")) as f:
            cfg = json.load(f)
        n_pieces = cfg["vocab_size"]
    else:
        n_pieces = train_tokenizer(tok_path, seed=args.seed, extra=TOKENIZERS[args.tokenizer])
        cfg = dict(CONFIG, vocab_size=n_pieces)
    sp = spm.SentencePieceProcessor(model_file=tok_path)
    cfg.update(json.loads(args.override))
    assert sp.bos_id() == cfg["bos_token_id"] and sp.eos_id() == cfg["eos_token_id"]

    model = CogcoreTorch(cfg, seed=args.seed)
    if args.init_from:
        from safetensors.torch import load_file
        model.load_spec(load_file(os.path.join(args.init_from, "model.safetensors")))
        print(f"initialised from {args.init_from}", flush=True)
    model.router_jitter = args.router_jitter
    teacher = None
    if args.distill:
        if not args.init_from:
            raise SystemExit("--distill needs --init-from (the model whose predictions are kept)")
        teacher = CogcoreTorch(cfg)
        teacher.load_spec(model.state_dict_spec())
        teacher.eval()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.params.items() if p.dim() >= 2]
    no_decay = [p for n, p in model.params.items() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    step = 0
    ck = os.path.join(args.ckpt, "last.pt")
    if args.resume and os.path.exists(ck):
        state = torch.load(ck, weights_only=False)
        model.load_spec(state["tensors"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed from {ck} at step {step}", flush=True)
    print(f"config: {json.dumps(cfg)}", flush=True)
    print(f"parameters: {n_params:,}  vocab {n_pieces}  steps {args.steps}  batch {args.batch}", flush=True)

    def lr_at(s):
        if s < args.warmup:
            return args.lr * (s + 1) / args.warmup
        frac = (s - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    def save_ckpt():
        tmp = ck + ".tmp"
        torch.save({"tensors": model.state_dict_spec(), "opt": opt.state_dict(), "step": step, "cfg": cfg}, tmp)
        os.replace(tmp, ck)

    if args.export_only:
        if not os.path.exists(ck):
            raise SystemExit(f"no checkpoint at {ck}")
        state = torch.load(ck, weights_only=False)
        model = CogcoreTorch(state["cfg"])
        model.load_spec(state["tensors"])
        export(model, state["cfg"], args.out)
        print(f"exported step {state['step']} of {ck} to {args.out}", flush=True)
        return 0
    t_start = time.time()
    run_loss = run_aux = run_margin = 0.0
    n_run = 0
    model.train()
    while step < args.steps:
        rng = random.Random(f"{args.seed}:{step}")          # data depends only on seed and step
        if step < len(curriculum):          # first phase: one task at a time, recall prompts short
            task, short = curriculum[step], 1.0
        else:
            task, short = task_order[(step - len(curriculum)) % len(task_order)], args.recall_short
        ids, tgt, wt = make_batch(sp, cfg, rng, int(args.batch * BATCH_SCALE[task]), args.prompt_weight, task,
                                  short, args.recall_short_max, args.recall_multi, args.add_mixed)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(ids)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                               reduction="none")
        loss = (ce * wt.reshape(-1)).sum() / wt.sum()
        aux = model.aux_loss / cfg["num_hidden_layers"]
        total = loss + args.aux * aux
        valid = wt.flip(1).cumsum(1).flip(1) > 0               # real tokens: up to each sequence's last scored target
        if args.margin_weight:
            margin = router_margin_loss(model.router_logits, valid, cfg["num_experts_per_tok"], args.router_margin)
            total = total + args.margin_weight * margin
            run_margin += margin.item()
        if teacher is not None:
            with torch.no_grad():
                target = torch.log_softmax(teacher(ids), -1)
            quiet = ((wt == 0) & valid).to(logits.dtype)                # real positions the task loss does not score
            kl = (target.exp() * (target - torch.log_softmax(logits, -1))).sum(-1)
            total = total + args.distill * (kl * quiet).sum() / quiet.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        run_loss += loss.item()
        run_aux += aux.item()
        n_run += 1
        if step % args.log_every == 0:
            el = time.time() - t_start
            print(f"step {step:5d}  loss {run_loss / n_run:.4f}  aux {run_aux / n_run:.3f}  "
                  f"margin {run_margin / n_run:.4f}  "
                  f"lr {lr_at(step - 1):.2e}  T {ids.shape[1]}  {el / 60:.1f} min", flush=True)
            run_loss = run_aux = run_margin = 0.0
            n_run = 0
        if step % args.ckpt_every == 0:
            save_ckpt()
        if args.eval_every and step % args.eval_every == 0:
            res = evaluate(model, sp, n=60, seed=999)
            print(f"  eval@{step}: {json.dumps(res)}", flush=True)
        if args.stop_at and step >= args.stop_at:
            print(f"stopping at step {step} (--stop-at)", flush=True)
            break
        if args.max_minutes and time.time() - t_start > args.max_minutes * 60:
            print(f"time limit reached at step {step}", flush=True)
            break
    save_ckpt()
    export(model, cfg, args.out)
    print(f"done: {step} steps in {(time.time() - t_start) / 60:.1f} min; exported to {args.out}", flush=True)
    if args.final_eval:
        res = evaluate(model, sp, n=args.final_eval)
        print(f"final eval (n={args.final_eval} per task, eval seed): {json.dumps(res)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
