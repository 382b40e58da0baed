"""cogcore against llama.cpp on the same weights (issue 19): a benchmark, not a test.

A random Mixtral-shape model (8 layers x 1024, 8 query / 2 kv heads of 128, 32 experts
of 512 top-2, vocab 32000: 0.49 B parameters, as in the issue) is written as a Hugging
Face directory by transformers, then quantized both ways from the same float32 weights:

    cogcore:   cogcore quantize HF_DIR DIR/cogcore-q8_0 --type q8_0      (and q4_0)
    llama.cpp: convert_hf_to_gguf.py HF_DIR --outtype f32 / q8_0, llama-quantize --pure f32 -> q4_0

In both, the norms and the router stay float32 and everything else (embedding and output
included) is in the block format.

Both quantizers write GGML's reference blocks, so the two runtimes read the same bytes.
`bench` alternates llama-bench and cogcore, precision by precision, for several rounds, and
prints each round's figures, the medians and the cogcore / llama.cpp ratios:

    python benchmarks/llama_compare.py make /tmp/mixtral-bench \\
        --llama-src /tmp/llama/llama_cpp_python-0.3.36/vendor/llama.cpp --llama-bin /tmp/llama/build/bin
    python benchmarks/llama_compare.py bench /tmp/mixtral-bench --llama-bin /tmp/llama/build/bin \\
        --threads 1 --rounds 3

Decode is llama-bench's tg64 (64 tokens generated after an empty context, mean tok/s) against
cogcore decoding 64 tokens one by one from an empty cache; prefill is pp512 against one
forward pass over 512 tokens. `--int8-activations` loads cogcore's quantized models with that
option (llama.cpp's own arithmetic). `make` needs torch and transformers (the `dev` extra does not
carry torch); llama.cpp's own tools come from a checkout / build outside this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "weights", "cogcore-tiny", "tokenizer.model")   # any sentencepiece model
SHAPE = dict(hidden_size=1024, intermediate_size=512, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=2, head_dim=128, num_local_experts=32, num_experts_per_tok=2,
             vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=1e6,
             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
PRECISIONS = ("f32", "q8_0", "q4_0")


def run(cmd: list[str], **kw) -> str:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True, errors="replace", **kw).stdout


def make(out: str, llama_src: str, llama_bin: str, seed: int) -> None:
    import torch
    import transformers

    hf = os.path.join(out, "hf")
    if not os.path.exists(os.path.join(hf, "model.safetensors")):
        torch.manual_seed(seed)
        model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**SHAPE)).float()
        model.save_pretrained(hf, safe_serialization=True)
        shutil.copy(TOKENIZER, os.path.join(hf, "tokenizer.model"))
    for qtype in ("q8_0", "q4_0"):
        dst = os.path.join(out, f"cogcore-{qtype}")
        if not os.path.exists(dst):
            run([sys.executable, "-m", "cogcore", "quantize", hf, dst, "--type", qtype])
    env = dict(os.environ, PYTHONPATH=os.path.join(llama_src, "gguf-py"))
    for outtype in ("f32", "q8_0"):
        dst = os.path.join(out, f"llama-{outtype}.gguf")
        if not os.path.exists(dst):
            run([sys.executable, os.path.join(llama_src, "convert_hf_to_gguf.py"), hf, "--outtype", outtype,
                 "--outfile", dst], env=env)
    dst = os.path.join(out, "llama-q4_0.gguf")
    if not os.path.exists(dst):
        # --pure: every tensor q4_0, as cogcore (by default llama-quantize writes output.weight as q6_K)
        run([os.path.join(llama_bin, "llama-quantize"), "--pure", os.path.join(out, "llama-f32.gguf"), dst, "q4_0"])


def llama_bench(out: str, llama_bin: str, precision: str, threads: int, prompt: int, gen: int, reps: int) -> float:
    """tok/s of llama-bench (mean of its `reps` repetitions)."""
    res = json.loads(run([os.path.join(llama_bin, "llama-bench"), "-m", os.path.join(out, f"llama-{precision}.gguf"),
                          "-t", str(threads), "-p", str(prompt), "-n", str(gen), "-r", str(reps), "-o", "json"]))
    return float(res[0]["avg_ts"])


def cogcore_bench(model, prompt: int, gen: int, reps: int) -> float:
    """tok/s of cogcore: the mean over `reps` of `gen` single-token steps from an empty cache, or of one
    forward pass over `prompt` tokens."""
    import numpy as np

    ids = np.random.default_rng(0).integers(3, model.config.vocab_size, max(prompt, gen))
    rates = []
    for _ in range(reps):
        cache = model.new_cache()
        t = time.perf_counter()
        if prompt:
            model.forward(ids[:prompt], cache, last_only=True)     # as llama-bench: logits of the last token
        else:
            for i in range(gen):
                model.forward(ids[i:i + 1], cache)
        rates.append((prompt or gen) / (time.perf_counter() - t))
    return statistics.mean(rates)


def bench(out: str, llama_bin: str, threads: int, rounds: int, reps: int, precisions, tests,
          int8_activations: bool = False) -> None:
    import cogcore
    from cogcore.backends import NumbaOps
    from cogcore.kernels.threads import set_threads

    set_threads(threads)
    NumbaOps.warm_up()
    models = {p: cogcore.load(os.path.join(out, "hf" if p == "f32" else f"cogcore-{p}"),
                              int8_activations=int8_activations) for p in precisions}
    for m in models.values():
        cogcore_bench(m, 0, 4, 1)                    # first touch of the memory-mapped weights
    figures: dict[tuple, list[tuple[float, float]]] = {}
    for r in range(rounds):
        for p in precisions:
            for prompt, gen in tests:
                name = f"pp{prompt}" if prompt else f"tg{gen}"
                ll = llama_bench(out, llama_bin, p, threads, prompt, gen, reps)
                cc = cogcore_bench(models[p], prompt, gen, reps)
                figures.setdefault((p, name), []).append((cc, ll))
                print(f"round {r + 1} {p:5s} {name:6s} t={threads}: cogcore {cc:8.1f} tok/s  llama.cpp {ll:8.1f} tok/s"
                      f"  ratio {cc / ll:.2f}", flush=True)
    print(f"\nthreads {threads}, {rounds} rounds, each figure the mean of {reps} repetitions"
          f"{', cogcore with --int8-activations' if int8_activations else ''}; medians:")
    print(f"| precision | test | cogcore tok/s | llama.cpp tok/s | cogcore / llama.cpp (median of per-round ratios) |")
    print("|---|---|---|---|---|")
    for (p, name), pairs in figures.items():
        cc, ll = statistics.median(c for c, _ in pairs), statistics.median(l for _, l in pairs)
        ratio = statistics.median(c / l for c, l in pairs)
        print(f"| {p} | {name} | {cc:.1f} | {ll:.1f} | {ratio:.2f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="write the HF model, its cogcore and GGUF quantizations")
    mk.add_argument("dir")
    mk.add_argument("--llama-src", required=True, help="llama.cpp checkout (convert_hf_to_gguf.py, gguf-py)")
    mk.add_argument("--llama-bin", required=True, help="folder with llama-quantize and llama-bench")
    mk.add_argument("--seed", type=int, default=0)
    bn = sub.add_parser("bench", help="llama-bench and cogcore, alternating")
    bn.add_argument("dir")
    bn.add_argument("--llama-bin", required=True)
    bn.add_argument("--threads", type=int, default=1)
    bn.add_argument("--rounds", type=int, default=3)
    bn.add_argument("--reps", type=int, default=3, help="repetitions inside each figure")
    bn.add_argument("--precision", action="append", choices=PRECISIONS)
    bn.add_argument("--prefill", type=int, default=512, help="prompt length of the prefill test (0: none)")
    bn.add_argument("--int8-activations", action="store_true",
                    help="cogcore rounds the activations to q8_0 blocks and uses integer dots, as llama.cpp")
    args = ap.parse_args(argv)
    if args.cmd == "make":
        make(args.dir, args.llama_src, args.llama_bin, args.seed)
    else:
        tests = [(0, 64)] + ([(args.prefill, 0)] if args.prefill else [])
        bench(args.dir, args.llama_bin, args.threads, args.rounds, args.reps, args.precision or PRECISIONS, tests,
              args.int8_activations)


if __name__ == "__main__":
    main()
