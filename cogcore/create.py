"""Randomly initialised models of any shape (`cogcore init`), for tests and benchmarks.

The scales keep activations of order one through depth, so that a random model's
router, selection and recurrence all do something: Linear weights [out, in] ~
N(0, 1/in), the RWKV low-rank matrices likewise by their input width, norms at 1,
biases at 0, and the RWKV-7 vectors in the ranges the reference initialises them to.
Every tensor has its own seeded generator, so a tensor's values do not depend on
which others are made, and big models can be written one tensor at a time.
"""

from __future__ import annotations

import os
import zlib

import numpy as np

from .config import Config
from .dtypes import DTYPE_TAGS, to_storage
from .errors import ConfigError, InputError
from .model import tensor_shapes
from .quant import check_qtype, describe_entries, quantizable
from .quantizer import quantized_source
from .tensorfile import write_json, write_safetensors

def init_tensor(name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A float32 random value for the tensor `name` (the rule depends on the name's last part)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return np.zeros(shape, np.float32)
    if leaf == "weight" and len(shape) == 1:                        # norm scales, ln_x included
        return np.ones(shape, np.float32)
    if leaf.startswith("x_"):                                       # token-shift mixes in [0, 1]
        return rng.uniform(0, 1, shape).astype(np.float32)
    if leaf == "w0":                                                # decay logits
        return rng.uniform(-3, 2, shape).astype(np.float32)
    if leaf in ("a0", "v0"):
        return rng.normal(0, 0.5, shape).astype(np.float32)
    if leaf == "k_k":
        return rng.uniform(0.7, 1.0, shape).astype(np.float32)
    if leaf == "k_a":
        return rng.uniform(0.5, 1.0, shape).astype(np.float32)
    if leaf in ("r_k", "pos"):
        return rng.normal(0, 0.1, shape).astype(np.float32)
    if name == "model.embed_tokens.weight":
        return rng.standard_normal(shape, np.float32)
    if leaf[-1:] in "12" and leaf[:-1] in ("w", "a", "v", "g"):     # x @ w1 @ w2: fan-in is shape[0]
        fan_in = shape[0]
    else:                                                           # [.., out, in]: fan-in is last
        fan_in = shape[-1]
    return (rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(fan_in))).astype(np.float32)


def random_weights(config: Config, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """All tensors of a random model, in memory (small shapes only)."""
    tag = _dtype_tag(dtype)
    return {name: to_storage(init_tensor(name, shape, seed), tag)
            for name, shape in tensor_shapes(config).items()}


def init_model(out_dir: str | os.PathLike, config: Config, dtype: str = "float32", seed: int = 0,
               progress=None, qtype: str | None = None) -> None:
    """Write config.json and model.safetensors of a random model, one tensor at a time.

    qtype "q8_0" / "q4_0": the tensors `quant.quantizable` picks are written quantized
    (straight from the random float32 values, with no float copy on disk); the rest in `dtype`.
    """
    tag = _dtype_tag(dtype)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed: expected an integer >= 0, found {seed!r}")
    if qtype is not None:
        check_qtype(qtype)
    out_dir = os.fspath(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:   # a file in the way, a read-only parent
        raise InputError(f"{out_dir}: cannot create the model directory: {e.strerror}") from None
    lazy, quantized = {}, {}
    for name, shape in tensor_shapes(config).items():
        if qtype is not None and quantizable(name, shape):
            lazy[name] = quantized_source(name, shape, qtype, _random_rows(name, shape, seed))
            quantized[name] = (qtype, shape)
        else:
            lazy[name] = (tag, shape, lambda n=name, s=shape: to_storage(init_tensor(n, s, seed), tag))
    metadata = {"format": "cogcore", "init_seed": str(seed)}
    if qtype is not None:
        metadata.update(describe_entries(quantized))
    write_safetensors(os.path.join(out_dir, "model.safetensors"), lazy, metadata=metadata, progress=progress)
    write_json(os.path.join(out_dir, "config.json"), config.to_dict())


def _random_rows(name: str, shape: tuple[int, ...], seed: int):
    """rows_of(r0, r1) over the tensor's random values seen as [rows, cols], made on first use and
    dropped after the last rows are handed out (the writer asks for them in order)."""
    made = []

    def rows_of(r0, r1):
        if not made:
            made.append(init_tensor(name, shape, seed).reshape(-1, shape[-1]))
        rows = made[0][r0:r1]
        if r1 == len(made[0]):
            made.clear()
        return rows
    return rows_of


def _dtype_tag(dtype: str) -> str:
    if dtype not in DTYPE_TAGS:
        raise ConfigError(f"dtype: expected one of {', '.join(DTYPE_TAGS)}, found {dtype!r}")
    return DTYPE_TAGS[dtype]
