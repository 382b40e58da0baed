"""What the next token needs from the past, per layer (SPEC Section 5).

| layer               | state                                                      |
|---------------------|------------------------------------------------------------|
| full_attention      | KVCache: rotated keys and values of every position         |
| sliding_attention   | RingKV: those of the last `sliding_window` positions only  |
| sparse_attention    | SparseKV: KVCache + compressed kc, vc of complete blocks   |
| recurrent           | ShiftState (x_prev) + the float32 state S [Hr, N, N]       |
| channel_mix         | ShiftState (x_prev)                                        |

A `Cache` holds one (mixer state, FFN state) pair per layer and the number of
positions consumed. It can be copied to fork a conversation, and reports its size.
"""

from __future__ import annotations

import copy

import numpy as np


class GrowingBuffer:
    """Rows appended at the end, capacity doubled as needed (amortised O(1) per row)."""

    def __init__(self, row_shape: tuple[int, ...], dtype=np.float32):
        self.data = np.zeros((0, *row_shape), dtype)
        self.n = 0

    def append(self, rows: np.ndarray) -> np.ndarray:
        """Append rows [T, *row_shape]; returns a view of all rows so far."""
        need = self.n + len(rows)
        self.room(len(rows))[self.n:need] = rows
        self.n = need
        return self.data[:need]

    def view(self) -> np.ndarray:
        return self.data[:self.n]

    def room(self, count: int) -> np.ndarray:
        """The whole buffer, grown to hold `count` more rows (rows n.. are the caller's to fill)."""
        need = self.n + count
        if need > len(self.data):
            grown = np.zeros((max(need, 2 * len(self.data), 16), *self.data.shape[1:]), self.data.dtype)
            grown[:self.n] = self.data[:self.n]
            self.data = grown
        return self.data

    @classmethod
    def holding(cls, rows: np.ndarray) -> "GrowingBuffer":
        """A buffer whose rows are `rows`, shared, not copied: it is full, so the first append
        copies them into new memory and `rows` (possibly a read-only map) is never written."""
        buf = cls(rows.shape[1:], rows.dtype)
        buf.data, buf.n = rows, len(rows)
        return buf


class KVCache:
    """Keys and values of every position so far (positions 0..n-1 in order)."""

    def __init__(self, row_shape: tuple[int, ...]):
        self.k, self.v = GrowingBuffer(row_shape), GrowingBuffer(row_shape)

    def extend(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray):
        """Append a chunk; returns (keys, values, key positions) the chunk's queries may read."""
        keys, values = self.k.append(k), self.v.append(v)
        return keys, values, np.arange(len(keys))

    def room(self, count: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(key buffer, value buffer, n): buffers that hold rows 0..n-1 and room for `count` more, for
        an op that writes rows n..n+count-1 itself (a fused decode step); `commit` counts them."""
        return self.k.room(count), self.v.room(count), self.k.n

    def commit(self, count: int) -> None:
        self.k.n += count
        self.v.n += count


class RingKV:
    """Keys and values of the last `size` positions, in a ring: memory fixed whatever the length."""

    def __init__(self, size: int, row_shape: tuple[int, ...]):
        self.k = np.zeros((size, *row_shape), np.float32)
        self.v = np.zeros((size, *row_shape), np.float32)
        self.pos = np.full(size, -1, np.int64)   # -1: slot never written

    def extend(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray):
        """Returns the ring's keys (in position order) followed by the chunk's; then stores the chunk."""
        order = np.argsort(self.pos)
        order = order[self.pos[order] >= 0]
        keys = np.concatenate([self.k[order], k])
        values = np.concatenate([self.v[order], v])
        k_pos = np.concatenate([self.pos[order], positions])
        size = len(self.pos)
        tail = slice(max(0, len(positions) - size), None)   # only the last `size` survive
        slots = positions[tail] % size
        self.k[slots], self.v[slots], self.pos[slots] = k[tail], v[tail], positions[tail]
        return keys, values, k_pos


class SparseKV:
    """Sparse attention: every rotated key and value, plus one compressed kc, vc per complete block."""

    def __init__(self, row_shape: tuple[int, ...]):
        self.kv = KVCache(row_shape)
        self.kc, self.vc = GrowingBuffer(row_shape), GrowingBuffer(row_shape)


class ShiftState:
    """The previous token's normed input (token shift), zeros before the first token."""

    def __init__(self, dim: int):
        self.x_prev = np.zeros(dim, np.float32)


class RecurrentState(ShiftState):
    """RWKV-7 time mix: token shift plus the per-head matrix state S [Hr, N, N] (value x key)."""

    def __init__(self, dim: int, heads: int, head_size: int):
        super().__init__(dim)
        self.S = np.zeros((heads, head_size, head_size), np.float32)


class Cache:
    """Per-layer states of one sequence, and how many positions it has consumed."""

    def __init__(self, layers: list[tuple[object, object]]):
        self.layers = layers
        self.length = 0

    def copy(self) -> "Cache":
        """An independent copy: feeding one does not change the other."""
        return copy.deepcopy(self)

    @property
    def nbytes(self) -> int:
        """Bytes of array memory held (allocated capacity, not just the used part)."""
        return _nbytes(self.layers)


def _nbytes(obj) -> int:
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(o) for o in obj)
    if hasattr(obj, "__dict__"):
        return sum(_nbytes(o) for o in vars(obj).values())
    return 0
