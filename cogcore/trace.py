"""Record what the model does on one prompt, layer by layer (`cogcore trace`).

    from cogcore import trace
    tr = trace.record(model, "recall ab=3 cd=7 ? cd =")
    tr.layers[1]["selected_blocks"]        # [T, Hkv, n] the NSA blocks each query kept
    trace.save(tr, "out/");  tr = trace.load("out/")

What is recorded, per layer (tensor names in `tr.layers[i]`, T = prompt tokens):

    moe               router_probs [T, E], experts [T, k] (best first), expert_weights [T, k]
    sparse_attention  compressed_weights [T, H, B]  p_h over compression blocks (0: not yet visible)
                      block_scores [T, Hkv, J]      selection-block scores (NaN: not yet a candidate)
                      selected_blocks [T, Hkv, n]   kept blocks, ascending (-1 pads)
                      selection [T, Hkv, J]         -1 not a candidate, 0 dropped, 1 kept by score
                                                    (or all kept), 2 forced (block 0, the query's, the one before)
                      gates [T, 3, H]               compressed, selected, window gate per head
                      attention [T, H, T]           the full causal softmax of the same q and k
    recurrent         decay [T, Hr, N] (w), in_context_rate [T, Hr, N] (a), state_norm [T, Hr] (|S|_F after t)
    full/sliding_attention  attention [T, H, T]

How: the prompt runs through the model's ordinary forward pass once, from position 0.
While it runs, each traced block's `ops` is wrapped by a `_Tap` that passes every
call through unchanged and, for the few calls that matter, recomputes the internals
from that call's own inputs with the reference functions of cogcore/blocks/. Nothing
in the forward pass knows about tracing, and the blocks' outputs are untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from .blocks import rwkv7
from .blocks.attention import AttentionMixer, softmax
from .blocks.moe import MoE, route
from .blocks.rwkv7 import RecurrentMixer
from .blocks.sparse_attention import SparseAttentionMixer, n_complete_blocks, overlap
from .errors import CogcoreError
from .tensorfile import read_safetensors, write_json, write_safetensors

FORMAT = "cogcore-trace"
VERSION = 1
TENSORS_FILE, META_FILE = "trace.safetensors", "trace.json"
INTEGER_TENSORS = ("experts", "selected_blocks", "selection")   # stored as float32, loaded as int64
NSA_FIELDS = ("nsa_compress_block", "nsa_compress_stride", "nsa_select_block", "nsa_select_count",
              "nsa_window")


@dataclasses.dataclass
class Trace:
    """One prompt's pass through a model: tokens, per-layer internals, and the next-token guess."""

    prompt: str
    token_ids: list[int]
    pieces: list[str]                       # the token pieces, for axis labels
    layer_types: list[str]
    mlp_types: list[str]
    nsa: dict[str, int]                     # the nsa_* config fields
    top_next: list[tuple[str, float]]       # the 5 likeliest next pieces after the prompt
    layers: list[dict[str, np.ndarray]]
    model: str = ""

    @property
    def T(self) -> int:
        return len(self.token_ids)


# ---- recording -----------------------------------------------------------------------

def record(model, prompt) -> Trace:
    """Run `prompt` (text, encoded with BOS as `generate` does, or a list of token ids) and trace it."""
    from .generate import encode_prompt
    ids = encode_prompt(model, prompt)
    layers: list[dict[str, np.ndarray]] = [{} for _ in model.layers]
    tapped = []
    try:
        for layer, store in zip(model.layers, layers):
            for block in (layer.mixer, layer.ffn):
                tap = _TAPS.get(type(block))
                if tap is not None:
                    tapped.append((block, block.ops))
                    block.ops = tap(block.ops, store)
        logits = model.forward(ids)
    finally:
        for block, ops in tapped:
            block.ops = ops
    p = softmax(logits[-1].astype(np.float64))
    best = np.argsort(-p, kind="stable")[:5]
    tok = model.tokenizer if isinstance(prompt, str) else None
    pieces = [tok.id_to_piece(i) if tok else str(i) for i in ids]
    cfg = model.config
    return Trace(prompt=prompt if isinstance(prompt, str) else "", token_ids=[int(i) for i in ids],
                 pieces=pieces, layer_types=list(cfg.layer_types), mlp_types=list(cfg.mlp_types),
                 nsa={f: int(getattr(cfg, f)) for f in NSA_FIELDS},
                 top_next=[(tok.id_to_piece(int(i)) if tok else str(int(i)), float(p[i])) for i in best],
                 layers=layers, model=model.path or "")


class _Tap:
    """Stands in for a block's `ops` while tracing: every call passes through unchanged."""

    def __init__(self, ops, store: dict):
        self._ops, self._store = ops, store

    def __getattr__(self, name):
        return getattr(self._ops, name)


class _MoETap(_Tap):
    def moe(self, x, router, gate_proj, up_proj, down_proj, k, norm_topk):
        logits = self._ops.linear(x, router)                                 # [T, E]
        top, wts = route(logits, k, norm_topk)
        self._store.update(router_probs=softmax(logits), experts=top, expert_weights=wts)
        return self._ops.moe(x, router, gate_proj, up_proj, down_proj, k, norm_topk)


class _AttentionTap(_Tap):
    def attention(self, q, k, v, q_pos, k_pos, window=0):
        self._store["attention"] = attention_weights(q, k, q_pos, k_pos, window)
        return self._ops.attention(q, k, v, q_pos, k_pos, window)


class _SparseAttentionTap(_Tap):
    def nsa_attention(self, q, K, V, kc, vc, q_pos, shape):
        out = self._ops.nsa_attention(q, K, V, kc, vc, q_pos, shape)
        self._store.update(nsa_internals(q, K, kc, q_pos, shape, kept=out[3]))
        return out

    def sigmoid(self, x):
        """The sparse mixer's only sigmoid is its gate: [T, 3H] -> recorded as [T, 3, H]."""
        g = self._ops.sigmoid(x)
        self._store["gates"] = g.reshape(len(g), 3, -1)
        return g


class _RecurrentTap(_Tap):
    def wkv7(self, r, w, k, v, kk, a, S):
        T, Hr, _ = r.shape
        state, norms = S.copy(), np.empty((T, Hr), np.float32)
        for t in range(T):                                                   # Eq. 13, one token at a time
            _, state = rwkv7.wkv7(r[t:t + 1], w[t:t + 1], k[t:t + 1], v[t:t + 1], kk[t:t + 1], a[t:t + 1],
                                  state)
            norms[t] = np.linalg.norm(state, axis=(1, 2))
        self._store.update(decay=w, in_context_rate=a, state_norm=norms)
        return self._ops.wkv7(r, w, k, v, kk, a, S)


_TAPS = {MoE: _MoETap, AttentionMixer: _AttentionTap, SparseAttentionMixer: _SparseAttentionTap,
         RecurrentMixer: _RecurrentTap}


def attention_weights(q, k, q_pos, k_pos, window: int = 0) -> np.ndarray:
    """Causal (optionally windowed) softmax weights of GQA attention: [T, H, S] (SPEC 4.2)."""
    T, H, hd = q.shape
    G = H // k.shape[1]
    visible = k_pos[None, :] <= q_pos[:, None]                                # [T, S]
    if window:
        visible &= k_pos[None, :] > q_pos[:, None] - window
    kh = np.repeat(k, G, axis=1)                                             # [S, H, hd] head h reads h // G
    scores = np.einsum("thd,shd->ths", q, kh) / np.float32(np.sqrt(hd))
    return softmax(np.where(visible[:, None, :], scores, -np.inf))


def nsa_internals(q, K, kc, q_pos, shape, kept) -> dict[str, np.ndarray]:
    """SPEC 4.3 steps 2-4 recomputed from the branch's inputs: weights, scores, selection map."""
    T, H, hd = q.shape
    Hkv = K.shape[1]
    G = H // Hkv
    last = int(q_pos[-1])
    B, J = n_complete_blocks(last + 1, shape), last // shape.select_block + 1
    weights = np.zeros((T, H, B), np.float32)
    scores = np.full((T, Hkv, J), np.nan, np.float32)
    selection = np.full((T, Hkv, J), -1, np.int64)
    for ti, t in enumerate(int(p) for p in q_pos):
        n_vis, n_cand = n_complete_blocks(t + 1, shape), t // shape.select_block + 1
        overlap_weight = overlap(n_vis, n_cand, shape) / np.float32(shape.stride)   # [n_vis, n_cand]
        for g in range(Hkv):
            heads = slice(g * G, (g + 1) * G)
            if n_vis:
                p = softmax(q[ti, heads] @ kc[:n_vis, g].T / np.float32(np.sqrt(hd)))   # [G, n_vis]
                weights[ti, heads, :n_vis] = p
                scores[ti, g, :n_cand] = p.sum(axis=0) @ overlap_weight
            else:
                scores[ti, g, :n_cand] = 0
            selection[ti, g, :n_cand] = 0
            chosen = kept[ti, g][kept[ti, g] >= 0]
            selection[ti, g, chosen] = 1
            if n_cand > shape.select_count:
                cur = t // shape.select_block
                selection[ti, g, [0, cur - 1, cur]] = 2
    k_pos = np.arange(len(K))
    return {"compressed_weights": weights, "block_scores": scores, "selected_blocks": kept.copy(),
            "selection": selection, "attention": attention_weights(q, K[:last + 1], q_pos, k_pos[:last + 1])}


# ---- files -----------------------------------------------------------------------------

def save(trace: Trace, out_dir: str | os.PathLike) -> list[str]:
    """Write trace.safetensors and trace.json into `out_dir` (made if needed), each atomically."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tensors = {f"layers.{i}.{name}": np.ascontiguousarray(a, dtype=np.float32)
               for i, layer in enumerate(trace.layers) for name, a in layer.items()}
    paths = [os.path.join(out_dir, TENSORS_FILE), os.path.join(out_dir, META_FILE)]
    write_safetensors(paths[0], tensors, metadata={"format": FORMAT})
    meta = {"format": FORMAT, "version": VERSION, "model": trace.model, "prompt": trace.prompt,
            "token_ids": trace.token_ids, "pieces": trace.pieces, "layer_types": trace.layer_types,
            "mlp_types": trace.mlp_types, "nsa": trace.nsa, "top_next": trace.top_next,
            "tensors": sorted(tensors)}
    write_json(paths[1], meta)
    return paths


def load(trace_dir: str | os.PathLike) -> Trace:
    """Read a trace written by `save` (or `cogcore trace --out DIR`); a bad file is a CogcoreError."""
    trace_dir = os.fspath(trace_dir)
    meta_path = os.path.join(trace_dir, META_FILE)
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CogcoreError(f"{meta_path}: trace metadata not found (expected a directory written by "
                           f"`cogcore trace --out`)") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CogcoreError(f"{meta_path}: expected valid UTF-8 JSON, found a parse error: {e}") from None
    _check_meta(meta_path, meta)
    tensors, _ = read_safetensors(os.path.join(trace_dir, TENSORS_FILE))
    T, n_layers = len(meta["token_ids"]), len(meta["layer_types"])
    layers: list[dict[str, np.ndarray]] = [{} for _ in range(n_layers)]
    for name in meta["tensors"]:
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "layers" or not parts[1].isdigit() or int(parts[1]) >= n_layers:
            raise CogcoreError(f"{meta_path}: tensor '{name}': expected 'layers.<i>.<name>' with i < "
                               f"{n_layers}, found that name")
        if name not in tensors:
            raise CogcoreError(f"{trace_dir}/{TENSORS_FILE}: expected tensor '{name}' (listed in "
                               f"{META_FILE}), found no such tensor")
        a = tensors[name]
        if a.ndim == 0 or a.shape[0] != T:
            raise CogcoreError(f"{trace_dir}/{TENSORS_FILE}: tensor '{name}': expected {T} rows (one per "
                               f"token), found shape {list(a.shape)}")
        a = np.array(a, dtype=np.float32)
        if parts[2] in INTEGER_TENSORS:
            if not ((np.abs(a) < 2 ** 31).all() and (a == np.round(a)).all()):
                raise CogcoreError(f"{trace_dir}/{TENSORS_FILE}: tensor '{name}': expected whole numbers "
                                   f"(indices), found fractions or NaN")
            a = a.astype(np.int64)
        layers[int(parts[1])][parts[2]] = a
    return Trace(prompt=meta["prompt"], token_ids=meta["token_ids"], pieces=meta["pieces"],
                 layer_types=meta["layer_types"], mlp_types=meta["mlp_types"], nsa=meta["nsa"],
                 top_next=[(str(p), float(q)) for p, q in meta["top_next"]], layers=layers,
                 model=meta["model"])


def _check_meta(path: str, meta) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CogcoreError(f"{path}: expected a JSON object with \"format\": \"{FORMAT}\", found {found!r}")
    if meta.get("version") != VERSION:
        raise CogcoreError(f"{path}: expected version {VERSION}, found {meta.get('version')!r}")
    expected = {"model": str, "prompt": str, "token_ids": list, "pieces": list, "layer_types": list,
                "mlp_types": list, "nsa": dict, "top_next": list, "tensors": list}
    for key, kind in expected.items():
        if not isinstance(meta.get(key), kind):
            raise CogcoreError(f"{path}: field '{key}': expected a {kind.__name__}, "
                               f"found {type(meta.get(key)).__name__}")
    T = len(meta["token_ids"])
    if T == 0 or len(meta["pieces"]) != T or not all(isinstance(i, int) for i in meta["token_ids"]):
        raise CogcoreError(f"{path}: expected a non-empty list of integer 'token_ids' and one piece each, "
                           f"found {T} ids and {len(meta['pieces'])} pieces")
    if len(meta["mlp_types"]) != len(meta["layer_types"]):
        raise CogcoreError(f"{path}: expected one mlp type per layer type, found {len(meta['mlp_types'])} "
                           f"and {len(meta['layer_types'])}")
    if not all(isinstance(n, str) for n in meta["tensors"]):
        raise CogcoreError(f"{path}: field 'tensors': expected a list of names")
    if not all(isinstance(e, list) and len(e) == 2 and isinstance(e[1], (int, float)) for e in meta["top_next"]):
        raise CogcoreError(f"{path}: field 'top_next': expected [piece, probability] pairs")
