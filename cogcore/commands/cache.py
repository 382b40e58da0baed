"""Precompute the prompt cache of a fixed context (a document, a system prompt) into a directory.

The text (from --file, or the TEXT argument, or '-' for stdin) is encoded as a prompt
(`[bos] + sp.encode(text)`), prefilled with progress on stderr, and stored in DIR; a
later `cogcore generate --prompt-cache DIR` whose prompt starts with the same text
then computes only what follows it. Without any text, lists what DIR holds.
"""

import sys
import time

from ..cli import add_model_argument, load_model
from ..errors import InputError
from .generate import parse_size


def add_arguments(p):
    add_model_argument(p)
    p.add_argument("directory", metavar="DIR", help="the prompt-cache directory (made if missing)")
    p.add_argument("text", metavar="TEXT", nargs="?", default=None, help="the context ('-' reads stdin)")
    p.add_argument("--file", metavar="PATH", default=None, help="read the context from a UTF-8 text file")
    p.add_argument("--prefill-chunk", type=int, default=256, metavar="N", help="tokens per forward call")
    p.add_argument("--prompt-cache-bytes", type=parse_size, default=2**30, metavar="BYTES",
                   help="most bytes DIR may hold (default 1G; suffixes K, M, G)")


def run(args):
    from ..generate import encode_prompt
    from ..prompt_cache import PromptCache
    if args.file is not None and args.text is not None:
        raise InputError("give the context as TEXT or --file, not both")
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{args.file}: expected a readable UTF-8 text file, found: {e}") from None
    else:
        text = sys.stdin.read() if args.text == "-" else args.text
    model = load_model(args)
    pc = PromptCache(model, max_bytes=args.prompt_cache_bytes, directory=args.directory)
    if text is None:
        for entry in pc.entries.values():
            print(f"{len(entry.tokens)} tokens, {len(entry.checkpoints)} checkpoints, "
                  f"{entry.nbytes / 2**20:.1f} MiB: {entry.path}")
        print(f"{len(pc)} entries, {pc.nbytes / 2**20:.1f} MiB", file=sys.stderr)
        return 0
    ids = encode_prompt(model, text)
    start = time.perf_counter()
    last = [0.0]

    start_of_line = "\r" if sys.stderr.isatty() else ""

    def progress(done, total):   # at most once a second: one line rewritten on a terminal, else lines
        now = time.perf_counter()
        if now - last[0] >= 1.0 or done == total:
            last[0] = now
            end = "" if start_of_line and done < total else "\n"
            print(f"{start_of_line}prefill: {done}/{total} tokens ({100 * done / total:.0f} %), "
                  f"{now - start:.1f} s", end=end, file=sys.stderr, flush=True)

    _, _, restored, _ = pc.prefill(ids, args.prefill_chunk, progress=progress)
    seconds = time.perf_counter() - start
    print(f"stored {len(ids)} tokens in {args.directory} ({restored} restored, {len(ids) - restored} "
          f"computed in {seconds:.2f} s); the store holds {len(pc)} entries, {pc.nbytes / 2**20:.1f} MiB",
          file=sys.stderr)
    return 0
