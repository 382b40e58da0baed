"""Convert a model directory to another format: `--to gguf` writes llama.cpp's GGUF (docs/gguf.md).

IN_DIR is a Hugging Face directory of a family GGUF has an architecture for (llama, mixtral,
qwen2, qwen3, qwen2_moe, qwen3_moe, olmoe), float or quantized by `cogcore quantize`; its
tensors keep their types (q8_0 / q4_0 blocks unchanged). Written under a temporary name
and renamed at the end, so an interrupted run leaves nothing half-written.
"""

import time

from ..gguf_export import export_gguf
from .init import progress_printer


def add_arguments(p):
    p.add_argument("--to", choices=("gguf",), required=True, help="output format (gguf)")
    p.add_argument("in_dir", metavar="IN_DIR", help="a model directory")
    p.add_argument("out", metavar="OUT", help="the file to write (e.g. model.gguf)")


def run(args):
    start = time.perf_counter()
    types = export_gguf(args.in_dir, args.out, progress=progress_printer(start))
    counts = {}
    for kind in types.values():
        counts[kind] = counts.get(kind, 0) + 1
    shown = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    print(f"wrote {args.out}: {len(types)} tensors ({shown}) in {time.perf_counter() - start:.1f} s")
