"""A decode token through a whole full-attention + MoE layer in one op (cogcore.ops.FusedLayerStep,
kernels/layer_step.py) against the NumPy reference and against the same model op by op."""

import numpy as np
import pytest

from cogcore.config import Config
from cogcore.errors import WeightsError
from cogcore.cache import KVCache
from cogcore.kernels import threads
from cogcore import model as model_module
from cogcore.model import Model, Pass
from cogcore.ops import ops_for
from cogcore.quant import QTYPES, QuantTensor, quantizable, quantize_tensor
from cogcore.weights import ExpertStack, Weights

from conftest import RoundingWatch, build_model, small_config

# Sizes that are not powers of two where GGML blocks allow (input widths multiples of 32): D 64, H 4
# over Hkv 2 of hd 24 (o_proj's input 96), E 5 experts of 96 top-2. Layers 0 and 1 fit the fused step; layer 2
# (sliding window) and layer 3 (dense FFN) run op by op.
CFG = small_config(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                   layer_types=["full_attention", "full_attention", "sliding_attention", "full_attention"],
                   mlp_types=["moe", "moe", "moe", "dense"], moe_intermediate_size=96, intermediate_size=64)
IDS = [1, 5, 9, 20, 3, 3, 17, 30, 8, 36, 11, 7, 2, 4]
PROMPT = 6                       # tokens fed at once; the rest one by one (the fused step)


def quantized(qtype, seed=3, per_expert=False):
    """Random weights of CFG with every quantizable tensor in qtype; per_expert: each expert stack as
    per-expert tensors (a public family's layout), views of one buffer."""
    _, tensors = build_model(CFG, seed=seed)
    out = {}
    for name, a in tensors.items():
        q = quantize_tensor(a, qtype, name) if quantizable(name, a.shape) else a
        if per_expert and isinstance(q, QuantTensor) and ".mlp.experts." in name:
            q = ExpertStack([q[e] for e in range(len(q))], [f"{name}.{e}" for e in range(len(q))])
        out[name] = q
    return out


def decode(model, ids=IDS):
    """Logits of a prefill of PROMPT tokens, then one token at a time; and the expert counts of each step."""
    cache = model.new_cache()
    parts, counts = [model.forward(ids[:PROMPT], cache)], []
    for t in ids[PROMPT:]:
        parts.append(model.forward([t], cache))
        counts.append(dict(model.last_pass.expert_counts))
    return np.concatenate(parts), counts


def make(tensors, backend, int8=False):
    return Model(Config.from_dict(CFG), Weights(tensors), ops_for(backend, int8))


@pytest.mark.parametrize("per_expert", [False, True])
@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("qtype", QTYPES)
def test_fused_layer_step_equals_the_reference_and_the_op_by_op_path(qtype, int8, per_expert):
    """Float arithmetic: equal to the NumPy reference to round-off. int8 activations: equal to the Numba
    op-by-op path (the same kernels in the same order); run end to end against the reference, a round-off
    difference flips an activation's rounding to int8 (at q4_0 from the third token here, by 1-3 % of the
    logits), which the attention carries to every later token: the next test compares each step with the
    reference on the same inputs instead."""
    tensors = quantized(qtype, per_expert=per_expert)
    want, want_counts = decode(make(tensors, "numpy", int8))
    fused = make(tensors, "numba", int8)
    assert [p is not None for p in fused.layer_plans] == [True, True, False, False]
    op_by_op = make(tensors, "numba", int8)
    op_by_op.layer_plans = [None] * 4
    plain, _ = decode(op_by_op)
    for work in (1 << 62, 0):                  # the serial variants, then every kernel on the parallel one
        with threads.parallel_from(work):
            got, counts = decode(fused)
        if not int8:
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        for c, w in zip(counts, want_counts):
            assert c.keys() == w.keys() and all(np.array_equal(c[i], w[i]) for i in c)


@pytest.mark.parametrize("qtype", QTYPES)
def test_int8_layer_step_equals_the_reference_on_the_same_inputs(qtype, monkeypatch):
    """int8 activations: every fused step of a decode (both fused layers, each token) against the NumPy
    reference's layer (ReferenceInt8Ops) run on the very inputs the step got (x, Norm(x), the cached keys
    and values): the same output, cache row and expert counts, to round-off.

    End to end the backends part where a value x sits on a rounding half of x / d and round-off sends it
    one way on one backend, the other way on the other (here a q4_0 embedding under a unit norm weight
    makes x / d = 127 k / 8, a half for k = +-4; docs/quantization.md, "int8 activations"). Fed the same
    inputs they stay together unless a kernel reads a wrong block, scale or row; only a value computed
    inside the step (attention output, Norm(h), an expert's hidden) can still round apart, so a step whose
    reference rounds one near a half is held loosely (RoundingWatch: one flip 3e-4 to 2e-3 here; a wrong
    block, scale or row: 2e-2 to 0.3)."""
    tensors = quantized(qtype)
    ref, fused = make(tensors, "numpy", True), make(tensors, "numba", True)
    fused_step = Model._layer_step

    def step_against_the_reference(self, plan, i, x, xn, kv, ctx):
        keys, values, n = kv.room(1)
        cache = KVCache(keys.shape[1:])
        cache.extend(keys[:n].copy(), values[:n].copy(), None)
        x_in, xn_in = x.copy(), xn.copy()
        got_x, got_xn = fused_step(self, plan, i, x, xn, kv, ctx)
        layer, at = ref.layers[i], Pass(positions=np.array([n]), layer=i)
        watch.start(xn_in)
        h = x_in + layer.mixer(xn_in, cache, at)
        want_x = h + layer.ffn(layer.post_norm(h), None, at)
        want_xn = (ref.layers[i + 1].input_norm if i + 1 < len(ref.layers) else ref.norm)(want_x)
        tol = watch.tolerance(1e-5)
        for got, want in ((got_x, want_x), (got_xn, want_xn), (keys[n], cache.k.view()[n]),
                          (values[n], cache.v.view()[n])):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
        np.testing.assert_array_equal(ctx.expert_counts[i], at.expert_counts[i])
        return got_x, got_xn

    monkeypatch.setattr(Model, "_layer_step", step_against_the_reference)
    with RoundingWatch() as watch:
        decode(fused)
    assert watch.tight + watch.loose == 2 * (len(IDS) - PROMPT) and watch.loose <= watch.tight // 3


def test_layers_that_do_not_fit_run_op_by_op():
    """Float weights, mixed formats, experts in separate arrays, biases, q/k norms, a shared expert,
    layernorms: no plan, and the model still equals the reference."""
    tensors = quantized("q8_0")
    floats = build_model(CFG, seed=3)[1]
    assert make(floats, "numba").layer_plans == [None] * 4
    mixed = dict(tensors, **{"model.layers.1.self_attn.o_proj.weight": quantize_tensor(
        floats["model.layers.1.self_attn.o_proj.weight"], "q4_0")})
    apart = dict(tensors)                      # each expert its own array: not one buffer
    name = "model.layers.0.mlp.experts.up_proj"
    apart[name] = ExpertStack([QuantTensor(tensors[name][e].data.copy(), "q8_0", tensors[name].shape[1:])
                               for e in range(5)], [f"{name}.{e}" for e in range(5)])
    for weights, plans in ((mixed, [True, False, False, False]), (apart, [False, True, False, False])):
        model = make(weights, "numba")
        assert [p is not None for p in model.layer_plans] == plans
        want, _ = decode(make(weights, "numpy"))
        np.testing.assert_allclose(decode(model)[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    for over in (dict(attention_bias=True), dict(qk_norm="head"), dict(num_shared_experts=1,
                 shared_expert_intermediate_size=32), dict(norm_type="layernorm")):
        cfg = dict(CFG, **over)
        _, floats = build_model(cfg, seed=3)
        weights = {n: quantize_tensor(a, "q8_0") if quantizable(n, a.shape) else a for n, a in floats.items()}
        model, _ = build_model(cfg, backend="numba", tensors=weights)
        assert model.layer_plans == [None] * 4, over
        want = build_model(cfg, tensors=weights)[0]
        np.testing.assert_allclose(decode(model)[0], decode(want)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("where,named", [("model.layers.1.self_attn.o_proj.weight", "layer 1's full_attention mixer"),
                                         ("model.layers.0.mlp.experts.down_proj", "layer 0's moe feed-forward")])
def test_non_finite_activations_name_the_layer(where, named, monkeypatch):
    """A NaN block scale in a big weight of a fused layer (one the load does not scan: SMALL_TENSOR
    set to 0 here): the same WeightsError as op by op."""
    monkeypatch.setattr(model_module, "SMALL_TENSOR", 0)
    tensors = quantized("q4_0")
    W = tensors[where]
    data = W.data.copy()
    data[..., 0:2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)   # every row's first block scale
    tensors[where] = QuantTensor(data, "q4_0", W.shape)
    messages = []
    for plans in (True, False):
        model = make(tensors, "numba")
        assert model.layer_plans[0] is not None and model.layer_plans[1] is not None
        if not plans:
            model.layer_plans = [None] * 4
        cache = model.new_cache()
        with pytest.raises(WeightsError) as err:
            model.forward(IDS[:1], cache)      # one token: the fused step from the first position
        messages.append(str(err.value))
    assert named in messages[0] and messages[0] == messages[1]
