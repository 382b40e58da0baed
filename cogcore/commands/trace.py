"""Run one prompt and record what each layer did: router choices, NSA selections and gates,
RWKV-7 decay and state, attention weights (see docs/tour.md).

Writes DIR/trace.safetensors and DIR/trace.json (read them back with
`cogcore.trace.load(DIR)`), and with --plot the figures of cogcore/trace_plots.py
(needs matplotlib: pip install 'cogcore[viz]').
"""

import sys

from ..cli import add_model_argument, load_model


def add_arguments(p):
    add_model_argument(p)
    p.add_argument("prompt", metavar="PROMPT", help="the text to run (BOS is prepended, as `generate` does)")
    p.add_argument("--out", metavar="DIR", required=True, help="directory for the trace (made if needed)")
    p.add_argument("--plot", action="store_true", help="also draw the figures into DIR")


def run(args):
    from .. import trace
    from ..errors import InputError
    if not args.prompt:
        raise InputError("PROMPT: expected some text, found an empty string")
    if args.plot:
        from .. import trace_plots
        trace_plots._pyplot()          # fail before the pass, not after it
    model = load_model(args)
    tr = trace.record(model, args.prompt)
    paths = trace.save(tr, args.out)
    if args.plot:
        paths += trace_plots.plot_all(tr, args.out)
    guesses = ", ".join(f"{piece!r} {p:.1%}" for piece, p in tr.top_next[:3])
    print(f"{tr.T} tokens through {len(tr.layers)} layers; next token: {guesses}")
    for path in paths:
        print(path)
    sys.stdout.flush()
