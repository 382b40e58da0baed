"""Chat with the model: each line read from stdin gets a streamed reply; the cache is kept between turns.

Works with a terminal or a pipe; end of input (Ctrl-D) ends the chat. A line
`/reset` starts a fresh conversation; empty lines are skipped. Each turn is fed as
`[bos] + sp.encode(line)` after the previous turn (closed with EOS), so the model
sees the whole conversation. Sampling options as for `generate`; with --prompt-cache DIR
the conversation's cache lives in that store (a later chat that starts the same way
resumes from it).
"""

import sys

from ..cli import add_model_argument, load_model
from .generate import add_sampling_arguments, open_prompt_cache, print_stats, sampling_options


def add_arguments(p):
    add_model_argument(p)
    add_sampling_arguments(p)
    p.add_argument("--speed", action="store_true", help="print each turn's speed to stderr")


def run(args):
    from ..generate import Conversation
    model = load_model(args)
    _ = model.tokenizer                      # a model without tokenizer fails before reading input
    chat = Conversation(model, stats=args.stats, prompt_cache=open_prompt_cache(args, model),
                        **sampling_options(args))
    tty = sys.stdin.isatty()
    while True:
        if tty:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:                         # EOF
            if tty:
                print(file=sys.stderr)
            return 0
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if line.strip() == "/reset":
            chat.reset()
            print("(conversation reset)", file=sys.stderr)
            continue
        reply = chat.send(line)
        for piece in reply:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        if args.speed:
            print(reply.result.speed_line(), file=sys.stderr)
        if args.stats:
            print_stats(reply.result)
