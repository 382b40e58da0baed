"""Chat with the model: each line read from stdin gets a streamed reply; the cache is kept between turns.

Works with a terminal or a pipe; end of input (Ctrl-D) ends the chat. A line
`/reset` starts a fresh conversation; empty lines are skipped. With --history keep,
each turn is fed as `[bos] + sp.encode(line)` after the previous turn (closed with
EOS), so the model sees the whole conversation; with --history reset, each line is
answered on its own, as `generate` would. The default is the model's choice (the
`chat_history` key of generation_config.json; the shipped model, trained on one
question per sequence, says reset), else keep. A conversation that outgrows the
context starts afresh, with a notice; a line that cannot be answered gets an error
on stderr and the chat goes on. Sampling options as for `generate`; with --prompt-cache
DIR the conversation's cache lives in that store (a later chat that starts the same way
resumes from it). A model whose tokenizer_config.json has a chat template (a public
family's) is fed the conversation as that template renders it
(`cogcore.chat_template.TemplateChat`), with the same history policies and --prompt-cache
(each turn is then the whole rendered conversation, restored from the store as far as
it holds it).
"""

import sys

from ..cli import add_model_argument, load_model
from ..errors import InputError
from .generate import (add_sampling_arguments, lenient_stdin, open_prompt_cache, print_stats,
                       report_context_full, sampling_options)


def add_arguments(p):
    add_model_argument(p)
    add_sampling_arguments(p)
    p.add_argument("--speed", action="store_true", help="print each turn's speed to stderr")
    p.add_argument("--history", choices=("keep", "reset"), default=None,
                   help="keep the conversation in the cache between turns, or answer each line on its own "
                        "(default: the model's generation_config.json chat_history, else keep)")


def run(args):
    from ..generate import Conversation
    from ..chat_template import TemplateChat
    model = load_model(args)
    template = getattr(model.tokenizer, "chat_template", None)   # no tokenizer: fails before reading input
    kind = TemplateChat if template else Conversation
    chat = kind(model, stats=args.stats, history=args.history, prompt_cache=open_prompt_cache(args, model),
                **sampling_options(args))
    stdin = lenient_stdin()
    tty = stdin.isatty()
    while True:
        if tty:
            print("> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
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
        try:
            reply = chat.send(line)
        except InputError as e:              # this line cannot be answered (too long, not UTF-8): say so, go on
            print(f"cogcore chat: error: {e}", file=sys.stderr)
            continue
        if chat.notice:
            print(f"({chat.notice})", file=sys.stderr)
        for piece in reply:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        if args.speed:
            print(reply.result.speed_line(), file=sys.stderr)
        report_context_full(reply.result, model)
        if args.stats:
            print_stats(reply.result)
