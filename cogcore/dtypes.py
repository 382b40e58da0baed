"""Storage dtypes. Arithmetic is float32; weights may be stored narrower (SPEC conventions).

NumPy has no bfloat16, so a bfloat16 tensor is carried as its raw bits in a uint16
array: within cogcore a uint16 weight always means bfloat16. `f32` widens any
stored tensor for arithmetic; the Numba kernels widen inside their loops instead.
A uint8 tensor is the packed blocks of a quantized weight (cogcore/quant.py); it is
carried as a `QuantTensor`, which `f32` dequantizes.
"""

import numpy as np

from .quant import QuantTensor

# safetensors dtype tag -> NumPy dtype of the carried array
STORAGE_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
                  "U8": np.dtype("u1")}
TAG_OF = {dt: tag for tag, dt in STORAGE_DTYPES.items()}
DTYPE_TAGS = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}   # user-facing name -> tag


def tag(a: np.ndarray) -> str:
    """The safetensors dtype tag of a carried array."""
    return TAG_OF[a.dtype.newbyteorder("<")]


def f32(a: np.ndarray) -> np.ndarray:
    """Widen a stored tensor to float32 (no copy when it already is float32)."""
    if isinstance(a, QuantTensor):
        return a.dequantize()
    if a.dtype == np.uint16:  # bfloat16 bits are the top half of a float32 (asarray: an ExpertStack too)
        return (np.asarray(a).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(a, dtype=np.float32)


def to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bits, round-to-nearest-even (as torch does); NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def to_storage(x: np.ndarray, dtype_tag: str) -> np.ndarray:
    """float32 -> the carried array of a safetensors dtype tag."""
    if dtype_tag == "BF16":
        return to_bf16(x)
    return np.asarray(x, dtype=STORAGE_DTYPES[dtype_tag])
