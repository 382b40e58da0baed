"""Reading and writing safetensors files, memory-mapped, never through pickle.

The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian
header length n, n bytes of JSON `{name: {"dtype", "shape", "data_offsets":
[begin, end]}, "__metadata__": {str: str}}`, then the raw little-endian data, the
offsets counted from the end of the header.

Every field of the header is checked against the file before any byte of data is
touched, so a truncated or lying file is an error naming the file and tensor,
never a crash or garbage weights.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Callable, Mapping

import numpy as np

from .config import read_json
from .dtypes import STORAGE_DTYPES, TAG_OF, tag
from .errors import WeightsError, reading
from .quant import wrap_quantized

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Map a safetensors file. Returns ({name: read-only array}, metadata).

    Arrays view the mapped file: nothing is copied, and pages are read on first use.
    bfloat16 tensors come back as uint16 bits (see dtypes.py).
    """
    path = os.fspath(path)
    with reading(path, "safetensors weights file", WeightsError):
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise WeightsError(f"{path}: expected an 8-byte header length, found a file of {size} bytes")
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise WeightsError(f"{path}: header says it is {n} bytes long, but the file has only "
                                   f"{size - 8} bytes after the length field (truncated or not safetensors)")
            header_bytes = f.read(n)

    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (ValueError, RecursionError) as e:   # bad UTF-8 or JSON, ints over 4,300 digits
        raise WeightsError(f"{path}: header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: header must be a JSON object, found {type(header).__name__}")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightsError(f"{path}: __metadata__ must map strings to strings, found {metadata!r}")

    data_start, data_size = 8 + n, size - 8 - n
    entries = [(name, _check_entry(path, name, info, data_size)) for name, info in header.items()]

    spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries if end > begin)
    for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise WeightsError(f"{path}: tensors '{n0}' and '{n1}' overlap in the data section "
                               f"(bytes {b0}-{e0} and {b1}-)")

    whole = np.memmap(path, dtype=np.uint8, mode="r") if size > 0 else np.zeros(0, np.uint8)
    tensors = {}
    for name, (dtype, shape, begin, end) in entries:
        tensors[name] = whole[data_start + begin:data_start + end].view(dtype).reshape(shape)
    return tensors, metadata


def _check_entry(path: str, name: str, info, data_size: int):
    where = f"{path}: tensor '{name}'"
    if not isinstance(info, dict):
        raise WeightsError(f"{where}: expected an object with dtype, shape, data_offsets, found {info!r}")
    dtype_tag, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype_tag, str) or dtype_tag not in STORAGE_DTYPES:
        raise WeightsError(f"{where}: unsupported dtype: expected one of "
                           f"{', '.join(STORAGE_DTYPES)}, found {dtype_tag!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise WeightsError(f"{where}: shape must be a list of integers >= 0, found {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int for o in offsets)):
        raise WeightsError(f"{where}: data_offsets must be [begin, end], found {offsets!r}")
    begin, end = offsets
    dtype = STORAGE_DTYPES[dtype_tag]
    nbytes = math.prod(shape) * dtype.itemsize
    if not 0 <= begin <= end <= data_size:
        raise WeightsError(f"{where}: data_offsets {offsets} point outside the data section "
                           f"of {data_size} bytes (file truncated or header lying)")
    if end - begin != nbytes:
        raise WeightsError(f"{where}: shape {shape} of {dtype_tag} needs {nbytes} bytes, "
                           f"but data_offsets {offsets} span {end - begin}")
    return dtype, tuple(shape), begin, end


TensorSource = Callable[[], np.ndarray]


def write_safetensors(path: str | os.PathLike,
                      tensors: Mapping[str, np.ndarray | tuple[str, tuple[int, ...], TensorSource]],
                      metadata: Mapping[str, str] | None = None,
                      progress: Callable[[int, int], None] | None = None) -> None:
    """Write a safetensors file atomically (a temporary name, then rename).

    `tensors` maps a name to either an array (float32, float16, uint16 = bfloat16
    bits, or uint8 = quantized blocks) or a lazy triple (dtype tag, shape, make) whose `make()` returns the array;
    lazy tensors are produced and written one at a time, so a file larger than
    memory can be made. `progress(bytes_written, bytes_total)` is called per tensor.
    """
    path = os.fspath(path)
    layout, offset = [], 0
    for name, item in tensors.items():
        if isinstance(item, np.ndarray):
            if item.dtype.newbyteorder("<") not in TAG_OF:
                raise WeightsError(f"{path}: tensor '{name}': expected dtype float32, float16, uint16 "
                                   f"(bfloat16 bits) or uint8 (quantized blocks), found {item.dtype}")
            dtype_tag, shape, make = tag(item), item.shape, (lambda a=item: a)
        else:
            dtype_tag, shape, make = item
        nbytes = math.prod(shape) * STORAGE_DTYPES[dtype_tag].itemsize
        layout.append((name, dtype_tag, tuple(shape), make, offset, offset + nbytes))
        offset += nbytes
    header = {name: {"dtype": t, "shape": list(s), "data_offsets": [b, e]}
              for name, t, s, _, b, e in layout}
    if metadata:
        header["__metadata__"] = dict(metadata)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # data starts 8-aligned

    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(len(header_bytes).to_bytes(8, "little"))
            f.write(header_bytes)
            for name, dtype_tag, shape, make, begin, end in layout:
                array = np.asarray(make(), dtype=STORAGE_DTYPES[dtype_tag])   # tobytes() is C order
                if array.shape != shape:
                    raise WeightsError(f"{path}: tensor '{name}': expected shape {list(shape)}, "
                                       f"found {list(array.shape)}")
                f.write(array.tobytes())
                if progress:
                    progress(end, offset)
        os.replace(tmp, path)
    except OSError as e:   # disk full, a read-only or vanished directory
        raise WeightsError(f"{path}: cannot write the weights file: {e.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_model_tensors(model_dir: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a model directory (SPEC Section 1): one file or a sharded index.

    Returns ({name: array}, {name: file it came from}), the second for error messages.
    Quantized tensors come back as `quant.QuantTensor`s (their file's metadata says which).
    """
    model_dir = os.fspath(model_dir)
    single = os.path.join(model_dir, "model.safetensors")
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(single):
        tensors, metadata = read_safetensors(single)
        if not tensors:
            raise WeightsError(f"{single}: expected the model's tensors, found a file that holds none")
        return wrap_quantized(single, tensors, metadata), {name: single for name in tensors}
    if not os.path.exists(index_path):
        raise WeightsError(f"{model_dir}: expected model.safetensors or model.safetensors.index.json, "
                           f"found neither")
    index = read_json(index_path, WeightsError, "shard index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise WeightsError(f"{index_path}: expected a 'weight_map' object of tensor name -> shard file, "
                           f"found {weight_map!r}")

    tensors, origin = {}, {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(model_dir, shard)
        if os.path.basename(shard) != shard:
            raise WeightsError(f"{index_path}: shard '{shard}' must be a file name inside the model directory")
        if not os.path.exists(shard_path):
            raise WeightsError(f"{index_path}: names shard '{shard}', but {shard_path} does not exist")
        shard_tensors, metadata = read_safetensors(shard_path)
        shard_tensors = wrap_quantized(shard_path, shard_tensors, metadata)
        for name, array in shard_tensors.items():
            if weight_map.get(name) != shard:
                raise WeightsError(f"{shard_path}: holds tensor '{name}', which the index maps to "
                                   f"{weight_map.get(name)!r}")
            tensors[name], origin[name] = array, shard_path
    if not tensors:
        raise WeightsError(f"{index_path}: expected the model's tensors, found an index that maps none")
    for name, shard in weight_map.items():
        if name not in tensors:
            raise WeightsError(f"{os.path.join(model_dir, shard)}: the index maps tensor '{name}' here, "
                               f"but the shard does not hold it")
    return tensors, origin


def write_sharded(model_dir: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                  max_shard_bytes: int) -> None:
    """Write `tensors` as shards of at most `max_shard_bytes` plus the index (Hugging Face names)."""
    model_dir = os.fspath(model_dir)
    shards: list[list[str]] = [[]]
    size = 0
    for name, a in tensors.items():
        if shards[-1] and size + a.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += a.nbytes
    weight_map = {}
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(os.path.join(model_dir, file), {n: tensors[n] for n in names})
        weight_map.update({n: file for n in names})
    total = sum(a.nbytes for a in tensors.values())
    write_json(os.path.join(model_dir, "model.safetensors.index.json"),
                       {"metadata": {"total_size": total}, "weight_map": weight_map})


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (a temporary name, then rename)."""
    path = os.fspath(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        raise WeightsError(f"{path}: cannot write: {e.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_TEMPORARY = re.compile(r".+\.(\d+)\.cogcore-tmp")


def temporary_name(path: str) -> str:
    """`path.<pid>.cogcore-tmp`, the name a file is written under before its rename.

    A process killed mid-write (SIGKILL, power loss) leaves its temporary behind: the
    next write to the same directory removes every such file whose process is gone.
    """
    folder = os.path.dirname(path) or "."
    try:
        names = os.listdir(folder)
    except OSError:
        names = []   # the open() that follows reports what is wrong with the folder
    for name in names:
        m = _TEMPORARY.fullmatch(name)
        if m and not _process_alive(int(m.group(1))):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass   # another writer cleaned it first
    return f"{path}.{os.getpid()}.cogcore-tmp"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
