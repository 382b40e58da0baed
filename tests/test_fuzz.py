"""A seeded fuzzer over every file a model directory holds.

Each case copies a model (the `tiny` preset, or the shipped model with its tokenizer),
mutates one file (model.safetensors, config.json, generation_config.json or
tokenizer.model) and then loads it, runs a forward pass and generates a few tokens.
The only allowed outcomes are a CogcoreError or a clean run with finite logits.

    COGCORE_FUZZ_CASES=5000 python -m pytest -q tests/test_fuzz.py    # more cases (default 240)
    COGCORE_FUZZ_SEED=7 ...                                             # other cases
"""

import json
import os
import random
import shutil

import numpy as np
import pytest

import cogcore
from cogcore.generate import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "weights", "cogcore-tiny")
CASES = int(os.environ.get("COGCORE_FUZZ_CASES", "240"))
SEED = int(os.environ.get("COGCORE_FUZZ_SEED", "0"))
FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.model")

# JSON values a careless or hostile writer might put anywhere
ODD_VALUES = [0, -1, 1, 2, 3, 7, 2 ** 31, 2 ** 63, 2 ** 64 + 1, 10 ** 20, -(2 ** 63), 0.5, -0.0, 1e-300, 1e308,
              1e20, "x", "", "F32", "BF16", "recurrent", "moe", None, True, False, [], [1], [0, 4], ["F32"],
              {}, {"a": 1}, [[1]], float("nan"), float("inf")]


def mutate_bytes(data: bytes, rng: random.Random, region: tuple[int, int] | None = None) -> bytes:
    """Flip, overwrite, cut or splice bytes (within `region` when given)."""
    b = bytearray(data)
    lo, hi = region or (0, len(b))
    kind = rng.choice(["flip", "byte", "truncate", "float", "splice"])
    if kind == "truncate":
        return bytes(b[:rng.randrange(0, len(b))])
    if kind == "splice":
        i = rng.randrange(lo, hi)
        return bytes(b[:i] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9))) + b[i:])
    for _ in range(rng.choice([1, 1, 2, 8])):
        i = rng.randrange(lo, hi)
        if kind == "flip":
            b[i] ^= 1 << rng.randrange(8)
        elif kind == "byte":
            b[i] = rng.randrange(256)
        else:   # a float32 NaN, Inf or huge value at an aligned offset
            i -= i % 4
            if i + 4 <= len(b):
                b[i:i + 4] = np.float32(rng.choice([np.nan, np.inf, -np.inf, 3e38, 1e30])).tobytes()
    return bytes(b)


def mutate_json(obj, rng: random.Random):
    """Set, delete or add a key somewhere in a JSON object (recursing into a random child)."""
    target = obj
    while isinstance(target, dict) and target and rng.random() < 0.4:
        child = target[rng.choice(list(target))]
        if not isinstance(child, dict) or not child:
            break
        target = child
    if not isinstance(target, dict):
        return rng.choice(ODD_VALUES)
    keys = list(target) or ["x"]
    key = rng.choice(keys)
    action = rng.random()
    if action < 0.15:
        target.pop(key, None)
    elif action < 0.25:
        target[rng.choice(["extra", "__metadata__", "chat_history", "stop_strings", "do_sample"])] = \
            rng.choice(ODD_VALUES)
    elif action < 0.4 and isinstance(target.get(key), list) and target[key]:
        lst = target[key]
        lst[rng.randrange(len(lst))] = rng.choice(ODD_VALUES)
    else:
        target[key] = rng.choice(ODD_VALUES)
    return obj


def mutate_file(path: str, name: str, rng: random.Random) -> None:
    with open(path, "rb") as f:
        data = f.read()
    if name == "model.safetensors":
        n = int.from_bytes(data[:8], "little")
        if rng.random() < 0.5:
            header = json.loads(data[8:8 + n])
            text = json.dumps(mutate_json(header, rng)).encode()
            data = len(text).to_bytes(8, "little") + text + data[8 + n:]
        else:
            region = rng.choice([(0, 8), (8, 8 + n), (8 + n, len(data))])
            data = mutate_bytes(data, rng, region)
    elif name.endswith(".json") and rng.random() < 0.8:
        text = json.dumps(mutate_json(json.loads(data), rng), indent=1)
        data = text.encode()
    else:
        data = mutate_bytes(data, rng)
    os.remove(path)     # the copy may be a link to the original
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture(scope="module")
def bases(tiny_dir):
    """The models mutated: the tiny preset (weights and config only) and the shipped model."""
    return {"tiny": tiny_dir, "shipped": SHIPPED}


def run_case(base: str, work: str, rng: random.Random, backend: str) -> str:
    """Mutate one file of a linked copy of `base`, then use the model. Returns what happened."""
    os.makedirs(work)
    for f in os.listdir(base):
        os.symlink(os.path.join(base, f), os.path.join(work, f))
    present = [f for f in FILES if os.path.exists(os.path.join(work, f))]
    name = rng.choice(present)
    mutate_file(os.path.join(work, name), name, rng)
    try:
        model = cogcore.load(work, backend=backend)
        logits = model.forward([1, 5, 9, 3])
        assert np.isfinite(logits).all(), f"{name}: loaded, but logits are not finite"
        if os.path.exists(os.path.join(work, "tokenizer.model")):
            generate(model, "12+345=", max_new_tokens=4)
        return "ok"
    except cogcore.CogcoreError:
        return "error"


def test_fuzz_every_file_of_a_model_directory(bases, tmp_path):
    rng = random.Random(SEED)
    outcomes = {"ok": 0, "error": 0}
    for case in range(CASES):
        base = bases[rng.choice(sorted(bases))]
        backend = rng.choice(["numpy", "numba"])
        case_rng = random.Random(rng.getrandbits(64))
        work = str(tmp_path / f"case{case}")
        try:
            outcomes[run_case(base, work, case_rng, backend)] += 1
        except Exception as e:
            raise AssertionError(f"case {case} (seed {SEED}, {backend}) escaped as {type(e).__name__}: {e}") from e
        finally:
            shutil.rmtree(work, ignore_errors=True)
    assert outcomes["ok"] and outcomes["error"]      # the mutations reach both outcomes
