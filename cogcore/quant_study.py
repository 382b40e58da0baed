"""Where a quantized model's error comes from: the measurements behind docs/quantization.md.

    python -m cogcore.quant_study [MODEL_DIR] [-n 60] [--what kinds routing noise mixed]

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
  decoded token reads and top-1 agreement where the float top-2 margin exceeds t nats.

Inputs are `cogcore.evaluate.comparison_inputs` (n per task, as `cogcore eval --compare`).
The NumPy backend runs the routing experiments (its route is the one pinned).
"""

from __future__ import annotations

import argparse
import re

import numpy as np

from . import tasks
from .blocks import moe as moe_block
from .config import Config
from .dtypes import f32, to_storage
from .evaluate import comparison_inputs, log_softmax
from .model import Model, decode_bytes
from .quant import DEQUANTIZE, QUANTIZE, quantizable, quantize_tensor
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
        recorded, state = [], {"mode": "record", "i": 0, "flips": []}
        route = moe_block.route

        def pinned(logits, k, norm_topk):
            top, wts = route(logits, k, norm_topk)
            if state["mode"] == "record":
                recorded.append(top)
                return top, wts
            want = recorded[state["i"]]
            state["i"] += 1
            state["flips"].append((np.sort(top, -1) != np.sort(want, -1)).any(-1))
            if state["mode"] == "free":
                return top, wts
            if state["mode"] == "first token":
                want = np.concatenate([want[:1], top[1:]])
            p = np.take_along_axis(moe_block.softmax(logits), want, axis=-1)
            return want, (p / p.sum(-1, keepdims=True) if norm_topk else p)

        for i in range(len(self.inputs)):           # before the float model's routes are pinned too
            self.reference_logp(i)
        moe_block.route = pinned
        try:
            reference = self.model({}, "numpy")
            for ids, _ in self.inputs:
                reference.forward(ids)
            for qtype in QUANTIZE:
                model = self.model({k: qtype for k in self.quantizable}, "numpy")
                for mode in ("free", "first token", "every position"):
                    state.update(mode=mode, i=0, flips=[])
                    self.measure(f"{qtype}, routing pinned at {mode}" if mode != "free" else f"{qtype}", model)
                    if mode == "free":
                        flips = np.concatenate(state["flips"])
                        print(f"    routing decisions (token, layer) that differ from float: {flips.mean():.2%} "
                              f"of {flips.size}")
        finally:
            moe_block.route = route

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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cogcore.quant_study", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="weights/cogcore-tiny")
    ap.add_argument("-n", type=int, default=60, help="inputs per task (default 60, as cogcore eval --compare)")
    ap.add_argument("--what", nargs="+", default=["kinds", "routing", "noise", "mixed"],
                    choices=["kinds", "routing", "noise", "mixed"])
    args = ap.parse_args(argv)
    study = Study(args.model, args.n)
    for what in args.what:
        print(f"== {what}")
        getattr(study, what)()


if __name__ == "__main__":
    main()
