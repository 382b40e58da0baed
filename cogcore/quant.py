"""Quantized weights: GGML's q8_0 and q4_0 block formats, bit for bit (SPEC Section 9).

A quantized tensor of logical shape [..., rows, cols] (cols a multiple of 32) is
stored as uint8 [..., rows, cols // 32 * bytes_per_block]: each row is its blocks
of 32 consecutive values, one after another, exactly as GGML lays out a row, so a
GGUF tensor of these types maps onto it without conversion. The quantizers follow
ggml-quants.c (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`) and are tested
bit-exact against the `gguf` package's independent NumPy port (`gguf.quants`).

The NumPy reference dequantizes (`QuantTensor.dequantize`, one function per format
below); the Numba backend computes from the packed bytes (kernels/quant.py).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from .errors import WeightsError

BLOCK = 32                                   # values per block, both formats
BLOCK_BYTES = {"q8_0": 2 + 32, "q4_0": 2 + 16}
QTYPES = tuple(BLOCK_BYTES)
METADATA_KEY = "cogcore.quantized"           # safetensors __metadata__: {name: {"type", "shape"}} as JSON


def _roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf: to nearest, halves away from zero (np.round would round halves to even)."""
    a = np.abs(x)
    whole = np.floor(a)
    return np.sign(x) * (whole + (a - whole >= np.float32(0.5)))   # a + 0.5 could round up in float32


def _blocks(x: np.ndarray) -> np.ndarray:
    """float32 [..., cols] -> [n, 32]: the blocks of every row, in storage order."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x.reshape(-1, BLOCK)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """float32 [..., cols] -> q8_0 bytes uint8 [..., cols // 32 * 34].

    A block of 32 values: 2 bytes float16 scale d, then 32 int8 q, value = q * d.
    d = max|x| / 127 and q = roundf(x / d) (ggml-quants.c quantize_row_q8_0_ref;
    the division is a multiplication by the float32 reciprocal, as there).
    """
    b = _blocks(x)
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = _roundf(b * inv).astype(np.int8)
    out = np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)
    return out.reshape(*x.shape[:-1], out.shape[-1] * x.shape[-1] // BLOCK)   # no -1: x may have no rows


def blocks_q8_0(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q8_0 bytes uint8 [..., nblocks * 34] -> (q int8 [..., nblocks, 32], d float32 [..., nblocks])."""
    b = np.ascontiguousarray(data).reshape(*data.shape[:-1], data.shape[-1] // 34, 34)
    return b[..., 2:].view(np.int8), b[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)


def dequantize_q8_0(data: np.ndarray) -> np.ndarray:
    """q8_0 bytes uint8 [..., nblocks * 34] -> float32 [..., nblocks * 32]: q * d per block."""
    q, d = blocks_q8_0(data)
    return (q.astype(np.float32) * d[..., None]).reshape(*data.shape[:-1], d.shape[-1] * BLOCK)


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """float32 [..., cols] -> q4_0 bytes uint8 [..., cols // 32 * 18].

    A block of 32 values: 2 bytes float16 scale d, then 16 bytes of 4-bit q,
    value = (q - 8) * d; element j (0..15) is the low nibble of byte j and element
    j + 16 its high nibble. d = m / -8 where m is the value of largest magnitude
    (the first one on ties), q = min(15, trunc(x / d + 8.5)) (quantize_row_q4_0_ref).
    """
    b = _blocks(x)
    m = np.take_along_axis(b, np.abs(b).argmax(axis=1)[:, None], axis=1)
    d = m / np.float32(-8)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = np.minimum(np.trunc(b * inv + np.float32(8.5)), 15).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << np.uint8(4))
    out = np.concatenate([d.astype(np.float16).view(np.uint8), packed], axis=1)
    return out.reshape(*x.shape[:-1], out.shape[-1] * x.shape[-1] // BLOCK)   # no -1: x may have no rows


def blocks_q4_0(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q4_0 bytes uint8 [..., nblocks * 18] -> (q - 8 int8 [..., nblocks, 32], d float32 [..., nblocks])."""
    b = np.ascontiguousarray(data).reshape(*data.shape[:-1], data.shape[-1] // 18, 18)
    nib = b[..., 2:]
    q = np.concatenate([nib & np.uint8(0x0F), nib >> np.uint8(4)], axis=-1)   # elements 0..15, 16..31
    return q.view(np.int8) - np.int8(8), b[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)


def dequantize_q4_0(data: np.ndarray) -> np.ndarray:
    """q4_0 bytes uint8 [..., nblocks * 18] -> float32 [..., nblocks * 32]: (q - 8) * d per block."""
    q, d = blocks_q4_0(data)
    return (q.astype(np.float32) * d[..., None]).reshape(*data.shape[:-1], d.shape[-1] * BLOCK)


QUANTIZE = {"q8_0": quantize_q8_0, "q4_0": quantize_q4_0}
DEQUANTIZE = {"q8_0": dequantize_q8_0, "q4_0": dequantize_q4_0}
BLOCKS = {"q8_0": blocks_q8_0, "q4_0": blocks_q4_0}     # the values of each block and its scale


def packed_shape(shape: tuple[int, ...], qtype: str) -> tuple[int, ...]:
    """The uint8 storage shape of a logical [..., rows, cols] tensor."""
    return (*shape[:-1], shape[-1] // BLOCK * BLOCK_BYTES[qtype])


@dataclasses.dataclass(frozen=True)
class QuantTensor:
    """A quantized weight: packed blocks `data` uint8 [..., rows, nblocks * bytes], logical `shape`.

    Indexing the leading (expert) axis gives that expert's matrix, still packed.
    """

    data: np.ndarray
    qtype: str
    shape: tuple[int, ...]

    def __post_init__(self):
        # Read-only, as a memory-mapped file's blocks are: the kernels never write weights, and one
        # array type (not a read-only and a writeable one) means one compiled variant per kernel.
        if self.data.flags.writeable:
            data = self.data.view()
            data.flags.writeable = False
            object.__setattr__(self, "data", data)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def __getitem__(self, i: int) -> "QuantTensor":
        return QuantTensor(self.data[i], self.qtype, self.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def dequantize(self) -> np.ndarray:
        """float32 of the logical shape (whole tensor: the reference path)."""
        return DEQUANTIZE[self.qtype](self.data).reshape(self.shape)

    def blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """(q int8 [..., rows, nblocks, 32], d float32 [..., rows, nblocks]): value = q * d."""
        return BLOCKS[self.qtype](self.data)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """float32 [len(ids), cols] of the rows `ids` of a 2-D tensor (embedding lookup)."""
        return DEQUANTIZE[self.qtype](self.data[ids])


def check_qtype(qtype: str) -> None:
    if qtype not in QTYPES:
        raise WeightsError(f"quantization type: expected one of {', '.join(QTYPES)}, found {qtype!r}")


def quantize_tensor(x: np.ndarray, qtype: str, name: str = "tensor") -> QuantTensor:
    """Quantize a float tensor [..., rows, cols] whose cols are a multiple of 32."""
    check_qtype(qtype)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2 or x.shape[-1] % BLOCK:
        raise WeightsError(f"tensor '{name}': {qtype} needs a last dimension that is a multiple of "
                           f"{BLOCK}, found shape {list(x.shape)}")
    if not np.isfinite(x).all():
        raise WeightsError(f"tensor '{name}': cannot quantize non-finite values (inf or NaN)")
    return QuantTensor(QUANTIZE[qtype](x), qtype, tuple(x.shape))


# ---- which tensors are quantized -----------------------------------------------------------
KEPT_FLOAT = (".mlp.gate.weight",            # the router: routing decisions are sensitive, and it is small
              ".shared_expert_gate.weight",  # [1, D]
              ".compress_k.", ".compress_v.")  # NSA compression MLP: small, used by its own kernel


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """Whether `quantize` turns this tensor into blocks (docs/format.md, "Quantized models").

    Linear weights (2-D `.weight`), the stacked experts, the embedding and lm_head are
    quantized; norms, biases, vectors, the RWKV low-rank matrices, the router, the
    shared-expert gate and the NSA compression MLP stay float. A weight whose input
    width is not a multiple of 32 stays float too (GGML blocks cannot split a row).
    """
    is_linear = name.endswith(".weight") and len(shape) == 2
    is_experts = ".mlp.experts." in name and len(shape) == 3
    if not (is_linear or is_experts) or any(k in name for k in KEPT_FLOAT):
        return False
    return shape[-1] % BLOCK == 0


# ---- safetensors metadata -------------------------------------------------------------------
def describe_entries(quantized: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, str]:
    """The __metadata__ entry that makes a safetensors file self-describing: {name: (qtype, logical shape)}."""
    return {METADATA_KEY: json.dumps({n: {"type": t, "shape": list(s)} for n, (t, s) in quantized.items()},
                                     separators=(",", ":"))}


def wrap_quantized(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> dict:
    """Replace the uint8 tensors that a file's metadata describes by QuantTensors (checked)."""
    raw = metadata.get(METADATA_KEY)
    entries = {}
    if raw is not None:
        try:
            entries = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as e:
            raise WeightsError(f"{path}: __metadata__ '{METADATA_KEY}' is not valid JSON ({e})") from None
        if not isinstance(entries, dict):
            raise WeightsError(f"{path}: __metadata__ '{METADATA_KEY}' must be an object of tensor name -> "
                               f"{{type, shape}}, found {type(entries).__name__}")
    out = dict(tensors)
    for name, info in entries.items():
        where = f"{path}: quantized tensor '{name}'"
        if name not in tensors:
            raise WeightsError(f"{where}: named in __metadata__ '{METADATA_KEY}' but absent from the file")
        if not isinstance(info, dict) or info.get("type") not in QTYPES:
            raise WeightsError(f"{where}: expected {{\"type\": one of {', '.join(QTYPES)}, \"shape\": [...]}}, "
                               f"found {info!r}")
        shape = info.get("shape")
        if (not isinstance(shape, list) or len(shape) < 2
                or not all(type(d) is int and d >= 0 for d in shape) or shape[-1] % BLOCK):
            raise WeightsError(f"{where}: logical shape must be at least 2 integers, the last a multiple "
                               f"of {BLOCK}, found {shape!r}")
        qtype, shape = info["type"], tuple(shape)
        data = tensors[name]
        if data.dtype != np.uint8 or data.shape != packed_shape(shape, qtype):
            raise WeightsError(f"{where}: {qtype} of shape {list(shape)} must be stored as U8 "
                               f"{list(packed_shape(shape, qtype))}, found {data.dtype} {list(data.shape)}")
        out[name] = QuantTensor(np.asarray(data), qtype, shape)   # a plain view: slicing a memmap costs more
    stray = [n for n, a in tensors.items() if a.dtype == np.uint8 and n not in entries]
    if stray:
        raise WeightsError(f"{path}: tensor '{stray[0]}' is U8 but __metadata__ '{METADATA_KEY}' does not "
                           f"describe it (expected a quantized tensor's type and logical shape)")
    return out
