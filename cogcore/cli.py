"""The `cogcore` command line (SPEC Section 7). Each subcommand lives in cogcore/commands/.

A CogcoreError ends the program with one line on stderr and exit status 1, never a
traceback; Ctrl-C ends it with status 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import CogcoreError

COMMANDS = ("generate", "chat", "eval", "inspect", "init", "bench")
DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "weights", "cogcore-tiny")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cogcore", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"cogcore.commands.{name}")
        p = sub.add_parser(name, help=module.__doc__.strip().split("\n")[0],
                           description=module.__doc__.strip())
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except CogcoreError as e:
        print(f"cogcore {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ncogcore {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """--model DIR (default: the model shipped in weights/) and --backend."""
    parser.add_argument("--model", metavar="DIR", default=DEFAULT_MODEL,
                        help=f"model directory (default: the shipped model, {DEFAULT_MODEL})")
    parser.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                        help="numba (compiled, default) or numpy (the reference)")


def load_model(args):
    """The model named by --model, with a clear error when the shipped one is not there."""
    from .model import load
    from .ops import Compiled
    if args.model == DEFAULT_MODEL and not os.path.isdir(DEFAULT_MODEL):
        raise CogcoreError(f"no model given and the shipped model was not found at {DEFAULT_MODEL}; "
                           f"pass --model DIR (e.g. one made by `cogcore init --preset tiny DIR`)")
    model = load(args.model, backend=args.backend)
    if isinstance(model.ops, Compiled):   # compile (or load) the kernels now, so speeds reported later exclude it
        seconds = model.ops.warm_up()
        if seconds > 1.0:
            print(f"cogcore: kernels compiled in {seconds:.1f} s (cached for next time)", file=sys.stderr)
    return model
