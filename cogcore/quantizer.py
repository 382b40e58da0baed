"""Quantizing a model directory (`cogcore quantize`, `cogcore.quantize`), tensor by tensor.

The input stays memory-mapped; each tensor is widened, quantized and written in
chunks of rows, so the peak memory is a few chunks, not the model. The output is
written into a temporary directory beside OUT_DIR and renamed at the end: an
interrupted run leaves no half-written model.

Every tensor that `quant.quantizable` picks gets the one block format asked for,
unless a `PATTERN=TYPE` rule (llama-quantize's `--tensor-type`) names another for
it: a block format, or a float dtype for a mixed-precision model (docs/quantization.md).
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Callable

import numpy as np

from .config import Config
from .dtypes import DTYPE_TAGS, f32, tag, to_storage
from .errors import WeightsError
from .families import family_of
from .families.hf import cogcore_name
from .quant import QTYPES, QuantTensor, check_qtype, describe_entries, packed_shape, quantizable, quantize_tensor
from .tensorfile import read_model_tensors, write_safetensors

CHUNK_VALUES = 1 << 22           # float32 values widened and quantized at a time (16 MiB)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def quantized_source(name: str, shape: tuple[int, ...], qtype: str,
                     rows_of: Callable[[int, int], np.ndarray]):
    """A lazy tensor for write_safetensors: ("U8", packed shape, make) quantizing chunks of rows.

    `rows_of(r0, r1)` gives rows r0:r1 of the tensor seen as [rows, cols], as float32.
    """
    cols = shape[-1]
    rows = int(np.prod(shape[:-1]))
    step = max(1, CHUNK_VALUES // max(1, cols))

    def make():
        out = np.empty((rows, packed_shape(shape, qtype)[-1]), np.uint8)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            out[r0:r1] = quantize_tensor(rows_of(r0, r1), qtype, name).data
        return out.reshape(packed_shape(shape, qtype))
    return "U8", packed_shape(shape, qtype), make


def parse_tensor_types(rules: list[str] | tuple[str, ...]) -> list[tuple[re.Pattern, str]]:
    """`PATTERN=TYPE` strings -> (compiled regex, type); TYPE a block format or a float dtype."""
    parsed = []
    for rule in rules:
        pattern, sep, kind = rule.rpartition("=")
        if not sep or not pattern or kind not in (*QTYPES, *DTYPE_TAGS):
            raise WeightsError(f"tensor type rule {rule!r}: expected PATTERN=TYPE with TYPE one of "
                               f"{', '.join((*QTYPES, *DTYPE_TAGS))}")
        try:
            parsed.append((re.compile(pattern), kind))
        except re.error as e:
            raise WeightsError(f"tensor type rule {rule!r}: the pattern is not a regular expression ({e})") from None
    return parsed


def tensor_type(name: str, role: str, shape: tuple[int, ...], qtype: str,
                rules: list[tuple[re.Pattern, str]]) -> str | None:
    """The format tensor `name` (cogcore name `role`) is written in: the first rule whose pattern
    is found in the name, else `qtype` for the tensors `quantizable` picks; None keeps it as stored."""
    for pattern, kind in rules:
        if pattern.search(name):
            if kind in QTYPES and not quantizable(role, shape):
                raise WeightsError(f"tensor '{name}' {list(shape)}: rule '{pattern.pattern}={kind}' asks to "
                                   f"quantize a tensor cogcore keeps float (see cogcore.quant.quantizable)")
            return kind
    return qtype if quantizable(role, shape) else None


def quantize(in_dir: str | os.PathLike, out_dir: str | os.PathLike, qtype: str = "q4_0",
             progress: Callable[[int, int], None] | None = None,
             tensor_types: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """Write a copy of the model in `in_dir` with its linear weights quantized to `qtype`.

    tensor_types: `PATTERN=TYPE` rules, the first match (re.search on the tensor name)
    wins: TYPE is q8_0 / q4_0 (for a tensor `quantizable` picks) or float32 / float16 /
    bfloat16 (any tensor), e.g. ["experts=q8_0", ".=bfloat16"].
    Returns {tensor name: "q8_0" / "q4_0" / the float dtype tag it has}. The other
    files of the directory (config, tokenizer, generation config) are copied.
    `progress(bytes_written, bytes_total)` is called per tensor.
    """
    check_qtype(qtype)
    rules = parse_tensor_types(tensor_types)
    in_dir, out_dir = os.fspath(in_dir), os.fspath(out_dir)
    family = family_of(Config.from_file(os.path.join(in_dir, "config.json")))   # a valid model, before any work
    tensors, origin = read_model_tensors(in_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise WeightsError(f"{out_dir}: expected a new or empty directory, found an existing "
                           f"{'directory with files' if os.path.isdir(out_dir) else 'file'}")
    lazy, chosen = {}, {}
    for name, a in tensors.items():
        if isinstance(a, QuantTensor):
            raise WeightsError(f"{origin[name]}: tensor '{name}' is already {a.qtype}: quantize a float model")
        role = cogcore_name(family, name) if family else name      # a public family's router is a router
        kind = tensor_type(name, role, a.shape, qtype, rules)
        if kind in QTYPES and any(re.search(p, role) for p, _ in getattr(family, "VIEWS", ())):
            raise WeightsError(f"{origin[name]}: tensor '{name}': {family.MODEL_TYPE} stores it in another "
                               f"layout than cogcore's (the loader transposes or reshapes it), so its blocks "
                               f"would not run along the axis it is dotted over; keep it float")
        if kind in QTYPES:
            flat = a.reshape(-1, a.shape[-1])
            lazy[name] = quantized_source(name, a.shape, kind, lambda r0, r1, flat=flat: f32(flat[r0:r1]))
            chosen[name] = kind
        elif kind is None or DTYPE_TAGS[kind] == tag(a):
            lazy[name], chosen[name] = a, tag(a)
        else:
            to = DTYPE_TAGS[kind]
            lazy[name] = (to, a.shape, lambda a=a, to=to: to_storage(f32(a), to))
            chosen[name] = to

    tmp = out_dir.rstrip(os.sep) + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        for entry in os.listdir(in_dir):                               # config, tokenizer, ...
            src = os.path.join(in_dir, entry)
            if os.path.isfile(src) and entry not in WEIGHT_FILES and not entry.endswith(".safetensors"):
                shutil.copy2(src, os.path.join(tmp, entry))
        write_safetensors(os.path.join(tmp, "model.safetensors"), lazy,
                          metadata={"format": "cogcore",
                                    **describe_entries({n: (t, tensors[n].shape)
                                                        for n, t in chosen.items() if t in QTYPES})},
                          progress=progress)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)                                          # empty, checked above
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return chosen
