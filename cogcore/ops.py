"""The ops contract: every hot function the blocks call, with its shapes.

A block reads its weights at construction and runs its hot loops through an ops
table (`block.ops`), so that a backend swaps in compiled twins of exactly these
functions while the blocks stay as written. Two tables implement `Ops`:

- `cogcore.blocks.ReferenceOps` (backend "numpy"): the readable NumPy reference;
- `cogcore.backends.NumbaOps` (backend "numba"): the kernels of `cogcore.kernels`
  (the top-level `kernels/` folder), naming each op that stays on the reference.

`ops_for(backend)` is the one place that turns a backend name into its table.
Optional capabilities: `FusedResidualNorm`, a fast path that lets the model
fuse each residual add with the norm that reads its sum (`Model.forward`; the
results are the unfused ones, to the bit), `FusedLinears`, attention's q/k/v
projections in one op, `FusedAttentionStep`, full attention's RoPE, cache write and
attention in one op, `FusedSparseStep`, the same for sparse attention with its
gates, `FusedLayerStep`, a decode token through a whole full-attention + MoE
layer in one op, `FusedRecurrent`, the RWKV-7 step with its
projections in one op (decode's fast path), and `Compiled`, a table with kernels
to compile (or load from Numba's cache) before timing anything.

Weights `W` are passed in their stored dtype (float32, float16, or bfloat16 as
uint16 bits); activations are float32. T tokens, D hidden size, H query heads,
Hkv kv heads of hd channels, S keys, E experts.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .errors import InputError

BACKENDS = ("numba", "numpy")


def ops_for(backend: str, int8_activations: bool = False) -> Ops:
    """The ops table of a backend name, or an InputError naming the choices. int8_activations:
    quantized weights are dotted with activations rounded to q8_0 blocks (GGML's CPU arithmetic;
    docs/quantization.md), the table's `int8_activations` attribute."""
    if backend == "numpy":
        from .blocks import ReferenceInt8Ops, ReferenceOps
        return ReferenceInt8Ops() if int8_activations else ReferenceOps()
    if backend == "numba":
        from .backends import NumbaInt8Ops, NumbaOps   # imported on demand: loading the kernels is not free
        return NumbaInt8Ops() if int8_activations else NumbaOps()
    raise InputError(f"backend: expected one of {', '.join(BACKENDS)}, found {backend!r}")


@runtime_checkable
class Ops(Protocol):
    name: str      # the backend's name: "numpy" or "numba"

    def linear(self, x: np.ndarray, W: np.ndarray) -> np.ndarray:
        """y = x W^T; x [..., in] float32, W [out, in] stored -> [..., out] float32."""

    def embed(self, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Rows of the embedding table [V, D] for token ids [T] -> [T, D] float32."""

    def sigmoid(self, x: np.ndarray) -> np.ndarray:
        """1 / (1 + exp(-x)), elementwise."""

    def rmsnorm(self, x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        """x [..., D] float32, w [D] stored -> [..., D] float32."""

    def layernorm(self, x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
        """x [..., D] float32, w, b [D] stored -> [..., D] float32 (biased variance)."""

    def rope(self, u: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
        """u [T, heads, hd] float32, positions [T], inv_freq [hd/2] float64 -> rotated [T, heads, hd]."""

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray,
                  k_pos: np.ndarray, window: int = 0) -> np.ndarray:
        """Causal GQA softmax attention; q [T, H, hd], k, v [S, Hkv, hd], q_pos [T], k_pos [S] -> [T, H, hd].

        A key is visible when k_pos <= q_pos and (window == 0 or k_pos > q_pos - window);
        every query sees at least its own key. Keys may come in any position order.
        """

    def nsa_compress(self, X: np.ndarray, first: int, last: int, pos: np.ndarray, fc1: np.ndarray,
                     fc2: np.ndarray, shape) -> np.ndarray:
        """Compressed tokens of NSA blocks first..last-1: X [S, Hkv, hd] -> [last-first, Hkv, hd].

        pos [l, hd], fc1 [hc, l*hd], fc2 [hd, hc] stored; shape a blocks.sparse_attention.NSAShape.
        """

    def nsa_attention(self, q: np.ndarray, K: np.ndarray, V: np.ndarray, kc: np.ndarray, vc: np.ndarray,
                      q_pos: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The three NSA branches: q [T, H, hd], K, V [S, Hkv, hd], kc, vc [B, Hkv, hd], q_pos [T]
        -> o_cmp, o_slc, o_win [T, H, hd] float32 and the kept blocks [T, Hkv, n] int64 (-1 pads)."""

    def wkv7(self, r: np.ndarray, w: np.ndarray, k: np.ndarray, v: np.ndarray, kk: np.ndarray,
             a: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The RWKV-7 recurrence: r, w, k, v, kk, a [T, Hr, N] float32, S [Hr, N, N] float32
        -> y [T, Hr, N] and the final state (S may be updated in place)."""

    def moe(self, x: np.ndarray, router: np.ndarray, gate_proj: np.ndarray, up_proj: np.ndarray,
            down_proj: np.ndarray, k: int, norm_topk: bool) -> tuple[np.ndarray, np.ndarray]:
        """Top-k routed SwiGLU experts: x [T, D], router [E, D], gate/up [E, F, D], down [E, D, F]
        -> y [T, D] float32 and the tokens each expert received [E] int64."""

    def token_probabilities(self, logits: np.ndarray, temperature: float = 1.0, top_k: int = 0,
                            top_p: float = 1.0, min_p: float = 0.0) -> np.ndarray:
        """The sampler's distribution [V] float64 (tempered softmax, top-k, top-p, min-p, renormalised)."""


@runtime_checkable
class FusedResidualNorm(Protocol):
    """The residual add fused with the norm that reads its sum (a fast path; optional)."""

    def add_rmsnorm(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, eps: float
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(h, rmsnorm(h)) with h = x + y; x, y [..., D] float32, w [D] stored."""

    def add_layernorm(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(h, layernorm(h)) with h = x + y; x, y [..., D] float32, w, b [D] stored."""


@runtime_checkable
class FusedLinears(Protocol):
    """Several projections of one input as one op (a fast path for decode; optional): one kernel
    call and one parallel region instead of one per weight, the input read (or quantized) once."""

    def linears(self, x: np.ndarray, Ws: tuple) -> tuple[np.ndarray, ...]:
        """(linear(x, W) for W in Ws); x [..., in] float32, each W [out_i, in] stored."""


@runtime_checkable
class FusedAttentionStep(Protocol):
    """Full attention's decode step between its projections as one op (optional): RoPE of q and k, the
    cache write and the attention. `cogcore.blocks.attention.AttentionMixer` is the reference."""

    def rope_attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray,
                    inv_freq: np.ndarray, K: np.ndarray, V: np.ndarray, n: int) -> np.ndarray:
        """q [T, H, hd], k, v [T, Hkv, hd] before RoPE, positions [T] = n..n+T-1, inv_freq [hd/2]; K, V
        [>= n + T, Hkv, hd] float32 buffers whose rows 0..n-1 hold positions 0..n-1 (a KVCache's):
        rows n..n+T-1 become rope(k) and v, and the result is causal attention of rope(q) over rows
        0..n+T-1 -> [T, H, hd] float32."""


@runtime_checkable
class FusedSparseStep(Protocol):
    """Sparse attention's decode step as one op, `nsa_step` (optional), for a step that completes no
    compression block, and the op between its projections that a table may build it from, `rope_nsa`:
    RoPE of q and k, the cache write, the three NSA branches and their gates.
    `cogcore.blocks.sparse_attention.SparseAttentionMixer` is the reference."""

    def nsa_step(self, x: np.ndarray, Ws: tuple, positions: np.ndarray, inv_freq: np.ndarray, K: np.ndarray,
                 V: np.ndarray, n: int, kc: np.ndarray, vc: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
        """x [T, D] the normed input, Ws the stored q, k, v, gate and output projections ([H hd, D],
        [Hkv hd, D] twice, [3H, D], [D, H hd]); the rest as `rope_nsa` takes it -> (the mixer's output
        [T, D], the kept blocks [T, Hkv, n])."""

    def rope_nsa(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, gate: np.ndarray, positions: np.ndarray,
                 inv_freq: np.ndarray, K: np.ndarray, V: np.ndarray, n: int, kc: np.ndarray, vc: np.ndarray,
                 shape) -> tuple[np.ndarray, np.ndarray]:
        """q [T, H, hd], k, v [T, Hkv, hd] before RoPE, gate [T, 3H] (x gate_proj^T), positions [T] =
        n..n+T-1, inv_freq [hd/2]; K, V as `rope_attend` takes them (rows n..n+T-1 become rope(k), v);
        kc, vc [B, Hkv, hd] every block complete by position n+T-1 -> (sigmoid(gate) as [3, H] times
        o_cmp, o_slc, o_win, summed: [T, H, hd] float32; the kept blocks [T, Hkv, n] int64)."""


@runtime_checkable
class FusedLayerStep(Protocol):
    """One decode token through a whole full-attention + MoE layer as one op (optional): the residual
    adds and norms, q/k/v, RoPE, the cache write, attention, o, routing and the chosen experts, with
    no Python between them. For layers without biases, q/k norms, sliding window or shared expert,
    with RMSNorms (the model checks that); the backend says which weights it covers. `Model.forward`'s
    layer loop over `AttentionMixer` and `MoE` is the reference."""

    def attention_moe_plan(self, wq, wk, wv, wo, inv_freq: np.ndarray, router, gate_proj, up_proj, down_proj,
                           k: int, norm_topk: bool, post_w: np.ndarray, next_w: np.ndarray, eps: float) -> object:
        """What `attention_moe_step` needs of one layer, prepared once, or None when the backend does not
        cover these weights (the layer then runs op by op). Shapes as `moe`, `rope_attend`, `rmsnorm`;
        post_w: the layer's post-attention norm, next_w: the next layer's input norm (or the final norm)."""

    def attention_moe_step(self, plan, x: np.ndarray, xn: np.ndarray, K: np.ndarray, V: np.ndarray, n: int
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """x [1, D] the residual stream at position n, xn = rmsnorm(x) (this layer's input norm); K, V the
        layer's KVCache buffers as `rope_attend` takes them -> (x', xn', the tokens each expert received
        [E] int64, status): h = x + attention(xn), x' = h + moe(rmsnorm(h; post_w)), xn' = rmsnorm(x'; next_w);
        status 0, 1 when rmsnorm(h) is not finite (x', xn' are then h and rmsnorm(h), the FFN not run),
        2 when xn' is not finite. Row n of K and V is written."""


@runtime_checkable
class FusedRecurrent(Protocol):
    """The RWKV-7 time mix of a decode-sized chunk as one op, `rwkv7_step` (a fast path; optional),
    and the two fused ops around its projections that a table may build it from. `cogcore.blocks.rwkv7.
    RecurrentMixer` is the reference: the same step in NumPy, and what these ops are tested against.
    All arrays float32; D = Hr * N."""

    def rwkv7_step(self, x: np.ndarray, x_prev: np.ndarray, mix: np.ndarray, lora: tuple, w0: np.ndarray,
                   a0: np.ndarray, v0: np.ndarray | None, Ws: tuple, v_first: np.ndarray | None, k_k: np.ndarray,
                   k_a: np.ndarray, r_k: np.ndarray, ln_w: np.ndarray, ln_b: np.ndarray, eps: float, kk_norm: str,
                   S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`rwkv7_inputs`, the receptance, key and value projections of xr, xk, xv, `rwkv7_output` and the
        output projection: arguments as those ops take them, Ws the stored (receptance, key, value, output)
        weights [D, D] -> (the mixer's output [T, D], v [T, D] (the first layer's v_first), the final state)."""

    def rwkv7_inputs(self, x: np.ndarray, x_prev: np.ndarray, mix: np.ndarray, lora: tuple,
                     w0: np.ndarray, a0: np.ndarray, v0: np.ndarray) -> np.ndarray:
        """Token shift, mixes and low-rank branches: x [T, D], x_prev [D], mix [6, D] (x_r, x_w, x_k,
        x_v, x_a, x_g), lora ((w1, w2), (a1, a2), (v1, v2) or None, (g1, g2)) with A [D, R], B [R, D];
        w0, a0, v0 [D] (v0 None without the v pair) -> [7, T, D]: xr, xk, xv, w, a, g, v_gate (v_gate
        unset without the v pair)."""

    def rwkv7_output(self, r: np.ndarray, w: np.ndarray, k: np.ndarray, v: np.ndarray, a: np.ndarray,
                     g: np.ndarray, v_gate: np.ndarray | None, v_first: np.ndarray | None, k_k: np.ndarray,
                     k_a: np.ndarray, r_k: np.ndarray, ln_w: np.ndarray, ln_b: np.ndarray, eps: float,
                     kk_norm: str, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """kk (l2-normalised as `kk_norm` says: "clamp" or "epsilon", blocks.rwkv7.l2_normalize), the
        key update, the value residual (v_gate, v_first None: none), the recurrence, the group norm
        (eps), the bonus and the gate: [T, D] inputs, r_k [Hr, N], S [Hr, N, N] (may be updated in
        place) -> (the output projection's input [T, D], the final state)."""


@runtime_checkable
class Compiled(Protocol):
    def warm_up(self, quantized: bool = True, stored=None) -> float:
        """Compile (or load from the cache) every kernel of the table (quantized=False: not those over
        quantized weights; stored: only those over these float storage dtypes, None: every one);
        returns the seconds it took."""


def members(protocol) -> list[str]:
    """The op names a protocol declares, in declaration order."""
    return [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]
