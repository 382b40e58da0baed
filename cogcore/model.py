"""The whole model (SPEC Section 4) and `cogcore.load`.

    x = embed_tokens[tokens]                       # [T, D]
    if embedding_norm: x = Norm(x; embed_norm)
    for each layer i:
        h = x + Mixer_i(Norm(x; input_layernorm_i))
        x = h + FFN_i(Norm(h; post_attention_layernorm_i))
    logits = Norm(x; norm) @ lm_head.T             # [T, V]
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os

import numpy as np

from .blocks.attention import AttentionMixer
from .blocks.ffn import ChannelMix, DenseFFN
from .blocks.moe import MoE
from .blocks.norm import Norm
from .blocks.rwkv7 import RecurrentMixer
from .blocks.sparse_attention import SparseAttentionMixer
from .cache import Cache, KVCache
from .config import Config
from .dtypes import f32
from .errors import CogcoreError, ConfigError, InputError, WeightsError
from .families import family_of, map_tensors
from .ops import FusedLayerStep, FusedResidualNorm, Ops, ops_for
from .tensorfile import read_model_tensors
from .weights import Weights

SMALL_TENSOR = 1 << 20   # tensors up to this many elements are checked for NaN/Inf at load


@dataclasses.dataclass
class Pass:
    """What one forward call carries from layer to layer, and what it records for inspection."""

    positions: np.ndarray                     # [T] absolute positions of the chunk
    layer: int = 0                            # the layer running now
    v_first: np.ndarray | None = None         # [T, D] values of the first recurrent layer
    expert_counts: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)    # layer -> [E]
    selected_blocks: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # layer -> [T, Hkv, n]


@dataclasses.dataclass
class Layer:
    input_norm: Norm
    mixer: object
    post_norm: Norm
    ffn: object


class Model:
    """A cogcore model: weights bound to blocks, and the forward pass over a cache."""

    def __init__(self, config: Config, weights: Weights, backend: str | Ops = "numba", path: str | None = None):
        """backend: a name in cogcore.ops.BACKENDS, or an ops table."""
        self.ops = ops = backend if isinstance(backend, Ops) else ops_for(backend)
        self.config, self.backend, self.path = config, ops.name, path
        self.fused_norms = isinstance(ops, FusedResidualNorm)   # once: a Protocol isinstance costs ~0.4 ms
        self.weights = weights            # the tensors by name (a prompt cache hashes them)
        cfg, D, V = config, config.hidden_size, config.vocab_size

        def norm(prefix):
            return Norm(weights, prefix, D, cfg.norm_type, cfg.norm_eps, ops, cfg.norm_bias)

        self.embed_tokens = weights.take("model.embed_tokens.weight", (V, D))
        self.embed_norm = norm("model.embed_norm") if cfg.embedding_norm else None
        self.layers = []
        for i, (mixer_type, mlp_type) in enumerate(zip(cfg.layer_types, cfg.mlp_types)):
            p = f"model.layers.{i}"
            if mixer_type == "recurrent":
                mixer = RecurrentMixer(weights, p, cfg, ops, first=(i == cfg.first_recurrent_layer))
            elif mixer_type == "sparse_attention":
                mixer = SparseAttentionMixer(weights, p, cfg, ops)
            else:
                mixer = AttentionMixer(weights, p, cfg, ops, mixer_type)
            ffn = {"moe": MoE, "dense": DenseFFN, "channel_mix": ChannelMix}[mlp_type](weights, p, cfg, ops)
            self.layers.append(Layer(norm(f"{p}.input_layernorm"), mixer,
                                     norm(f"{p}.post_attention_layernorm"), ffn))
        self.norm = norm("model.norm")
        self.lm_head = (self.embed_tokens if cfg.tie_word_embeddings
                        else weights.take("lm_head.weight", (V, D)))
        self.layer_plans = self._layer_plans()
        self.last_pass: Pass | None = None
        self._tokenizer = None
        self._check_small_tensors_finite(weights)

    def _layer_plans(self) -> list:
        """Per layer, the ops table's plan for decoding it in one op (cogcore.ops.FusedLayerStep) when
        it is a full-attention + MoE layer of the shape that op covers and the backend covers its
        weights; else None (the layer runs op by op)."""
        plans = [None] * len(self.layers)
        if not (self.fused_norms and isinstance(self.ops, FusedLayerStep)):
            return plans
        for i, layer in enumerate(self.layers):
            a, f, post = layer.mixer, layer.ffn, layer.post_norm
            after = self.layers[i + 1].input_norm if i + 1 < len(self.layers) else self.norm
            if (type(a) is AttentionMixer and not a.window and a.bias is None and not a.qk_norm
                    and type(f) is MoE and f.shared is None
                    and post.b is None and after.b is None and post.eps == after.eps):
                plans[i] = self.ops.attention_moe_plan(a.wq, a.wk, a.wv, a.wo, a.inv_freq, f.router, f.gate_proj,
                                                       f.up_proj, f.down_proj, f.k, f.norm_topk, post.w, after.w,
                                                       post.eps)
        return plans

    def _check_small_tensors_finite(self, weights: Weights) -> None:
        """NaN/Inf in a norm, vector or router weight is an error naming it, before it crashes a kernel.

        These are cheap to scan; the big matrices are checked in flight instead, by what
        each layer puts out (see `_check_finite`).
        """
        for name in sorted(weights.used):
            a = weights.tensors[name]
            checked = a.size <= SMALL_TENSOR or name.endswith(".mlp.gate.weight")   # a NaN router crashes top-k
            if checked and not np.isfinite(f32(a)).all():
                bad = np.flatnonzero(~np.isfinite(f32(a)).reshape(-1))
                raise WeightsError(f"{weights.where(name)}: tensor '{name}': expected finite values, found "
                                   f"{bad.size} NaN/Inf (first at flat index {bad[0]})")

    def _check_finite(self, x: np.ndarray, what: str) -> None:
        """A WeightsError naming the layer when activations went NaN/Inf (a corrupt big weight).
        The sum of squares is finite when every value is (one BLAS dot: a third of the time of
        isfinite(x).all() on a decode row); only when it is not (or overflowed) is each value looked at."""
        if not (math.isfinite(np.vdot(x, x)) or np.isfinite(x).all()):
            raise WeightsError(f"{self.path or '<memory>'}: non-finite values (NaN or Inf) after {what}; "
                               f"a weight there holds NaN/Inf or values so large they overflow float32")

    # ---- caches and the forward pass -------------------------------------
    def new_cache(self) -> Cache:
        """An empty cache: position 0 comes next."""
        return Cache([(layer.mixer.new_state(), layer.ffn.new_state()) for layer in self.layers])

    def check_tokens(self, token_ids, start: int = 0) -> np.ndarray:
        """Token ids as an int64 array [T], or an InputError saying what is wrong with them."""
        ids = np.asarray(token_ids)
        if ids.ndim != 1:
            raise InputError(f"token_ids: expected a 1-D sequence of ints, found shape {list(ids.shape)}")
        if ids.size == 0:
            raise InputError("token_ids: expected at least one token, found an empty sequence")
        if ids.dtype.kind not in "iu":
            raise InputError(f"token_ids: expected integers, found dtype {ids.dtype}")
        V = self.config.vocab_size
        if ids.min() < 0 or ids.max() >= V:
            bad = np.flatnonzero((ids < 0) | (ids >= V))
            raise InputError(f"token_ids[{bad[0]}]: expected a token id in 0..{V - 1} (vocab_size={V}), "
                             f"found {ids[bad[0]]}")
        limit = self.config.max_position_embeddings
        if start + ids.size > limit:
            raise InputError(f"token_ids: {start} cached + {ids.size} new positions exceed "
                             f"max_position_embeddings={limit}")
        return ids.astype(np.int64)

    def forward(self, token_ids, cache: Cache | None = None, *, last_only: bool = False) -> np.ndarray:
        """Logits [T, V] float32 for token ids [T]; with a cache, the tokens continue it.

        Without a cache the tokens start at position 0 on a fresh one. Feeding a
        sequence whole or in any split gives the same logits (SPEC Section 5).
        last_only: the logits of the last token only, [1, V]: all that a prefill needs, and
        lm_head is then read for one token instead of T (a third of a 512-token prefill at a
        32000-token vocabulary).
        """
        cache = cache if cache is not None else self.new_cache()
        ids = self.check_tokens(token_ids, cache.length)
        with np.errstate(all="ignore"):   # NaN/Inf are reported by name after each layer, not as warnings
            return self._forward(ids, cache, last_only)

    __call__ = forward

    def _forward(self, ids: np.ndarray, cache: Cache, last_only: bool) -> np.ndarray:
        ops = self.ops
        ctx = Pass(positions=np.arange(cache.length, cache.length + len(ids)))

        x = ops.embed(self.embed_tokens, ids)                           # [T, D]
        self._check_finite(x, "the embedding lookup (model.embed_tokens.weight)")
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        if self.fused_norms:
            xn = self._layers_fused(x, cache, ctx)
        else:
            for i, (layer, (mixer_state, ffn_state)) in enumerate(zip(self.layers, cache.layers)):
                ctx.layer = i
                h = x + layer.mixer(layer.input_norm(x), mixer_state, ctx)
                self._check_finite(h, self._mixer_name(i))          # the router reads Norm(h)
                x = h + layer.ffn(layer.post_norm(h), ffn_state, ctx)
                self._check_finite(x, self._ffn_name(i))
            xn = self.norm(x)
        if last_only:
            xn = xn[-1:]
        logits = ops.linear(xn, self.lm_head)                           # Norm(x; norm) @ lm_head.T [T, V]
        self._check_finite(logits, "the output projection (lm_head.weight)")
        cache.length += len(ids)
        self.last_pass = ctx
        return logits

    def _mixer_name(self, i: int) -> str:
        return f"layer {i}'s {self.config.layer_types[i]} mixer (model.layers.{i})"

    def _ffn_name(self, i: int) -> str:
        return f"layer {i}'s {self.config.mlp_types[i]} feed-forward (model.layers.{i})"

    def _layers_fused(self, x: np.ndarray, cache: Cache, ctx: Pass) -> np.ndarray:
        """The layer loop of `forward` with each residual add fused into the norm that reads its
        sum next (this layer's post norm, the next layer's input norm); returns Norm(x; norm).
        Same results as the plain loop, one pass over each sum instead of two."""
        xn = self.layers[0].input_norm(x)
        ops = self.ops
        for i, (layer, (mixer_state, ffn_state)) in enumerate(zip(self.layers, cache.layers)):
            ctx.layer = i
            plan = self.layer_plans[i]
            if (plan is not None and len(x) == 1 and type(mixer_state) is KVCache
                    and layer.mixer.ops is ops and layer.ffn.ops is ops):    # (a tracer swaps a block's ops)
                x, xn = self._layer_step(plan, i, x, xn, mixer_state, ctx)
                continue
            h, hn = layer.post_norm.residual(x, layer.mixer(xn, mixer_state, ctx))
            self._check_finite(hn, self._mixer_name(i))             # the router's input
            next_norm = self.layers[i + 1].input_norm if i + 1 < len(self.layers) else self.norm
            x, xn = next_norm.residual(h, layer.ffn(hn, ffn_state, ctx))
            self._check_finite(xn, self._ffn_name(i))
        return xn

    def _layer_step(self, plan, i: int, x: np.ndarray, xn: np.ndarray, kv: KVCache, ctx: Pass):
        """One decode token through layer i as the one op of `FusedLayerStep`: the same (h, Norm(h))
        as the loop above, the same NaN/Inf errors naming the layer."""
        K, V, n = kv.room(1)
        x, xn, counts, status = self.ops.attention_moe_step(plan, x, xn, K, V, n)
        kv.commit(1)
        ctx.expert_counts[i] = counts
        if status:
            self._check_finite(xn, self._mixer_name(i) if status == 1 else self._ffn_name(i))
        return x, xn

    # ---- text -------------------------------------------------------------
    @property
    def tokenizer(self):
        """The tokenizer of the model directory (sentencepiece, or a family's tokenizer.json), loaded on first use."""
        if self._tokenizer is None:
            from .tokenizer import load_tokenizer
            self._tokenizer = load_tokenizer(self.path, self.config)
        return self._tokenizer

    def generate(self, prompt: str, **options) -> str:
        """The continuation of `prompt` (prompt excluded); options as `cogcore.generate.generate`."""
        from .generate import generate
        return generate(self, prompt, **options)


def load(path: str | os.PathLike, backend: str = "numba", strict: bool = True,
         int8_activations: bool = False) -> Model:
    """Load a model directory (SPEC Section 1): config.json plus memory-mapped safetensors weights.

    The directory may also be an unmodified Hugging Face directory of a public family
    (`cogcore.families`: llama, qwen2, qwen3, mixtral, qwen2_moe, qwen3_moe, olmoe, and
    fla's RWKV-7 layout, rwkv7), and `path` a GGUF file (cogcore.gguf_model, docs/gguf.md).

    backend: "numba" (compiled kernels, default) or "numpy" (the reference).
    strict: tensors the config does not use are an error (False: ignore them).
    int8_activations: dot q8_0 / q4_0 weights with the activations rounded to q8_0 blocks, in
    integers, as GGML does on the CPU (faster, not the float path: docs/quantization.md).
    """
    from .gguf_model import is_gguf, read_gguf
    ops = ops_for(backend, int8_activations)
    if is_gguf(path):
        path = os.fspath(path)
        config, tensors, origin = read_gguf(path)
    else:
        path = check_model_dir(path)
        config = Config.from_file(os.path.join(path, "config.json"))
        tensors, origin = read_model_tensors(path)
        family = family_of(config)
        if family is not None:           # a public family's names -> cogcore's, experts stacked lazily
            tensors, origin = map_tensors(family, tensors, origin, path, config.tie_word_embeddings)
    weights = Weights(tensors, origin, source=path)
    model = Model(config, weights, ops, path)
    if strict:
        weights.check_all_used()
    freeze_live_objects()
    return model


def freeze_live_objects() -> None:
    """Move every object alive now into the garbage collector's permanent generation (gc.freeze).

    After the kernels are loaded a process holds ~110K objects that the collector tracks (Numba's
    compiled state, mostly), and a decode step leaves a few behind, so a full collection runs every
    ~200 steps and scans them all: ~45 ms each on the Mixtral-shape model, 0.2 ms a token on
    average (docs/performance.md, "Fifth session"). Frozen objects are still freed by their
    reference counts; only reference cycles among them are never collected.
    """
    gc.collect()
    gc.freeze()


def check_model_dir(path) -> str:
    """`path` as a str, or an error unless it names an existing directory."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"path: expected a model directory (str or path), found {path!r:.60}")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CogcoreError(f"{path}: expected a model directory (config.json + safetensors) or a GGUF "
                           f"file, found a file that is neither"
                           if os.path.exists(path) else f"{path}: model directory not found "
                           f"(expected config.json + safetensors there)")
    return path


def tensor_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Every tensor the config needs, with its shape, in model order (the blocks are the source)."""
    recorder = _ShapeRecorder()
    Model(config, recorder, backend="numpy")
    return recorder.shapes


class _ShapeRecorder(Weights):
    """Hands out zero-stride placeholders of any shape and records what was asked for."""

    def __init__(self):
        super().__init__({})
        self.shapes: dict[str, tuple[int, ...]] = {}

    def take(self, name, shape):
        self.shapes[name] = tuple(shape)
        try:
            return np.broadcast_to(np.float32(0), shape)
        except ValueError:     # more elements than an array can address
            raise ConfigError(f"config: tensor '{name}' would have shape {list(shape)}, "
                              f"{math.prod(shape):.3g} elements: too big for any machine") from None


def parameter_counts(config: Config) -> dict[str, int]:
    """Parameters in total, and active per token: everything but the experts a token does not use.

    `active` counts the whole embedding table and lm_head (as Mixtral's figures do);
    `active_non_embedding` leaves both out.
    """
    shapes = tensor_shapes(config)
    total = sum(math.prod(s) for s in shapes.values())   # math.prod: Python ints never overflow
    idle = 0
    for i, mlp in enumerate(config.mlp_types):
        if mlp == "moe":
            per_expert = sum(math.prod(shapes[f"model.layers.{i}.mlp.experts.{p}"][1:])
                             for p in ("gate_proj", "up_proj", "down_proj"))
            idle += (config.num_experts - config.num_experts_per_tok) * per_expert
    embedding = math.prod(shapes["model.embed_tokens.weight"])
    embedding += math.prod(shapes.get("lm_head.weight", (0,)))
    return {"total": total, "active": total - idle, "active_non_embedding": total - idle - embedding,
            "embedding": embedding}


def decode_bytes(name: str, a, config: Config) -> int:
    """Bytes of tensor `name` (array or QuantTensor `a`) that decoding one token reads: all of
    it, except the unchosen experts' share, all but one row of the embedding table (which,
    when tied, lm_head then reads whole), and the NSA compression MLP, which runs once per
    `nsa_compress_stride` tokens (its share per token)."""
    if name == "model.embed_tokens.weight":
        return a.nbytes // a.shape[0] + (a.nbytes if config.tie_word_embeddings else 0)
    if ".mlp.experts." in name:
        return a.nbytes * config.num_experts_per_tok // config.num_experts
    if ".compress_k." in name or ".compress_v." in name:      # NSA compression: once per stride tokens
        return a.nbytes // config.nsa_compress_stride
    return a.nbytes
