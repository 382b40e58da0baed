"""Write a randomly initialised model of a named shape (config.json + model.safetensors).

Presets: tiny (tests) and 4b (benchmarks; about 8 GB in bfloat16, 2.3 GB with --type q4_0:
the linear weights written straight as GGML blocks, with no float copy). Written one tensor
at a time to a temporary file that is renamed at the end, so it needs little memory
and an interrupted run leaves no half-written model.
"""

import sys
import time

from ..config import PRESETS, preset
from ..create import DTYPE_TAGS, init_model
from ..model import parameter_counts
from ..quant import QTYPES


def add_arguments(p):
    p.add_argument("--preset", required=True, choices=sorted(PRESETS), help="named shape (SPEC Section 8)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (created if needed)")
    p.add_argument("--dtype", choices=sorted(DTYPE_TAGS), default=None,
                   help="storage dtype (default: float32 for tiny, bfloat16 for 4b)")
    p.add_argument("--type", dest="qtype", choices=QTYPES, default=None,
                   help="write the linear weights quantized (q8_0 or q4_0), the rest in --dtype")
    p.add_argument("--seed", type=int, default=0)


def progress_printer(start: float):
    """progress(done_bytes, total_bytes), printing at most once a second: big models take minutes."""
    last = start

    def progress(done, total):
        nonlocal last
        now = time.perf_counter()
        if now - last >= 1.0 or done == total:
            last = now
            end = "\r" if sys.stderr.isatty() and done < total else "\n"
            print(f"  {done / 2**20:,.0f} / {total / 2**20:,.0f} MiB  ({now - start:.0f} s)",
                  end=end, file=sys.stderr, flush=True)
    return progress


def run(args):
    cfg = preset(args.preset)
    dtype = args.dtype or ("bfloat16" if args.preset == "4b" else "float32")
    counts = parameter_counts(cfg)
    kind = f"{args.qtype} (other tensors {dtype})" if args.qtype else dtype
    print(f"cogcore init: preset {args.preset}, {counts['total']:,} parameters, {kind}, seed {args.seed}")
    start = time.perf_counter()
    init_model(args.out_dir, cfg, dtype=dtype, seed=args.seed, progress=progress_printer(start),
               qtype=args.qtype)
    print(f"wrote {args.out_dir}/config.json and model.safetensors in {time.perf_counter() - start:.1f} s")
