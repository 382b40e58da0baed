"""The `cogcore` command line (SPEC Section 7). Each subcommand lives in cogcore/commands/.

A CogcoreError ends the program with one line on stderr and exit status 1, never a
traceback; Ctrl-C ends it with status 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import time

from .errors import CogcoreError

COMMANDS = ("generate", "chat", "cache", "serve", "eval", "trace", "inspect", "init", "quantize", "convert", "bench")
# The shipped model: in a checkout (or editable install) under weights/, in a wheel install
# under <prefix>/share/cogcore/ (pyproject's data-files). The first that exists is the default.
MODEL_PLACES = (os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "cogcore-tiny"),
                os.path.join(sys.prefix, "share", "cogcore", "cogcore-tiny"))
DEFAULT_MODEL = next((p for p in MODEL_PLACES if os.path.isdir(p)), MODEL_PLACES[0])


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C so that half-written files are removed on the way out."""


def _on_sigterm(signum, frame):
    # Raised wherever the main thread is. If that is inside a __del__ (Python only prints
    # exceptions raised there and carries on), the work would run to its end: so ask again
    # every 0.2 s (SIGALRM, same handler) until one lands.
    signal.signal(signal.SIGALRM, _on_sigterm)
    signal.setitimer(signal.ITIMER_REAL, 0.2, 0.2)
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    on_main_thread = threading.current_thread() is threading.main_thread()   # where signals can be set
    if on_main_thread:
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGALRM)}
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.run(args) or 0
    except CogcoreError as e:
        print(f"cogcore {args.command}: error: {e}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"\ncogcore {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"\ncogcore {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        if on_main_thread:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """--model DIR (default: the model shipped in weights/) and --backend."""
    parser.add_argument("--model", metavar="DIR", default=DEFAULT_MODEL,
                        help=f"model directory or GGUF file (default: the shipped model, {DEFAULT_MODEL})")
    parser.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                        help="numba (compiled, default) or numpy (the reference)")
    parser.add_argument("--int8-activations", action="store_true",
                        help="q8_0/q4_0 weights: round the activations to q8_0 blocks and use integer dots, "
                             "as llama.cpp does (faster; not the float path, see docs/quantization.md)")


def load_model(args):
    """The model named by --model, with a clear error when the shipped one is not there."""
    from .model import load
    from .ops import Compiled
    if args.model == DEFAULT_MODEL and not os.path.isdir(DEFAULT_MODEL):
        raise CogcoreError(f"no model given and the shipped model was not found (looked in "
                           f"{' and '.join(MODEL_PLACES)}); pass --model DIR (e.g. one made by "
                           f"`cogcore init --preset tiny DIR`)")
    model = load(args.model, backend=args.backend, int8_activations=args.int8_activations)
    if isinstance(model.ops, Compiled):   # compile (or load) the kernels now, so speeds reported later exclude it
        notice = threading.Timer(5.0, print, ("cogcore: compiling the kernels (once per install; "
                                              "about a minute)...",), {"file": sys.stderr, "flush": True})
        notice.start()           # says so only when loading from numba's cache takes long: a first run
        start = time.perf_counter()
        try:
            model.ops.warm_up(quantized=model.weights.quantized, stored=model.weights.float_dtypes)
            cache = model.new_cache()   # this model's own dtypes and shapes: a prefill chunk, a decode step
            bos = model.config.bos_token_id
            model.forward([bos, bos], cache)
            model.forward([bos], cache)
        finally:
            notice.cancel()
        seconds = time.perf_counter() - start
        if seconds > 5.0:   # loading them from numba's cache takes a second or two
            print(f"cogcore: kernels compiled in {seconds:.1f} s (cached for next time)", file=sys.stderr)
    return model
