"""Where a quantized model's error comes from: the measurements behind docs/quantization.md.

    python -m cogcore.quant_study [MODEL_DIR] [-n 60] [--what kinds routing noise mixed int8] [--random 60]

Each experiment runs the float model with some weights replaced by their quantize ->
dequantize round trip (bit-exact GGML blocks, cogcore.quant), which is what a quantized
model computes (tests/test_quant.py), so one tensor kind can be quantized at a time:

- kinds: KL(float || model) and top-1 agreement with one tensor kind (or layer) quantized;
- routing: every tensor quantized, with the MoE routing pinned to the float model's
  choices (at every position, or at the first token only), and how many routing
  decisions differ when it is not pinned;
- noise: Gaussian noise of each tensor's q8_0 error RMS in place of that error, for
  several seeds, and the q8_0 error scaled;
- mixed: mixed-precision plans (`cogcore quantize --tensor-type`), with the bytes a
  decoded token reads and top-1 agreement where the float top-2 margin exceeds t nats;
- int8: the q8_0 model with int8 activations against the same blocks in float arithmetic,
  on the task sequences and on random token ids: KL and top-1, GGML's method computed
  alongside by `gguf.quants` alone, the routing pinned, and where the two paths part
  (the residual stream after each layer, routing decisions, the router's margins).

Inputs are `cogcore.evaluate.comparison_inputs` (n per task, as `cogcore eval --compare`).
The NumPy backend runs the routing experiments (its route is the one pinned).
"""

from __future__ import annotations

import argparse
import functools
import re

import numpy as np

from . import tasks
from .blocks import ReferenceInt8Ops, ReferenceOps, moe as moe_block
from .blocks.linear import linear_int8
from .config import Config
from .dtypes import f32, to_storage
from .evaluate import comparison_inputs, log_softmax
from .model import Model, decode_bytes
from .ops import ops_for
from .quant import DEQUANTIZE, QUANTIZE, QuantTensor, quantizable, quantize_tensor
from .tensorfile import read_model_tensors
from .weights import Weights

MARGINS = (0.5, 1, 2, 4)


def round_trip(a: np.ndarray, kind: str) -> np.ndarray:
    """float32 weights as a model stored in `kind` (q8_0, q4_0, BF16, F32) computes with them."""
    if kind in QUANTIZE:
        return DEQUANTIZE[kind](QUANTIZE[kind](a))
    return f32(to_storage(a, kind))


class Study:
    def __init__(self, path: str, n: int):
        self.path, self.config = path, Config.from_file(f"{path}/config.json")
        raw, _ = read_model_tensors(path)
        self.floats = {k: f32(v).copy() for k, v in raw.items()}
        self.quantizable = [k for k, v in self.floats.items() if quantizable(k, v.shape)]
        self.reference = self.model({})
        self.inputs = comparison_inputs(self.reference, n, seed=tasks.EVAL_SEED)
        self.ref_logp = {}

    def model(self, plan: dict[str, str], backend: str = "numba") -> Model:
        tensors = {k: round_trip(v, plan[k]) if k in plan else v for k, v in self.floats.items()}
        return Model(self.config, Weights(tensors), backend, self.path)

    def measure(self, label: str, model: Model, plan: dict[str, str] | None = None) -> None:
        """KL and top-1 against the float model over every position (and by float margin)."""
        kls, same, margin = [], [], []
        for i, (ids, _) in enumerate(self.inputs):
            lf, lq = self.reference_logp(i), log_softmax(model.forward(ids))
            kls.append(np.maximum((np.exp(lf) * (lf - lq)).sum(-1), 0))
            same.append(lf.argmax(-1) == lq.argmax(-1))
            top2 = np.sort(lf, -1)[:, -2:]
            margin.append(top2[:, 1] - top2[:, 0])
        kl, same, margin = (np.concatenate(a) for a in (kls, same, margin))
        line = f"{label:48s} KL {kl.mean():.5f}  top-1 {same.mean():7.2%}"
        if plan is not None:
            per_token = sum(decode_bytes(k, self.stored(k, plan.get(k, "F32")), self.config) for k in self.floats)
            by_margin = "  ".join(f">{t}: {same[margin > t].mean():.2%}" for t in MARGINS if (margin > t).any())
            line += f"  {per_token:>11,d} B/token | top-1 where the float margin is {by_margin}"
        print(line, flush=True)

    def reference_logp(self, i: int) -> np.ndarray:
        if i not in self.ref_logp:
            self.ref_logp[i] = log_softmax(self.reference.forward(self.inputs[i][0]))
        return self.ref_logp[i]

    def stored(self, name: str, kind: str):
        a = self.floats[name]
        return quantize_tensor(a, kind, name) if kind in QUANTIZE else to_storage(a, kind)

    # ---- the experiments -----------------------------------------------------------------------------
    def kinds(self) -> None:
        kinds = {"embedding": r"embed_tokens", "lm_head": r"^lm_head", "attention q/k/v/o": r"self_attn\.[qkvo]_proj",
                 "NSA gate_proj": r"self_attn\.gate_proj", "RWKV receptance/key/value/output": r"\.rwkv\.",
                 "routed experts": r"\.mlp\.experts\.", "dense / shared FFN": r"\.mlp\.(?!experts)"}
        groups = {label: [k for k in self.quantizable if re.search(pattern, k)] for label, pattern in kinds.items()}
        for i in range(self.config.num_hidden_layers):
            groups[f"layer {i}, all its tensors"] = [k for k in self.quantizable if f"layers.{i}." in k]
        groups["everything but layer 0"] = [k for k in self.quantizable if "layers.0." not in k]
        groups["everything"] = self.quantizable
        for qtype in QUANTIZE:
            for label, names in groups.items():
                if names:
                    self.measure(f"{qtype} {label}", self.model({k: qtype for k in names}))

    def routing(self) -> None:
        for i in range(len(self.inputs)):           # before the float model's routes are pinned too
            self.reference_logp(i)
        with Routes() as routes:
            reference = self.model({}, "numpy")
            for ids, _ in self.inputs:
                reference.forward(ids)
            for qtype in QUANTIZE:
                model = self.model({k: qtype for k in self.quantizable}, "numpy")
                for mode in ("free", "first token", "every position"):
                    routes.replay(mode)
                    self.measure(f"{qtype}, routing pinned at {mode}" if mode != "free" else f"{qtype}", model)
                    if mode == "free":
                        flips = np.concatenate(routes.flips)
                        print(f"    routing decisions (token, layer) that differ from float: {flips.mean():.2%} "
                              f"of {flips.size}")

    def noise(self, seeds: int = 5) -> None:
        err = {k: round_trip(self.floats[k], "q8_0") - self.floats[k] for k in self.quantizable}
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            tensors = dict(self.floats)
            for k, e in err.items():
                rms = np.float32(np.sqrt((e.astype(np.float64) ** 2).mean()))
                tensors[k] = self.floats[k] + rms * rng.standard_normal(e.shape, np.float32)
            self.measure(f"Gaussian noise of the q8_0 error's RMS, seed {seed}",
                         Model(self.config, Weights(tensors), "numba", self.path))
        for scale in (0.25, 0.5):
            tensors = {**self.floats, **{k: self.floats[k] + np.float32(scale) * e for k, e in err.items()}}
            self.measure(f"{scale} x the q8_0 error", Model(self.config, Weights(tensors), "numba", self.path))

    def mixed(self) -> None:
        embed, head = "model.embed_tokens.weight", "lm_head.weight"
        rest = [k for k in self.quantizable if ".experts." not in k and k != head]

        def plan(default, **over):
            p = {k: default for k in self.quantizable}
            p.update(over)
            return p
        plans = {
            "float32": {},
            "bfloat16": plan("BF16"),
            "q8_0": plan("q8_0"),
            "q8_0 experts + lm_head, rest bfloat16": plan("q8_0", **{k: "BF16" for k in rest}),
            "q8_0 experts + lm_head, rest float32": plan("q8_0", **{k: "F32" for k in rest}),
            "q4_0": plan("q4_0"),
            "q4_0, embedding q8_0": plan("q4_0", **{embed: "q8_0"}),
            "q4_0 experts + lm_head, rest q8_0": plan("q4_0", **{k: "q8_0" for k in rest}),
        }
        for label, p in plans.items():
            self.measure(label, self.model(p), p)

    def int8(self, random: int = 60, length: int = 20) -> None:
        """int8 activations on the q8_0 model against its float path (both NumPy), on the task sequences and
        on `random` sequences of `length` token ids drawn uniformly (numpy default_rng(seed), seeds 0 ..
        random - 1): KL and top-1; GGML's method computed by gguf.quants alone (`ggml_int8_linear`) and by
        the Numba backend; the routing pinned to the float path's; and how the two paths part layer by layer."""
        weights = Weights({**self.floats, **{k: self.stored(k, "q8_0") for k in self.quantizable}})
        float_path, probe = Model(self.config, weights, "numpy", self.path), Int8Probe()
        int8 = Model(self.config, weights, probe, self.path)
        others = {"GGML's method by gguf.quants": Model(self.config, weights, GGMLInt8Ops(), self.path),
                  "int8 activations, Numba": Model(self.config, weights, ops_for("numba", True), self.path)}
        V = self.config.vocab_size
        for label, inputs in (("task sequences", [ids for ids, _ in self.inputs]),
                              (f"{random} random sequences of {length} ids (seeds 0-{random - 1})",
                               [np.random.default_rng(seed).integers(0, V, length) for seed in range(random)])):
            print(f"-- {label}")
            with Routes() as routes:
                streams = {}
                with ResidualStream(float_path, streams.setdefault("float", [])):
                    base = [float_path.forward(ids) for ids in inputs]
                routes.replay("free")
                probe.errors, probe.blocks = [], []                    # of the free run
                with ResidualStream(int8, streams.setdefault("int8", [])):
                    free = [int8.forward(ids) for ids in inputs]
                errors, top = np.concatenate(probe.errors), np.concatenate(probe.blocks)
                flips = routes.flips                                   # one array per call: layer by layer
                routes.replay("every position")
                pinned = [int8.forward(ids) for ids in inputs]
            floats = [self.reference.forward(ids) for ids in inputs]
            kl_line("q8_0 float path against float32", floats, base)
            kl_line("int8 activations against the q8_0 float path", base, free)
            for name, model in others.items():
                kl_line(f"{name} against the q8_0 float path", base, [model.forward(ids) for ids in inputs])
            kl_line("int8, routing pinned to the float path's", base, pinned)
            print(f"    each product with int8 activations against float on the same input, relative RMS "
                  f"difference: median {np.median(errors):.1e}, 99th percentile {np.percentile(errors, 99):.1e}")
            print(f"    activation blocks: {len(top):,}, all zero {(top == 0).sum()}, largest |x| of a block from "
                  f"{top[top > 0].min():.2g} to {top.max():.3g} (float16 scales from {top[top > 0].min() / 127:.2g})")
            per_layer = np.mean([[np.sqrt(((a - b) ** 2).mean() / (a ** 2).mean()) for a, b in zip(fa, ia)]
                                 for fa, ia in zip(streams["float"], streams["int8"])], axis=0)
            names = [f"{i} {where}" for i in range(len(self.config.layer_types)) for where in ("in", "mixed")]
            print("    residual stream, int8 against float, relative RMS difference (layer in / after its mixer):",
                  "  ".join(f"{n} {d:.1e}" for n, d in zip(names + ["out"], per_layer)))
            moe_layers = [i for i, t in enumerate(self.config.mlp_types) if t == "moe"]
            changed = [np.concatenate(flips[j::len(moe_layers)]).mean() for j in range(len(moe_layers))]
            print("    routing decisions that differ, by MoE layer:",
                  "  ".join(f"{i}: {c:.2%}" for i, c in zip(moe_layers, changed)))
            gaps = np.concatenate(routes.margins)
            print(f"    the float path's router: probability of its k-th choice less the next one's, median "
                  f"{np.median(gaps):.4f}; below 0.005: {(gaps < 0.005).mean():.2%}")


def ggml_int8_linear(x: np.ndarray, W) -> np.ndarray:
    """x W^T as GGML's CPU computes a q8_0 / q4_0 product, from gguf.quants alone (the independent
    implementation of ggml-quants.c): x rounded to q8_0 blocks and back, times W's dequantized blocks, in
    float64 (the integer block dots and the two scales are exact there). Float weights: the float path."""
    from gguf import GGMLQuantizationType, quants
    if not isinstance(W, QuantTensor):
        return ReferenceOps.linear(x, W)
    x2 = x.reshape(-1, W.shape[-1])
    xr = quants.dequantize(quants.quantize(x2, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
    w = quants.dequantize(np.asarray(W.data), GGMLQuantizationType[W.qtype.upper()]).reshape(W.shape)
    y = xr.astype(np.float64) @ w.astype(np.float64).T
    return y.astype(np.float32).reshape(*x.shape[:-1], W.shape[0])


class Int8Probe(ReferenceInt8Ops):
    """`ReferenceInt8Ops` that keeps, for each product with a quantized weight, its relative RMS difference
    from the float path on the same input (`errors`) and the largest |x| of each of its activation blocks
    (`blocks`)."""

    def __init__(self):
        self.errors, self.blocks = [], []
        self.linear = self._linear
        self.moe = functools.partial(moe_block.moe, linear=self._linear)

    def _linear(self, x, W):
        y = linear_int8(x, W)
        if isinstance(W, QuantTensor):
            f = ReferenceOps.linear(x, W)
            self.errors.append(np.sqrt(((y - f) ** 2).sum(-1) / np.maximum((f ** 2).sum(-1), 1e-30)).ravel())
            self.blocks.append(np.abs(x.reshape(-1, 32)).max(-1))
        return y


class GGMLInt8Ops(ReferenceOps):
    """The NumPy reference with `ggml_int8_linear` for its products (the MoE's experts included)."""

    linear = staticmethod(ggml_int8_linear)
    moe = staticmethod(functools.partial(moe_block.moe, linear=ggml_int8_linear))


def kl_line(label: str, reference: list, logits: list) -> None:
    """KL(reference || logits) over every position, and top-1 agreement."""
    kl = np.concatenate([np.maximum((np.exp(p) * (p - q)).sum(-1), 0) for p, q in
                         ((log_softmax(a), log_softmax(b)) for a, b in zip(reference, logits))])
    same = np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(reference, logits)])
    print(f"  {label:58s} KL mean {kl.mean():.4f}  max {kl.max():6.3f}  top-1 {same.mean():7.2%}", flush=True)


class Routes:
    """`moe.route` patched while in use: records every call's choices ("record"), then runs free or
    replays them ("replay": the recorded choices at every position, or at the first token only), keeping
    which tokens' choices differ from the recorded ones (`flips`, one array per call) and the recorded
    calls' margins (probability of the k-th choice less the next one's)."""

    def __init__(self):
        self.recorded, self.margins, self.mode, self.i, self.flips = [], [], "record", 0, []

    def __enter__(self):
        self.route, moe_block.route = moe_block.route, self
        return self

    def __exit__(self, *exc):
        moe_block.route = self.route

    def replay(self, mode: str) -> None:
        """mode: "free", "first token" or "every position"."""
        self.mode, self.i, self.flips = mode, 0, []

    def __call__(self, logits, k, norm_topk):
        top, wts = self.route(logits, k, norm_topk)
        if self.mode == "record":
            self.recorded.append(top)
            p = np.sort(moe_block.softmax(logits), -1)
            self.margins.append(p[:, -k] - p[:, -k - 1])
            return top, wts
        want = self.recorded[self.i]
        self.i += 1
        self.flips.append((np.sort(top, -1) != np.sort(want, -1)).any(-1))
        if self.mode == "free":
            return top, wts
        if self.mode == "first token":
            want = np.concatenate([want[:1], top[1:]])
        p = np.take_along_axis(moe_block.softmax(logits), want, axis=-1)
        return want, (p / p.sum(-1, keepdims=True) if norm_topk else p)


class ResidualStream:
    """While in use, appends to `into` one list per forward of `model` (the NumPy reference's layer loop):
    the residual stream each norm reads, entering each layer and after its mixer, then the final norm's."""

    def __init__(self, model: Model, into: list):
        self.model, self.into = model, into

    def __enter__(self):
        m = self.model
        self.norms = [(m, "norm")] + [(layer, name) for layer in m.layers for name in ("input_norm", "post_norm")]
        for owner, name in self.norms:
            first = owner is m.layers[0] and name == "input_norm"
            setattr(owner, name, _Tap(getattr(owner, name), self.into, first))
        return self

    def __exit__(self, *exc):
        for owner, name in self.norms:
            setattr(owner, name, getattr(owner, name).norm)


class _Tap:
    """A norm that appends its input to the last list of `into` first (to a new one when `first`)."""

    def __init__(self, norm, into: list, first: bool):
        self.norm, self.into, self.first = norm, into, first

    def __call__(self, x):
        if self.first:
            self.into.append([])
        self.into[-1].append(x.copy())
        return self.norm(x)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cogcore.quant_study", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="weights/cogcore-tiny")
    ap.add_argument("-n", type=int, default=60, help="inputs per task (default 60, as cogcore eval --compare)")
    ap.add_argument("--what", nargs="+", default=["kinds", "routing", "noise", "mixed"],
                    choices=["kinds", "routing", "noise", "mixed", "int8"])
    ap.add_argument("--random", type=int, default=60, help="int8: random sequences of 20 token ids (default 60)")
    args = ap.parse_args(argv)
    study = Study(args.model, args.n)
    for what in args.what:
        print(f"== {what}")
        getattr(study, what)(**({"random": args.random} if what == "int8" else {}))


if __name__ == "__main__":
    main()
