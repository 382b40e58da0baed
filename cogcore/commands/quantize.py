"""Quantize a model directory's linear weights to GGML q8_0 or q4_0 blocks (docs/format.md).

Tensor by tensor from the memory-mapped input, so the peak memory is far below the
model's size; written to OUT_DIR.partial and renamed at the end, so an interrupted
run leaves nothing half-written.
"""

import time
from collections import Counter

from ..quant import QTYPES
from ..quantizer import quantize
from .init import progress_printer


def add_arguments(p):
    p.add_argument("in_dir", metavar="IN_DIR", help="a float model directory")
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (must be new or empty)")
    p.add_argument("--type", dest="qtype", choices=QTYPES, default="q4_0", help="block format (default q4_0)")
    p.add_argument("--tensor-type", dest="tensor_types", action="append", default=[], metavar="PATTERN=TYPE",
                   help="write the tensors whose name matches the regex PATTERN as TYPE (q8_0, q4_0, "
                        "float32, float16, bfloat16) instead; repeatable, the first match wins "
                        "(e.g. --tensor-type embed=q8_0 --tensor-type 'self_attn=bfloat16')")


def run(args):
    start = time.perf_counter()
    chosen = quantize(args.in_dir, args.out_dir, args.qtype, progress=progress_printer(start),
                      tensor_types=args.tensor_types)
    counts = ", ".join(f"{n} {kind}" for kind, n in Counter(chosen.values()).most_common())
    print(f"wrote {args.out_dir}: {len(chosen)} tensors: {counts} ({time.perf_counter() - start:.1f} s)")
