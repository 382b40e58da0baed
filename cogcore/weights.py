"""The tensors of one model, handed out by name and shape, with a record of use.

Each block takes its tensors from a `Weights` by SPEC name and expected shape. A
missing or misshapen tensor is an error naming the file it was looked for in; after
the model is built, `check_all_used` reports any tensor nothing took (SPEC Section 1).
"""

from __future__ import annotations

import numpy as np

from .errors import WeightsError


class Weights:
    def __init__(self, tensors: dict[str, np.ndarray], origin: dict[str, str] | None = None,
                 source: str = "<memory>"):
        self.tensors = tensors
        self.origin = origin or {}
        self.source = source          # the model directory, for tensors found nowhere
        self.used: set[str] = set()

    def where(self, name: str) -> str:
        return self.origin.get(name, self.source)

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor `name`, checked to have `shape`."""
        if name not in self.tensors:
            raise WeightsError(f"{self.source}: missing tensor '{name}': expected shape {list(shape)}, "
                               f"found no such tensor")
        a = self.tensors[name]
        if a.shape != tuple(shape):
            raise WeightsError(f"{self.where(name)}: tensor '{name}': expected shape {list(shape)}, "
                               f"found {list(a.shape)}")
        self.used.add(name)
        return a

    @property
    def quantized(self) -> bool:
        """Whether any tensor is in GGML blocks (a QuantTensor, or a stack of per-expert ones)."""
        return any(hasattr(t[0] if isinstance(t, ExpertStack) else t, "qtype") for t in self.tensors.values())

    @property
    def float_dtypes(self) -> set:
        """The storage dtypes of the tensors not in GGML blocks (float32, float16; bfloat16 as uint16 bits)."""
        found = set()
        for t in self.tensors.values():
            t = t[0] if isinstance(t, ExpertStack) else t
            if not hasattr(t, "qtype"):
                found.add(np.dtype(t.dtype))
        return found

    def check_all_used(self) -> None:
        unused = sorted(set(self.tensors) - self.used)
        if unused:
            shown = ", ".join(f"'{n}'" for n in unused[:5]) + (" ..." if len(unused) > 5 else "")
            raise WeightsError(f"{self.where(unused[0])}: {len(unused)} unexpected tensor(s) that the "
                               f"config does not use: {shown} (load with strict=False to ignore them)")


class ExpertStack:
    """Per-expert tensors [F, D] presented as one stacked [E, F, D] without copying them.

    `stack[e]` is expert e's own (memory-mapped) array; `shape`, `dtype`, `ndim`, `size`
    and `nbytes` are those the stacked array would have. The MoE blocks only ever index
    an expert at a time, so they take this wherever they take a stacked array.
    """

    def __init__(self, parts: list[np.ndarray], names: list[str], source: str = "<memory>"):
        first = parts[0]
        kind = lambda a: getattr(a, "qtype", None) or a.dtype      # a quantized expert: its format
        for part, name in zip(parts, names):
            if part.shape != first.shape or kind(part) != kind(first):
                raise WeightsError(f"{source}: tensor '{name}': expected {kind(first)} {list(first.shape)} "
                                   f"like '{names[0]}', found {kind(part)} {list(part.shape)}")
        self.parts = parts
        self.shape = (len(parts), *first.shape)
        self.dtype, self.ndim = kind(first), first.ndim + 1
        self.size = sum(p.size for p in parts)
        self.nbytes = sum(p.nbytes for p in parts)

    def __len__(self) -> int:
        return len(self.parts)

    def __getitem__(self, e):
        if isinstance(e, (int, np.integer)):
            return self.parts[e]
        raise TypeError(f"ExpertStack takes one expert index, found {e!r}")

    def __array__(self, dtype=None, copy=None):
        """The stacked copy, for code that needs a real array (tests, conversion); quantized experts
        dequantized."""
        a = np.stack([p.dequantize() if hasattr(p, "dequantize") else p for p in self.parts])
        return a if dtype is None else a.astype(dtype)

