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

    def check_all_used(self) -> None:
        unused = sorted(set(self.tensors) - self.used)
        if unused:
            shown = ", ".join(f"'{n}'" for n in unused[:5]) + (" ..." if len(unused) > 5 else "")
            raise WeightsError(f"{self.where(unused[0])}: {len(unused)} unexpected tensor(s) that the "
                               f"config does not use: {shown} (load with strict=False to ignore them)")
