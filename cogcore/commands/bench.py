"""Kernel and model speed: numba against numpy, and against this machine's measured limits.

Measures, in one run: read bandwidth and sgemm FLOP/s of this machine; each kernel
against its NumPy twin; decode of an 8-layer 1024-wide hybrid MoE as a fraction of the
memory-bandwidth bound; prefill as a fraction of sgemm; sparse against full attention
decode at long context. Medians of repeated timings; compilation reported separately.
"""

import os

from ..bench import PRECISIONS, SECTIONS
from ..errors import InputError
from ..gguf_model import is_gguf


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions (about a minute)")
    p.add_argument("--only", action="append", choices=SECTIONS, metavar="NAME",
                   help=f"run only this section (repeatable): {', '.join(SECTIONS)} (limits always run)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for the kernels and for BLAS (default: numba's default, all cores)")
    p.add_argument("--dtype", action="append", choices=("float32", "bfloat16", "float16", "q8_0", "q4_0"),
                   metavar="TYPE",
                   help=f"storage type of the whole-model benchmark (repeatable; default: {', '.join(PRECISIONS)})")
    p.add_argument("--model", action="append", default=[], metavar="DIR",
                   help="also time decode of this model directory, e.g. one made by `cogcore init --preset 4b` "
                        "(repeatable)")
    p.add_argument("--context", type=int, default=16384, help="context of the sparse-vs-full comparison")
    p.add_argument("--prefill", type=int, default=2048, help="prefill length of the model benchmark")
    p.add_argument("--int8-activations", action="store_true",
                   help="whole model: q8_0/q4_0 weights dotted with activations rounded to q8_0 blocks")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")


def check_args(args) -> None:
    """Refuse bad --threads and an unwritable --json now, not after minutes of measuring."""
    import numba
    cores = numba.config.NUMBA_NUM_THREADS
    if args.threads is not None and not 1 <= args.threads <= cores:
        raise InputError(f"--threads: expected 1..{cores} (the threads numba can use here), found {args.threads}")
    for name in ("context", "prefill"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name}: expected an integer >= 1, found {getattr(args, name)}")
    for path in args.model:
        if not (os.path.isdir(path) or is_gguf(path)):
            found = "a file" if os.path.exists(path) else "nothing"
            raise InputError(f"--model {path}: expected a model directory or GGUF file, found {found}")
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if os.path.isdir(args.json):
            raise InputError(f"--json {args.json}: expected a file name, found a directory")
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise InputError(f"--json {args.json}: cannot write there ({folder} is not a writable directory)")


def run(args):
    from ..bench import run as bench
    from ..tensorfile import write_json
    check_args(args)
    rep = bench(only=args.only, quick=args.quick, threads=args.threads, precisions=args.dtype or PRECISIONS,
                context=args.context, prefill_len=args.prefill, model_dirs=args.model,
                int8_activations=args.int8_activations)
    if args.json:
        write_json(args.json, {"facts": rep.facts,
                               "rows": [{"section": r.section, "name": r.name, "numba_s": r.numba,
                                         "numpy_s": r.numpy, "note": r.note} for r in rep.rows]})
    return 0
