"""Show a model directory (or GGUF file): its config, parameter counts (total and active per token), and tensors.

Each tensor's storage format (F32, F16, BF16, q8_0, q4_0), its bytes, and the bytes a
decoded token reads from it: one row of the embedding (all of it when tied to lm_head),
k of E experts of a stacked expert tensor, all of any other tensor.
"""

import json
import os

import numpy as np

from ..config import Config
from ..dtypes import tag
from ..gguf_model import is_gguf, read_gguf
from ..model import check_model_dir, decode_bytes, parameter_counts
from ..quant import QuantTensor
from ..tensorfile import read_model_tensors


def add_arguments(p):
    p.add_argument("model_dir", metavar="DIR", help="model directory (or GGUF file)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def run(args):
    if is_gguf(args.model_dir):
        cfg, tensors, origin = read_gguf(args.model_dir)
    else:
        cfg = Config.from_file(os.path.join(check_model_dir(args.model_dir), "config.json"))
        tensors, origin = read_model_tensors(args.model_dir)
    counts = parameter_counts(cfg)
    on_disk = sum(a.nbytes for a in tensors.values())
    rows = [(name, a.qtype if isinstance(a, QuantTensor) else tag(a), list(a.shape), int(np.prod(a.shape)),
             os.path.basename(origin[name]), a.nbytes, decode_bytes(name, a, cfg))
            for name, a in tensors.items()]
    per_token = sum(r[-1] for r in rows)
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "parameters": counts, "bytes": on_disk,
                          "bytes_per_token": per_token,
                          "tensors": [dict(zip(("name", "dtype", "shape", "numel", "file", "bytes",
                                                "bytes_per_token"), r)) for r in rows]}, indent=2))
        return
    print(f"# {args.model_dir}\n\n## config")
    for key, value in cfg.to_dict().items():
        print(f"  {key:34s} {json.dumps(value)}")
    print("\n## parameters")
    print(f"  total                              {counts['total']:>15,}")
    print(f"  active per token                   {counts['active']:>15,}   "
          f"(routed experts: {cfg.num_experts_per_tok} of {cfg.num_experts})" if cfg.num_experts else
          f"  active per token                   {counts['active']:>15,}")
    print(f"  active per token, no embeddings    {counts['active_non_embedding']:>15,}")
    print(f"  weights on disk                    {on_disk:>15,} bytes")
    print(f"  weights read per decoded token     {per_token:>15,} bytes")
    print(f"\n## tensors ({len(rows)}): name, format, shape, parameters, bytes, bytes read per token, file")
    width = max(len(r[0]) for r in rows)
    for name, dtype, shape, numel, file, nbytes, read in rows:
        print(f"  {name:{width}s}  {dtype:4s}  {str(shape):18s} {numel:>13,} {nbytes:>14,} {read:>14,}  {file}")


