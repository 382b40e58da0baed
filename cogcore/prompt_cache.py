"""Prompt caches: keep the computed state of token prefixes and restore the longest one a new
prompt shares, so that only the rest is prefilled (design and trade-offs: docs/prompt-cache.md).

    pc = cogcore.PromptCache(model, max_bytes=2**30, directory=None)
    model.generate(document + question, prompt_cache=pc)     # the 2nd question reuses the document
    cache, logits, restored, rec = pc.prefill(token_ids)     # the same without generating

Hybrid models make this hard: attention keys and values can be cut back to any shorter
prefix, but a recurrent state (RWKV-7 `S`, token-shift `x_prev`) cannot be rewound and
a sliding window's ring has overwritten old positions. So an entry keeps, besides the
keys and values of its L tokens, *checkpoints*: at every multiple of `snapshot_every`
and at its end, the recurrent and shift states, the sliding-window rows those need, and
the logits of the token before. A prompt that shares c tokens with an entry restores at
the last checkpoint P <= c: attention K/V are cut to P rows, NSA's compressed blocks to
the blocks complete inside 0..P-1 (a block only reads keys inside it), and the states
come from checkpoint P.

One entry is a flat dict of float32 arrays (its file is a safetensors file holding exactly
them, plus a JSON header: model identity, token ids, checkpoint positions, a checksum):

| layer state        | tensors (prefix `layers.{i}.mixer` / `layers.{i}.ffn`)            |
|--------------------|-------------------------------------------------------------------|
| KVCache (full)     | `.k`, `.v` [L, Hkv, hd]                                           |
| SparseKV           | `.k`, `.v` [L, Hkv, hd]; `.kc`, `.vc` [complete blocks of L, Hkv, hd] |
| RingKV (sliding)   | `.k`, `.v` [R, Hkv, hd]: at checkpoint j the rows of positions      |
|                    | max(P_{j-1}, P_j - W) .. P_j - 1 (so every checkpoint has its last W) |
| RecurrentState     | `.S` [m, Hr, N, N], `.x_prev` [m, D], one per checkpoint           |
| ShiftState         | `.x_prev` [m, D]                                                  |
| (model)            | `logits` [m, V]: logits of position P_j - 1                       |

Not thread-safe: one PromptCache serves one thread at a time (a server serialises model use).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections import OrderedDict
from typing import Callable

import numpy as np

from .blocks.sparse_attention import n_complete_blocks
from .cache import Cache, GrowingBuffer, KVCache, RecurrentState, RingKV, ShiftState, SparseKV
from .errors import CogcoreError, InputError
from .tensorfile import read_safetensors, write_safetensors

FORMAT = "cogcore-prompt-cache/1"
SUFFIX = ".safetensors"
IDENTITY_SAMPLES = 16          # byte windows hashed per tensor for the model identity
IDENTITY_WINDOW = 256


class PromptCacheError(CogcoreError):
    """A prompt-cache file that is damaged or was made by another model or config."""


# ---- model identity ------------------------------------------------------------------------------

def model_identity(model) -> str:
    """A hash of the config, every tensor's name, dtype and shape, and a sample of its bytes.

    The sample (IDENTITY_SAMPLES windows of IDENTITY_WINDOW bytes, evenly spaced, per tensor)
    reads a few pages per tensor instead of every weight, so it costs milliseconds on a
    memory-mapped model; retraining changes every weight, so any sample sees it. Computed
    once per model object.
    """
    cached = getattr(model, "_prompt_cache_identity", None)
    if cached is not None:
        return cached
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name in sorted(model.weights.tensors):
        a = model.weights.tensors[name]
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}".encode())
        raw = a.reshape(-1).view(np.uint8)
        step = max(1, len(raw) // IDENTITY_SAMPLES)
        for start in range(0, len(raw), step):
            h.update(raw[start:start + IDENTITY_WINDOW].tobytes())
    model._prompt_cache_identity = h.hexdigest()
    return model._prompt_cache_identity


# ---- what one entry holds ------------------------------------------------------------------------

def _states(model):
    """(tensor name prefix, an empty state) for every layer state that a prompt cache keeps."""
    for i, (mixer, ffn) in enumerate(model.new_cache().layers):
        for part, state in (("mixer", mixer), ("ffn", ffn)):
            if state is not None:
                yield f"layers.{i}.{part}", state


def _ring_positions(checkpoints, window: int) -> np.ndarray:
    """Positions of the sliding-window rows kept: at checkpoint P_j those of
    max(P_{j-1}, P_j - window) .. P_j - 1, in checkpoint order."""
    parts, prev = [], 0
    for P in checkpoints:
        parts.append(np.arange(max(prev, P - window), P))
        prev = P
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def layout(model, checkpoints) -> dict[str, tuple[int, ...]]:
    """Every tensor of an entry whose checkpoints are `checkpoints` (the last is its length L)."""
    L, m = int(checkpoints[-1]), len(checkpoints)
    shapes = {"logits": (m, model.config.vocab_size)}
    for prefix, st in _states(model):
        if isinstance(st, (KVCache, SparseKV)):
            kv = st.kv if isinstance(st, SparseKV) else st
            row = kv.k.data.shape[1:]
            shapes[f"{prefix}.k"] = shapes[f"{prefix}.v"] = (L, *row)
            if isinstance(st, SparseKV):
                nb = n_complete_blocks(L, _nsa_shape(model, prefix))
                shapes[f"{prefix}.kc"] = shapes[f"{prefix}.vc"] = (nb, *row)
        elif isinstance(st, RingKV):
            R = len(_ring_positions(checkpoints, len(st.pos)))
            shapes[f"{prefix}.k"] = shapes[f"{prefix}.v"] = (R, *st.k.shape[1:])
        elif isinstance(st, ShiftState):
            shapes[f"{prefix}.x_prev"] = (m, len(st.x_prev))
            if isinstance(st, RecurrentState):
                shapes[f"{prefix}.S"] = (m, *st.S.shape)
    return shapes


def _nsa_shape(model, prefix: str):
    return model.layers[int(prefix.split(".")[1])].mixer.shape


class Entry:
    """The computed state of one token sequence, restorable at each of its checkpoints."""

    def __init__(self, tokens: np.ndarray, checkpoints: np.ndarray, tensors: dict[str, np.ndarray],
                 path: str | None = None, checksum: str | None = None):
        self.tokens = tokens                    # [L] int64
        self.checkpoints = checkpoints          # [m] int64, ascending, the last == L
        self.tensors = tensors
        self.path = path                        # its file, in a persistent store
        self.checksum = checksum                # set while a file's data is not yet verified

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.tensors.values())

    def restorable(self, ids: np.ndarray) -> int:
        """Index of the last checkpoint inside the prefix that `ids` share with this entry, or -1."""
        n = min(len(ids), len(self.tokens))
        differ = np.flatnonzero(self.tokens[:n] != ids[:n])
        common = int(differ[0]) if differ.size else n
        return int(np.searchsorted(self.checkpoints, common, side="right")) - 1

    def restore(self, model, j: int) -> Cache:
        """A fresh cache holding the first checkpoints[j] tokens (arrays shared until written)."""
        P, cache = int(self.checkpoints[j]), model.new_cache()
        t = self.tensors
        for prefix, st in zip((p for p, _ in _states(model)), _live_states(cache)):
            if isinstance(st, (KVCache, SparseKV)):
                kv = st.kv if isinstance(st, SparseKV) else st
                kv.k, kv.v = GrowingBuffer.holding(t[f"{prefix}.k"][:P]), GrowingBuffer.holding(t[f"{prefix}.v"][:P])
                if isinstance(st, SparseKV):
                    nb = n_complete_blocks(P, _nsa_shape(model, prefix))   # blocks that end before P
                    st.kc = GrowingBuffer.holding(t[f"{prefix}.kc"][:nb])
                    st.vc = GrowingBuffer.holding(t[f"{prefix}.vc"][:nb])
            elif isinstance(st, RingKV):
                W = len(st.pos)
                pos = _ring_positions(self.checkpoints[:j + 1], W)
                rows = np.flatnonzero(pos >= P - W)                         # the last W before P
                st.pos[pos[rows] % W] = pos[rows]
                st.k[pos[rows] % W], st.v[pos[rows] % W] = t[f"{prefix}.k"][rows], t[f"{prefix}.v"][rows]
            elif isinstance(st, ShiftState):
                st.x_prev = np.array(t[f"{prefix}.x_prev"][j])
                if isinstance(st, RecurrentState):
                    st.S = np.array(t[f"{prefix}.S"][j])                   # copied: the kernels update S in place
        cache.length = P
        return cache


def _live_states(cache: Cache):
    for mixer, ffn in cache.layers:
        for state in (mixer, ffn):
            if state is not None:
                yield state


class Recorder:
    """Builds the entry of a sequence as it is prefilled: `checkpoint` after each chunk that ends
    on a checkpoint, `entry` at the end. Starts from another entry's checkpoint j, or empty."""

    def __init__(self, model, base: Entry | None = None, j: int = -1):
        self.model = model
        self.checkpoints = [int(P) for P in base.checkpoints[:j + 1]] if base is not None else []
        self.pieces: dict[str, list[np.ndarray]] = {}      # per-checkpoint tensors, in order
        if self.checkpoints:
            live = _per_position_names(model)
            for name, shape in layout(model, self.checkpoints).items():
                if name not in live:
                    self.pieces[name] = [base.tensors[name][:shape[0]]]

    def checkpoint(self, cache: Cache, logits: np.ndarray) -> None:
        """Record the states of `cache` (now at position P) and the logits [V] of position P-1."""
        P = cache.length
        if self.checkpoints and P <= self.checkpoints[-1]:
            return
        prev = self.checkpoints[-1] if self.checkpoints else 0
        self.checkpoints.append(P)
        self._add("logits", logits[None])
        for (prefix, _), st in zip(_states(self.model), _live_states(cache)):
            if isinstance(st, RingKV):
                W = len(st.pos)
                positions = np.arange(max(prev, P - W), P)
                slots = positions % W
                assert (st.pos[slots] == positions).all(), "sliding-window ring out of step"
                self._add(f"{prefix}.k", st.k[slots])
                self._add(f"{prefix}.v", st.v[slots])
            elif isinstance(st, ShiftState):
                self._add(f"{prefix}.x_prev", st.x_prev[None])
                if isinstance(st, RecurrentState):
                    self._add(f"{prefix}.S", st.S[None])

    def _add(self, name: str, rows: np.ndarray) -> None:
        self.pieces.setdefault(name, []).append(np.array(rows, np.float32))   # a copy: states change

    def entry(self, tokens, cache: Cache) -> Entry:
        """The entry for `tokens` (what `cache` holds; its last checkpoint must be recorded)."""
        tokens = np.asarray(tokens, np.int64)
        if not self.checkpoints or self.checkpoints[-1] != len(tokens) or cache.length != len(tokens):
            raise AssertionError("Recorder.entry: the cache's last position is not a checkpoint")
        tensors = {}
        for (prefix, _), st in zip(_states(self.model), _live_states(cache)):
            if isinstance(st, (KVCache, SparseKV)):
                kv = st.kv if isinstance(st, SparseKV) else st
                tensors[f"{prefix}.k"], tensors[f"{prefix}.v"] = kv.k.view().copy(), kv.v.view().copy()
                if isinstance(st, SparseKV):
                    tensors[f"{prefix}.kc"], tensors[f"{prefix}.vc"] = st.kc.view().copy(), st.vc.view().copy()
        for name, parts in self.pieces.items():
            tensors[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return Entry(tokens, np.array(self.checkpoints, np.int64), tensors)


def _per_position_names(model) -> set[str]:
    """Tensors with one row per position or block (attention K/V, NSA compressed blocks): these
    are cut to length when restoring and copied whole from the live cache when recording."""
    return {f"{prefix}.{t}" for prefix, st in _states(model) if isinstance(st, (KVCache, SparseKV))
            for t in ("k", "v", "kc", "vc")}


# ---- the store -----------------------------------------------------------------------------------

class PromptCache:
    """A store of computed caches keyed by token prefix, LRU under a byte budget.

    model:          the model every entry belongs to.
    max_bytes:      budget for all entries (`Entry.nbytes`: the arrays; with `directory`, the
                    files); the least recently used entries are dropped to stay under it.
    directory:      None (in memory) or a directory of safetensors files, one per entry,
                    shared across processes (atomic writes; LRU order is the files' mtime).
                    Files made by another model or config, or damaged, raise PromptCacheError.
    snapshot_every: checkpoint spacing in tokens (recurrent/shift state snapshots).

    Not thread-safe: use one PromptCache from one thread at a time.
    """

    def __init__(self, model, max_bytes: int = 2**30, directory: str | os.PathLike | None = None,
                 snapshot_every: int = 256):
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise InputError(f"max_bytes: expected an integer >= 0, found {max_bytes!r}")
        if not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise InputError(f"snapshot_every: expected an integer >= 1, found {snapshot_every!r}")
        self.model, self.max_bytes, self.snapshot_every = model, max_bytes, snapshot_every
        self.identity = model_identity(model)
        self.entries: OrderedDict[str, Entry] = OrderedDict()     # least recently used first
        self.directory = os.fspath(directory) if directory is not None else None
        self.hits = self.misses = 0
        if self.directory is not None:
            self._open_directory()

    # ---- looking up and storing ----
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def lookup(self, token_ids) -> tuple[Entry | None, int]:
        """(entry, checkpoint index) restoring the most of `token_ids`, or (None, -1)."""
        ids = np.asarray(token_ids, np.int64)
        best, best_j, best_P = None, -1, 0
        for entry in reversed(self.entries.values()):            # most recent first: wins ties
            j = entry.restorable(ids)
            if j >= 0 and entry.checkpoints[j] > best_P:
                best, best_j, best_P = entry, j, int(entry.checkpoints[j])
        return best, best_j

    def restore(self, token_ids) -> tuple[Cache, np.ndarray | None, Recorder]:
        """(cache holding the longest stored prefix of token_ids, logits [V] of its last position
        or None when nothing was restored, a Recorder that continues that entry)."""
        entry, j = self.lookup(token_ids)
        if entry is None:
            self.misses += 1
            return self.model.new_cache(), None, Recorder(self.model)
        self.hits += 1
        self._verify(entry)
        self._touch(entry)
        return entry.restore(self.model, j), np.array(entry.tensors["logits"][j]), Recorder(self.model, entry, j)

    def prefill(self, token_ids, chunk: int = 256, forward: Callable | None = None,
                progress: Callable[[int, int], None] | None = None):
        """Restore the longest stored prefix of `token_ids`, feed the rest, store the result.

        Chunks end at every multiple of `snapshot_every` (a checkpoint) and are at most
        `chunk` tokens. `forward(ids, cache) -> logits [T or 1, V]` defaults to model.forward of the
        last token's logits;
        `progress(done, total)` is called after each chunk.
        Returns (cache, logits [V] of the last token, tokens restored, recorder).
        """
        ids = self.model.check_tokens(token_ids)
        forward = forward or (lambda chunk_ids, c: self.model.forward(chunk_ids, c, last_only=True))
        cache, logits, rec = self.restore(ids)
        restored = a = cache.length
        every = self.snapshot_every
        while a < len(ids):
            b = min(len(ids), a + chunk, (a // every + 1) * every)
            logits = forward(ids[a:b], cache)[-1]
            if b % every == 0 or b == len(ids):
                rec.checkpoint(cache, logits)
            a = b
            if progress:
                progress(a, len(ids))
        if restored < len(ids):
            self.add(rec.entry(ids, cache))
        return cache, logits, restored, rec

    def extend(self, rec: Recorder, token_ids, cache: Cache, logits: np.ndarray) -> None:
        """Offer a cache that went on past its prefill (generated tokens fed): token_ids are all
        it holds, logits [V] those of its last position. Stored if it holds anything new."""
        if rec.checkpoints and cache.length > rec.checkpoints[-1]:
            rec.checkpoint(cache, logits)
            self.add(rec.entry(token_ids, cache))

    def add(self, entry: Entry) -> None:
        """Store an entry; drops those it makes redundant, then the LRU ones over the budget."""
        if entry.nbytes > self.max_bytes:
            return
        for key, old in list(self.entries.items()):
            if _covers(entry, old):
                self._drop(key)
        key = _key(entry.tokens)
        if self.directory is not None:
            path = os.path.join(self.directory, key + SUFFIX)
            write_safetensors(path, entry.tensors, _metadata(entry, self.identity))
            entry = self._read(path)                   # use the mapped file, not a copy in memory
            entry.checksum = None                      # just written: no need to verify
        self.entries[key] = entry
        self.entries.move_to_end(key)
        while self.nbytes > self.max_bytes:
            self._drop(next(iter(self.entries)))

    def clear(self) -> None:
        """Drop every entry (and its file)."""
        for key in list(self.entries):
            self._drop(key)

    # ---- internals ----
    def _touch(self, entry: Entry) -> None:
        key = _key(entry.tokens)
        self.entries.move_to_end(key)
        if entry.path is not None:
            try:
                os.utime(entry.path)
            except OSError:
                pass

    def _drop(self, key: str) -> None:
        entry = self.entries.pop(key)
        if entry.path is not None:
            try:
                os.remove(entry.path)
            except FileNotFoundError:
                pass

    def _open_directory(self) -> None:
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise PromptCacheError(f"{self.directory}: expected a prompt-cache directory, found a file")
        os.makedirs(self.directory, exist_ok=True)
        paths = [os.path.join(self.directory, f) for f in os.listdir(self.directory) if f.endswith(SUFFIX)]
        for path in sorted(paths, key=os.path.getmtime):
            entry = self._read(path)
            self.entries[_key(entry.tokens)] = entry
        while self.nbytes > self.max_bytes:
            self._drop(next(iter(self.entries)))

    def _read(self, path: str) -> Entry:
        return read_entry(path, self.model, self.identity)

    def verify(self) -> None:
        """Check every entry's file against its checksum now (otherwise done at first use)."""
        for entry in self.entries.values():
            self._verify(entry)

    def _verify(self, entry: Entry) -> None:
        """Check a file's data against its checksum the first time it is used in this process."""
        if entry.checksum is not None:
            found = _checksum(entry)
            if found != entry.checksum:
                raise PromptCacheError(f"{entry.path}: damaged prompt-cache file: data checksum "
                                       f"expected {entry.checksum}, found {found} (delete the file)")
            entry.checksum = None


def _covers(new: Entry, old: Entry) -> bool:
    """Whether `new` can restore everything `old` can: old's tokens start new's, and so do its checkpoints."""
    return (len(old.tokens) <= len(new.tokens) and np.array_equal(new.tokens[:len(old.tokens)], old.tokens)
            and bool(np.isin(old.checkpoints, new.checkpoints).all()))


def _key(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(tokens, "<i8").tobytes()).hexdigest()[:32]


def _checksum(entry: Entry) -> str:
    """CRC-32 of the token ids, the checkpoints and every tensor (1-2 GB/s: a few ms per MB)."""
    crc = zlib.crc32(np.asarray(entry.tokens, "<i8").tobytes())
    crc = zlib.crc32(np.asarray(entry.checkpoints, "<i8").tobytes(), crc)
    for name in sorted(entry.tensors):
        crc = zlib.crc32(np.ascontiguousarray(entry.tensors[name]).view(np.uint8).reshape(-1), crc)
    return f"{crc:08x}"


# ---- files ---------------------------------------------------------------------------------------

def _metadata(entry: Entry, identity: str) -> dict[str, str]:
    return {"format": FORMAT, "model": identity, "tokens": json.dumps(entry.tokens.tolist()),
            "checkpoints": json.dumps(entry.checkpoints.tolist()), "crc32": _checksum(entry)}


def read_entry(path: str, model, identity: str | None = None) -> Entry:
    """Map one prompt-cache file and check it against `model`; its data checksum is checked
    later, at first use (`PromptCache._verify`). Raises PromptCacheError (a CogcoreError)."""
    identity = identity or model_identity(model)
    try:
        tensors, meta = read_safetensors(path)
    except CogcoreError as e:
        raise PromptCacheError(f"damaged prompt-cache file: {e}") from None

    def fail(what, expected, found):
        raise PromptCacheError(f"{path}: {what}: expected {expected}, found {found}")

    if meta.get("format") != FORMAT:
        fail("header field 'format'", repr(FORMAT), repr(meta.get("format")))
    if meta.get("model") != identity:
        fail("header field 'model' (made by another model or config)", f"this model's identity {identity[:16]}",
             f"{str(meta.get('model'))[:16]}")
    tokens, checkpoints = (_int_list(path, meta, key) for key in ("tokens", "checkpoints"))
    V = model.config.vocab_size
    if not tokens or not all(0 <= t < V for t in tokens):
        fail("header field 'tokens'", f"a non-empty list of token ids in 0..{V - 1}", f"{str(tokens)[:60]}")
    if (not checkpoints or checkpoints[-1] != len(tokens) or checkpoints[0] < 1
            or any(b <= a for a, b in zip(checkpoints, checkpoints[1:]))):
        fail("header field 'checkpoints'", f"ascending positions in 1..{len(tokens)} ending at {len(tokens)}",
             f"{str(checkpoints)[:60]}")
    expected = layout(model, checkpoints)
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        fail("tensors", f"those of this model's caches (missing {missing[:3]})", f"unexpected {extra[:3]}")
    for name, shape in expected.items():
        a = tensors[name]
        if a.dtype != np.float32 or a.shape != shape:
            fail(f"tensor '{name}'", f"float32 {list(shape)}", f"{a.dtype} {list(a.shape)}")
    crc = meta.get("crc32")
    if not isinstance(crc, str) or len(crc) != 8:
        fail("header field 'crc32'", "8 hex digits", repr(crc))
    return Entry(np.array(tokens, np.int64), np.array(checkpoints, np.int64), tensors, path, checksum=crc)


def _int_list(path: str, meta: dict, key: str) -> list[int]:
    try:
        value = json.loads(meta.get(key, ""))
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise PromptCacheError(f"{path}: header field '{key}': expected a JSON list of integers, "
                               f"found {str(meta.get(key))[:60]!r}")
    return value
