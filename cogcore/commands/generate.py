"""Continue a prompt with the model, printing the text as it is generated.

The continuation streams to stdout; at the end the prompt and generation speeds
(tokens per second) go to stderr. With --prompt-cache DIR the longest prefix of the
prompt computed before is restored from DIR and only the rest is computed. Generation stops at EOS, at a newline (unless
--multiline), at a --stop string, or after --max-new-tokens. Sampling options left
out come from the model's generation_config.json, else greedy decoding.
"""

import argparse
import sys

from ..cli import add_model_argument, load_model


def add_sampling_arguments(p):
    """The sampling options shared by `generate` and `chat` (None: generation_config.json or default)."""
    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--max-new-tokens", type=int, default=None, metavar="N",
                   help="most tokens to generate (default 64)")
    g.add_argument("-t", "--temperature", type=float, default=None, metavar="T",
                   help="0 = greedy (default), otherwise sample from softmax(logits / T)")
    g.add_argument("--top-k", type=int, default=None, metavar="K", help="keep the K most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="keep the smallest set of tokens with mass >= P, in (0, 1] (1 = off)")
    g.add_argument("--min-p", type=float, default=None, metavar="M",
                   help="keep tokens with probability >= M * the top one (0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=None, metavar="R",
                   help="CTRL-style penalty on tokens already seen (1 = off)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default 0; -1 = unseeded)")
    g.add_argument("--stop", action="append", default=None, metavar="STR",
                   help="also stop when the text contains STR (repeatable; escapes like \\n are read)")
    g.add_argument("--multiline", action="store_true", help="do not stop at a newline")
    g.add_argument("--prefill-chunk", type=int, default=None, metavar="N",
                   help="feed the prompt N tokens at a time (default 256)")
    g.add_argument("--stats", action="store_true",
                   help="also print tokens per expert for each MoE layer to stderr")
    g.add_argument("--prompt-cache", metavar="DIR", default=None,
                   help="restore the longest prefix of the prompt computed before from DIR, and store "
                        "what is computed now there (made by `cogcore cache` or earlier runs)")
    g.add_argument("--prompt-cache-bytes", type=parse_size, default=2**30, metavar="BYTES",
                   help="most bytes the prompt-cache directory may hold, least recently used files "
                        "dropped first (default 1G; suffixes K, M, G)")


def parse_size(text: str) -> int:
    """'1G', '512M', '100000' -> bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    try:
        return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1:].upper() in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 1G, 512M or 100000, found {text!r}") from None


def open_prompt_cache(args, model):
    """The PromptCache named by --prompt-cache, or None."""
    if args.prompt_cache is None:
        return None
    from ..prompt_cache import PromptCache
    return PromptCache(model, max_bytes=args.prompt_cache_bytes, directory=args.prompt_cache)


def sampling_options(args) -> dict:
    """The keyword options of cogcore.generate.stream from parsed arguments."""
    stop = None
    if args.stop or args.multiline:
        stop = [] if args.multiline else ["\n"]
        stop += [_unescape(s) for s in args.stop or ()]
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed, stop=stop, prefill_chunk=args.prefill_chunk)


def _unescape(s: str) -> str:
    """Read the escapes \\n, \\t, \\r and \\\\ in a --stop value (other text stays as it is)."""
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in "ntr\\":
            out.append({"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[s[i + 1]])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def print_stats(result, file=None):
    """Tokens routed to each expert, per MoE layer, over the whole generation (to stderr)."""
    file = file or sys.stderr   # looked up now, not at import: tests and callers may swap it
    stats = result.stats
    for layer, counts in sorted(stats.expert_counts.items()):
        print(f"layer {layer} tokens per expert: {' '.join(str(int(c)) for c in counts)}", file=file)
    for layer, kept in sorted(stats.selected_blocks.items()):
        last = kept[-1] if len(kept) else []
        shown = "; ".join(" ".join(str(b) for b in row if b >= 0) for row in last)
        print(f"layer {layer} blocks selected by the last query (per kv head): {shown}", file=file)


def report_context_full(result, model, file=None) -> None:
    """Say plainly, on stderr, when a reply was cut because the context is full."""
    if result.finish_reason == "context":
        print(f"cogcore: the reply stopped after {len(result.token_ids)} tokens because the model's context "
              f"of {model.config.max_position_embeddings} positions is full", file=file or sys.stderr)


def lenient_stdin():
    """sys.stdin, with bytes that are not UTF-8 read as lone surrogates (as Python does for argv):
    the tokenizer then reports them as an InputError naming the character, not a decoding traceback."""
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    return sys.stdin


def add_arguments(p):
    add_model_argument(p)
    p.add_argument("prompt", metavar="PROMPT", help="the text to continue ('-' reads it from stdin)")
    add_sampling_arguments(p)


def run(args):
    from ..generate import stream
    prompt = args.prompt
    if prompt == "-":   # drop the newline that ends the input (echo adds one): it is no part of the question
        prompt = lenient_stdin().read().rstrip("\r\n")
    model = load_model(args)
    s = stream(model, prompt, stats=args.stats, prompt_cache=open_prompt_cache(args, model),
               **sampling_options(args))
    for piece in s:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    result = s.result
    print(result.speed_line(), file=sys.stderr)
    report_context_full(result, model)
    if args.stats:
        print_stats(result)
    return 0
