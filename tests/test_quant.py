"""Quantized weights (SPEC Section 9): GGML q8_0 / q4_0 blocks, kernels, model directories, CLI.

The independent implementation is the `gguf` package's NumPy port of ggml-quants.c
(`gguf.quants`): our blocks must equal its bytes, and a quantized model's logits must
equal those of its weights dequantized by gguf and run through the naive float forward.
"""

import copy
import json
import os
import re

import numpy as np
import pytest

gguf_quants = pytest.importorskip("gguf.quants")
from gguf import GGMLQuantizationType  # noqa: E402

import cogcore  # noqa: E402
from cogcore.blocks import ReferenceOps  # noqa: E402
from cogcore.cli import main  # noqa: E402
from cogcore.errors import WeightsError  # noqa: E402
from cogcore.quant import (DEQUANTIZE, QUANTIZE, QTYPES, QuantTensor, quantizable,  # noqa: E402
                           quantize_tensor)
from cogcore.tensorfile import read_model_tensors, write_safetensors  # noqa: E402
from cogcore.weights import ExpertStack  # noqa: E402

import naive  # noqa: E402
from conftest import RoundingWatch  # noqa: E402

GGML = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}


def awkward_rows(rng, cols=160):
    """Rows that exercise every branch of the reference quantizers."""
    x = rng.standard_normal((23, cols)).astype(np.float32)
    x[0] = 0                                                # all-zero blocks: d = 0
    x[1] *= 1e-6                                            # float16-subnormal scales
    x[2] *= 300                                             # large values
    x[3, :32] = np.arange(32) - 16                          # exact halves after scaling
    x[4, :32] = 0.49999997                                  # where floor(a + 0.5) would round up
    x[5, :32] = 1.0
    x[5, 7] = -1.0                                          # ties of |max|: the first one wins
    x[6, :32] = np.linspace(-1, 1, 32)                      # values exactly at q +- 0.5
    x[7] = np.float32(2.0) ** rng.integers(-20, 10, cols)   # powers of two
    return x


@pytest.mark.parametrize("qtype", QTYPES)
def test_blocks_are_bit_identical_to_ggml(qtype):
    x = awkward_rows(np.random.default_rng(0))
    ours = QUANTIZE[qtype](x)
    theirs = gguf_quants.quantize(x, GGML[qtype])
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(DEQUANTIZE[qtype](ours), gguf_quants.dequantize(theirs, GGML[qtype]))
    stacked = np.stack([x, -x])                              # leading (expert) axes keep their shape
    np.testing.assert_array_equal(QUANTIZE[qtype](stacked)[1], gguf_quants.quantize(-x, GGML[qtype]))


def test_layouts_from_their_definition():
    """One hand-computed block of each format (SPEC: scale first, then the values)."""
    x = np.array([(j % 16 - 8) * 0.5 for j in range(32)], np.float32)   # max magnitude -4.0 at j = 0
    q4 = QUANTIZE["q4_0"](x[None])[0]
    assert q4[:2].view(np.float16)[0] == 0.5                             # d = -4 / -8
    assert list(q4[2:]) == [j | (j << 4) for j in range(16)]             # low nibble j, high j + 16
    q8 = QUANTIZE["q8_0"](x[None])[0]
    assert q8[:2].view(np.float16)[0] == np.float16(np.float32(4) / 127)
    np.testing.assert_array_equal(q8[2:].view(np.int8), np.round(x / 4 * 127).astype(np.int8))
    np.testing.assert_array_equal(DEQUANTIZE["q4_0"](q4[None])[0], x)


def test_quantize_tensor_errors():
    with pytest.raises(WeightsError, match="multiple of 32"):
        quantize_tensor(np.ones((3, 40), np.float32), "q8_0", "w")
    with pytest.raises(WeightsError, match="'w'.*non-finite"):
        quantize_tensor(np.full((3, 32), np.inf, np.float32), "q4_0", "w")
    with pytest.raises(WeightsError, match="q8_0, q4_0.*'q5'"):
        quantize_tensor(np.ones((3, 32), np.float32), "q5", "w")


def test_quantizable_choice():
    assert quantizable("model.layers.0.self_attn.q_proj.weight", (64, 64))
    assert quantizable("model.layers.0.mlp.experts.down_proj", (8, 64, 32))
    assert quantizable("lm_head.weight", (256, 64)) and quantizable("model.embed_tokens.weight", (256, 64))
    assert not quantizable("model.layers.0.mlp.gate.weight", (8, 64))              # router
    assert not quantizable("model.layers.0.rwkv.w1", (64, 32))                      # low-rank
    assert not quantizable("model.norm.weight", (64,))
    assert not quantizable("model.layers.0.self_attn.o_proj.weight", (64, 48))      # 48 % 32 != 0


# ---- kernels: the Numba backend against the NumPy reference on odd sizes -----------------------
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("T", [1, 3, 8, 9, 33])
def test_linear_kernel_matches_reference(qtype, T):
    from cogcore.backends import NumbaOps
    rng = np.random.default_rng(T)
    for rows, cols in [(1, 32), (16, 64), (37, 96), (131, 160)]:      # blocks: 1, 2 (no odd one), 3, 5
        W = quantize_tensor(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
        x = rng.standard_normal((T, cols)).astype(np.float32)
        want = x.astype(np.float64) @ W.dequantize().T.astype(np.float64)
        for got in (NumbaOps.linear(x, W), ReferenceOps.linear(x, W)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("T", [1, 3, 9])
def test_projections_in_one_call_equal_one_call_each(qtype, T):
    """`linears` (attention's q, k, v in one kernel call; beyond 8 rows one call each) gives each weight's
    product as `linear` does, to the bit, with the float path and with int8 activations; a float
    weight among them sends them one at a time."""
    from cogcore.backends import NumbaInt8Ops, NumbaOps
    rng = np.random.default_rng(T)
    Ws = [quantize_tensor(rng.standard_normal((rows, 96)).astype(np.float32), qtype) for rows in (37, 5, 16)]
    x = rng.standard_normal((T, 96)).astype(np.float32)
    for ops in (NumbaOps, NumbaInt8Ops):
        for weights in (Ws, Ws[:2] + [Ws[2].dequantize()]):
            got = ops.linears(x, tuple(weights))
            assert len(got) == len(weights)
            for g, W in zip(got, weights):
                np.testing.assert_array_equal(g, ops.linear(x, W))


@pytest.mark.parametrize("qtype", QTYPES)
def test_serial_and_parallel_gemv_agree(qtype):
    from cogcore.kernels import quant as kq
    rng = np.random.default_rng(5)
    W = quantize_tensor(rng.standard_normal((77, 224)).astype(np.float32), qtype)
    x = rng.standard_normal((2, 224)).astype(np.float32)
    want = x @ W.dequantize().T
    for fn in (kq._gemv_1, kq._gemv_p):
        got = fn(x, (W.data,), kq.CODE[qtype], kq.HALF_TO_FLOAT, kq.FLOAT_PATH)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # several matrices side by side (odd row counts: tasks end inside a matrix and at its last row)
    Ws = [quantize_tensor(rng.standard_normal((rows, 224)).astype(np.float32), qtype) for rows in (37, 5, 16, 77)]
    for mode in (kq.FLOAT_PATH, kq.INT8_PATH):
        alone = np.concatenate([kq._gemv_1(x, (w.data,), kq.CODE[qtype], kq.HALF_TO_FLOAT, mode) for w in Ws], 1)
        if mode is kq.FLOAT_PATH:
            want = x @ np.concatenate([w.dequantize() for w in Ws]).T
            np.testing.assert_allclose(alone, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        for fn in (kq._gemv_1, kq._gemv_p):
            np.testing.assert_array_equal(fn(x, tuple(w.data for w in Ws), kq.CODE[qtype], kq.HALF_TO_FLOAT, mode),
                                          alone)
    out = np.empty((77, 224), np.float32)
    for fn in (kq._dequantize_rows_1, kq._dequantize_rows_p):
        fn(W.data, 0, 77, kq.CODE[qtype], kq.HALF_TO_FLOAT, out)
        np.testing.assert_array_equal(out, W.dequantize())


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8_activations"])
def test_experts_in_one_call_equal_each_expert(qtype, int8):
    """A token's chosen experts in one kernel call add up as one call per expert does, to the bit, also
    when one expert is read-only (memory-mapped) and the other not; odd hidden and output sizes."""
    from cogcore.kernels import quant as kq
    rng = np.random.default_rng(9)
    D, F = 96, 160
    experts = [[quantize_tensor(rng.standard_normal(shape).astype(np.float32), qtype).data
                for shape in ((F, D), (F, D), (D, F))] for _ in range(2)]
    for a in experts[1]:
        a.flags.writeable = False
    x, w = rng.standard_normal(D).astype(np.float32), [0.7, 0.3]
    together, apart = np.zeros(D, np.float32), np.zeros(D, np.float32)
    kq.experts_decode(x, *zip(*experts), w, qtype, together, int8)
    for (g, u, d), wc in zip(experts, w):
        kq.experts_decode(x, [g], [u], [d], [wc], qtype, apart, int8)
    np.testing.assert_array_equal(together, apart)


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("T", [1, 2, 11])
@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8_activations"])
def test_moe_kernel_matches_reference(qtype, T, int8):
    from cogcore.kernels import quant as kq
    from cogcore.ops import ops_for
    rng = np.random.default_rng(T)
    E, D, F = 5, 64, 96
    gate, up = (quantize_tensor(rng.standard_normal((E, F, D)).astype(np.float32), qtype) for _ in "gu")
    down = quantize_tensor(rng.standard_normal((E, D, F)).astype(np.float32), qtype)
    router = rng.standard_normal((E, D)).astype(np.float32)
    x = rng.standard_normal((T, D)).astype(np.float32)
    with RoundingWatch() as watch:              # int8: an expert's hidden values may round apart at a tie
        watch.start(x)
        want, want_counts = ops_for("numpy", int8).moe(x, router, gate, up, down, 2, True)
    tol = watch.tolerance(1e-5)
    # stacked experts, and per-expert tensors (a Hugging Face directory) as a lazy ExpertStack
    apart = [ExpertStack([W[e] for e in range(E)], [f"e{e}" for e in range(E)]) for W in (gate, up, down)]
    for experts in ((gate, up, down), apart):
        got, counts = ops_for("numba", int8).moe(x, router, *experts, 2, True)
        np.testing.assert_array_equal(counts, want_counts)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    if int8:
        return                        # its kernels' twins: test_int8_serial_and_parallel_kernels_agree
    y = {fn: np.zeros(D, np.float32) for fn in (kq._experts_1, kq._experts_p)}
    for (fn, yt), threads in zip(y.items(), (1, 2)):
        fn(x[:1], (gate.data[4], gate.data[1]), (up.data[4], up.data[1]), (down.data[4], down.data[1]), F,
           np.float32([0.5, 0.25]), kq.CODE[qtype], kq.HALF_TO_FLOAT, kq.FLOAT_PATH, yt, threads)
    serial = y[kq._experts_1]
    np.testing.assert_allclose(y[kq._experts_p], serial, rtol=1e-5, atol=1e-5 * np.abs(serial).max())


def test_moe_decode_blocks_found_once_and_mixed_formats_grouped():
    """The decode kernel's blocks of a MoE layer are found once (the same answer on the next call);
    stacks of two formats, or a float one among quantized ones, take the grouped path: the same
    output as the reference either way."""
    from cogcore import backends
    from cogcore.kernels import quant as kq
    rng = np.random.default_rng(7)
    E, D, F = 4, 64, 96
    floats = [rng.standard_normal(s).astype(np.float32) for s in ((E, F, D), (E, F, D), (E, D, F))]
    router, x = rng.standard_normal((E, D)).astype(np.float32), rng.standard_normal((1, D)).astype(np.float32)
    one = [quantize_tensor(W, "q8_0") for W in floats]
    found = backends._decode_experts(*one)
    assert found is backends._decode_experts(*one)
    quantized, (d, code, gates, ups, downs, buffers) = found
    assert buffers is not None                       # a stack's experts lie in one buffer: the kernel finds them by id
    assert quantized and d == D and code == kq.CODE["q8_0"] and len(gates) == len(ups) == len(downs) == E
    assert all(not b.flags.writeable and b.flags.c_contiguous for b in gates + ups + downs)
    assert backends._decode_experts(*floats) == (False, None)
    mixed = (one[0], quantize_tensor(floats[1], "q4_0"), one[2])
    assert backends._decode_experts(*mixed) == (True, None)
    for experts in (one, mixed, (one[0], one[1], floats[2])):
        want, want_counts = ReferenceOps.moe(x, router, *experts, 2, True)
        got, counts = backends.NumbaOps.moe(x, router, *experts, 2, True)
        np.testing.assert_array_equal(counts, want_counts)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


# ---- model directories -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("quant") / "tiny"
    assert main(["init", "--preset", "tiny", str(out), "--seed", "4"]) == 0
    return out


@pytest.mark.parametrize("qtype", QTYPES)
def test_quantized_model_equals_ggml_dequantized_float_path(float_dir, tmp_path, qtype):
    out = tmp_path / qtype
    chosen = cogcore.quantize(float_dir, out, qtype)
    assert not os.path.exists(str(out) + ".partial")
    tensors, _ = read_model_tensors(out)
    floats, _ = read_model_tensors(float_dir)
    assert {n for n, t in chosen.items() if t == qtype} == {n for n, a in tensors.items()
                                                            if isinstance(a, QuantTensor)}
    assert all(quantizable(n, a.shape) == isinstance(a, QuantTensor) for n, a in tensors.items())
    ggml = {n: (gguf_quants.dequantize(np.asarray(a.data), GGML[qtype]).reshape(a.shape)
                if isinstance(a, QuantTensor) else np.asarray(a)) for n, a in tensors.items()}
    for n, a in tensors.items():                                   # the bytes are GGML's quantizer's
        if isinstance(a, QuantTensor):
            np.testing.assert_array_equal(a.data, gguf_quants.quantize(np.asarray(floats[n]), GGML[qtype]))
    cfg = json.loads((out / "config.json").read_text())
    ids = [1, 5, 9, 200, 3, 3, 17, 42, 8, 99, 100, 7]
    want, _ = naive.forward(ggml, cfg, ids)
    tol = dict(rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert not cogcore.load(float_dir).weights.quantized        # (a float model warms up without the
    for backend in ("numpy", "numba"):                          # kernels over quantized weights)
        model = cogcore.load(out, backend=backend)
        assert model.weights.quantized
        np.testing.assert_allclose(model.forward(ids), want, **tol)
        cache = model.new_cache()                                  # prefill then decode, token by token
        parts = [model.forward(ids[:9], cache)] + [model.forward([t], cache) for t in ids[9:]]
        np.testing.assert_allclose(np.concatenate(parts), want, **tol)


def test_init_type_writes_the_same_blocks_as_quantize(float_dir, tmp_path):
    assert main(["init", "--preset", "tiny", "--type", "q4_0", "--seed", "4", str(tmp_path / "i")]) == 0
    assert main(["quantize", str(float_dir), str(tmp_path / "q"), "--type", "q4_0"]) == 0
    a, _ = read_model_tensors(tmp_path / "i")
    b, _ = read_model_tensors(tmp_path / "q")
    assert a.keys() == b.keys()
    for n in a:
        if isinstance(a[n], QuantTensor):
            np.testing.assert_array_equal(a[n].data, b[n].data)
        else:
            np.testing.assert_array_equal(a[n], b[n])


def test_quantize_errors(float_dir, tmp_path, capsys):
    assert main(["quantize", str(float_dir), str(tmp_path / "q")]) == 0          # default q4_0
    assert "q4_0" in capsys.readouterr().out
    assert main(["quantize", str(tmp_path / "q"), str(tmp_path / "qq")]) == 1    # already quantized
    assert "already q4_0" in capsys.readouterr().err
    assert main(["quantize", str(float_dir), str(tmp_path / "q")]) == 1          # not empty
    assert "new or empty directory" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 1
    with pytest.raises(WeightsError, match="q8_0, q4_0"):
        cogcore.quantize(float_dir, tmp_path / "y", "q3")


def test_interrupted_quantize_leaves_nothing(float_dir, tmp_path):
    def stop(done, total):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        cogcore.quantize(float_dir, tmp_path / "q", "q8_0", progress=stop)
    assert os.listdir(tmp_path) == []


def test_reader_rejects_bad_quantization_metadata(tmp_path):
    """Fuzz the self-description: every lie is an error naming the file and tensor."""
    good = quantize_tensor(np.ones((4, 64), np.float32), "q8_0")
    path = str(tmp_path / "model.safetensors")
    cases = [
        ("not json", "not valid JSON"),
        ("[1]", "must be an object"),
        ('{"w": {"type": "q5", "shape": [4, 64]}}', "'w'.*expected"),
        ('{"w": {"type": "q8_0", "shape": [4, 60]}}', "'w'.*multiple of 32"),
        ('{"w": {"type": "q8_0", "shape": [4]}}', "'w'.*at least 2"),
        ('{"w": {"type": "q8_0", "shape": [5, 64]}}', "'w'.*U8 \\[5, 68\\].*found uint8 \\[4, 68\\]"),
        ('{"w": {"type": "q4_0", "shape": [4, 64]}}', "'w'.*U8 \\[4, 36\\]"),
        ('{"v": {"type": "q8_0", "shape": [4, 64]}}', "'v'.*absent"),
        (None, "'w' is U8 but"),
    ]
    for meta, message in cases:
        write_safetensors(path, {"w": good.data}, metadata=None if meta is None else {"cogcore.quantized": meta})
        with pytest.raises(WeightsError, match=message) as e:
            read_model_tensors(tmp_path)
        assert path in str(e.value)
    write_safetensors(path, {"w": np.ones((4, 64), np.float32)},
                      metadata={"cogcore.quantized": '{"w": {"type": "q8_0", "shape": [4, 64]}}'})
    with pytest.raises(WeightsError, match="'w'.*found float32"):
        read_model_tensors(tmp_path)
    rng = np.random.default_rng(0)
    for _ in range(50):                                    # random byte damage: an error or a valid file
        write_safetensors(path, {"w": good.data}, metadata={"cogcore.quantized":
                                                            '{"w": {"type": "q8_0", "shape": [4, 64]}}'})
        blob = bytearray(open(path, "rb").read())
        for i in rng.integers(8, 150, 3):
            blob[i] = rng.integers(0, 256)
        open(path, "wb").write(bytes(blob))
        try:
            tensors, _ = read_model_tensors(tmp_path)
        except WeightsError:
            continue
        assert all(isinstance(a, (QuantTensor, np.ndarray)) for a in tensors.values())


def test_inspect_shows_formats_and_bytes_per_token(float_dir, tmp_path, capsys):
    cogcore.quantize(float_dir, tmp_path / "q", "q8_0")
    capsys.readouterr()
    assert main(["inspect", "--json", str(tmp_path / "q")]) == 0
    data = json.loads(capsys.readouterr().out)
    cfg = cogcore.preset("tiny")
    rows = {t["name"]: t for t in data["tensors"]}
    experts = rows["model.layers.0.mlp.experts.up_proj"]
    E, F, D = experts["shape"]
    assert experts["dtype"] == "q8_0" and experts["bytes"] == E * F * D // 32 * 34
    assert experts["bytes_per_token"] == experts["bytes"] * cfg.num_experts_per_tok // E
    assert rows["model.embed_tokens.weight"]["bytes_per_token"] == D // 32 * 34       # one row
    assert rows["model.layers.0.mlp.gate.weight"]["dtype"] == "F32"
    assert data["bytes_per_token"] == sum(t["bytes_per_token"] for t in rows.values())
    assert main(["inspect", str(tmp_path / "q")]) == 0
    assert re.search(r"experts\.up_proj\s+q8_0", capsys.readouterr().out)


def test_eval_compare(float_dir, tmp_path, capsys):
    from cogcore.evaluate import compare, comparison_inputs
    model = cogcore.load(float_dir, backend="numpy")
    inputs = comparison_inputs(model, n=3)                   # no tokenizer: seeded random ids
    same = compare(model, model, inputs)
    assert same.positions == 3 * 64 and same.top1_agreement == 1.0 and same.mean_kl == 0.0
    cogcore.quantize(float_dir, tmp_path / "q", "q4_0")
    quantized = cogcore.load(tmp_path / "q", backend="numpy")
    c = compare(quantized, model, inputs)
    logp = quantized.forward(inputs[0][0]).astype(np.float64)    # KL(ref || model) by hand, row 0
    logq = model.forward(inputs[0][0]).astype(np.float64)
    p, q = (np.exp(z - z.max(-1, keepdims=True)) for z in (logp, logq))
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    assert 0 < c.mean_kl and c.max_kl >= (q * np.log(q / p)).sum(-1).max() - 1e-9
    assert 0 < c.top1_agreement <= 1
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "q"), "--compare", str(float_dir), "--no-tasks",
                 "-n", "2", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "mean KL divergence" in out and "top-1 agreement" in out and "128 positions" in out


def test_odd_widths_stay_float_and_mixed_storage_runs():
    """Widths that are not multiples of 32 keep their tensors float; every layer kind still runs,
    the MoE with quantized gate/up but a float down projection included."""
    from conftest import build_model, small_config
    from cogcore.create import random_weights
    cfg = cogcore.Config.from_dict(small_config(hidden_size=64, rwkv_head_size=16, moe_intermediate_size=48))
    floats = random_weights(cfg, seed=2)
    tensors = {n: quantize_tensor(a, "q4_0", n) if quantizable(n, a.shape) else a for n, a in floats.items()}
    assert isinstance(tensors["model.layers.0.mlp.experts.gate_proj"], QuantTensor)
    assert not isinstance(tensors["model.layers.0.mlp.experts.down_proj"], QuantTensor)     # 48 wide
    assert not isinstance(tensors["model.layers.1.self_attn.o_proj.weight"], QuantTensor)   # 36 wide
    ggml = {n: (gguf_quants.dequantize(a.data, GGML["q4_0"]).reshape(a.shape) if isinstance(a, QuantTensor)
                else a) for n, a in tensors.items()}
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    want, _ = naive.forward(ggml, cfg.to_dict(), ids)
    for backend in ("numpy", "numba"):
        model, _ = build_model(cfg, backend=backend, tensors=tensors)
        cache = model.new_cache()                                  # prefill 4, then decode
        got = np.concatenate([model.forward(ids[:4], cache)] + [model.forward([t], cache) for t in ids[4:]])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_a_quantized_family_directory_runs_on_both_backends(tmp_path, name):
    """A Hugging Face MoE directory keeps one tensor per expert: quantized, they load as a lazy
    stack of QuantTensors, and both backends give the float path on the dequantized weights."""
    src = os.path.join(os.path.dirname(__file__), "fixtures", "families", name)
    cogcore.quantize(src, tmp_path / "q", "q8_0")
    tensors, _ = read_model_tensors(str(tmp_path / "q"))
    assert any(isinstance(a, QuantTensor) and ".experts." in n for n, a in tensors.items())
    ids = [1, 7, 3, 9, 4]
    logits = {}
    for backend in ("numpy", "numba"):
        model = cogcore.load(tmp_path / "q", backend=backend)
        assert model.weights.quantized                      # (a lazy stack of quantized experts counts)
        cache = model.new_cache()
        logits[backend] = np.concatenate([model.forward(ids[:2], cache)] + [model.forward([t], cache) for t in ids[2:]])
    want = logits["numpy"]
    np.testing.assert_allclose(logits["numba"], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_expert_decode_refuses_blocks_that_do_not_fit_x():
    from cogcore.kernels import quant as kq
    G = quantize_tensor(np.ones((32, 64), np.float32), "q8_0").data
    Dn = quantize_tensor(np.ones((64, 32), np.float32), "q8_0").data
    x, y = np.ones(64, np.float32), np.zeros(64, np.float32)
    kq.experts_decode(x, [G], [G], [Dn], [1.0], "q8_0", y)                    # fits: 32 hidden values, 64 out
    with pytest.raises(ValueError, match="do not fit"):
        kq.experts_decode(np.ones(96, np.float32), [G], [G], [Dn], [1.0], "q8_0", y)   # x wider than the blocks
    with pytest.raises(ValueError, match="do not fit"):
        kq.experts_decode(x, [G, G], [G, G], [Dn, G], [1.0, 1.0], "q8_0", y)   # a down of the wrong shape


def test_blocks_run_along_the_axis_each_weight_is_dotted_over():
    """GGML blocks must run along a weight's input (dot-product) axis: every tensor that
    `quantizable` picks must be one the forward pass hands, stored as it is, to `ops.linear`
    (x W^T: the last, contiguous axis is contracted), to the MoE's expert projections, or to
    the embedding's row lookup. Recorded from a forward pass over every layer and FFN kind,
    so a block that used a quantized weight transposed (x @ W) or outside the ops would fail."""
    from conftest import build_model, small_config
    from cogcore.blocks import moe as moe_block
    from cogcore.create import random_weights
    cfg = cogcore.Config.from_dict(small_config(
        hidden_size=64, rwkv_head_size=16, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        moe_intermediate_size=32, intermediate_size=32, num_shared_experts=1, shared_expert_intermediate_size=32))
    floats = random_weights(cfg, seed=3)
    dotted, looked_up = set(), set()

    def name_of(W):
        found = [n for n, a in floats.items() if np.shares_memory(W, a)]
        assert len(found) == 1, f"a weight view matches {found}"
        return found[0]

    class Recording(ReferenceOps):
        @staticmethod
        def linear(x, W):
            name = name_of(W)
            if W.shape[-1] == floats[name].shape[-1] and W.strides[-1] == W.itemsize:
                dotted.add(name)                      # contracted along the stored last axis
            return ReferenceOps.linear(x, W)

        @staticmethod
        def embed(table, ids):
            looked_up.add(name_of(table))
            return ReferenceOps.embed(table, ids)

        @staticmethod
        def moe(x, router, gate_proj, up_proj, down_proj, k, norm_topk):
            top, wts = moe_block.route(Recording.linear(x, router), k, norm_topk)
            counts = np.bincount(top.ravel(), minlength=router.shape[0])
            return moe_block.grouped_experts(x, top, wts, counts, gate_proj, up_proj, down_proj,
                                             Recording.linear), counts

    model, _ = build_model(cfg, backend=Recording(), tensors=floats)
    model.forward(list(range(1, 30)))                 # past the NSA compression blocks
    picked = {n for n, a in floats.items() if quantizable(n, a.shape)}
    assert picked and picked <= dotted | looked_up, sorted(picked - dotted - looked_up)
    assert looked_up == {"model.embed_tokens.weight"}
    assert not any(n.endswith(".mlp.gate.weight") for n in picked)          # the router stays float


def test_tensor_type_rules_write_a_mixed_precision_model(float_dir, tmp_path, capsys):
    """`--tensor-type PATTERN=TYPE`: first match wins, block formats and float dtypes mix in one
    file, and the model still equals the naive float forward on the GGML-dequantized weights."""
    out = tmp_path / "mixed"
    assert main(["quantize", str(float_dir), str(out), "--type", "q4_0", "--tensor-type", "layers.0.mlp.experts.down=q4_0",
                 "--tensor-type", "experts=q8_0", "--tensor-type", r"self_attn\.|embed=bfloat16"]) == 0
    assert "q8_0" in capsys.readouterr().out
    tensors, _ = read_model_tensors(out)
    floats, _ = read_model_tensors(float_dir)
    kinds = {n: a.qtype if isinstance(a, QuantTensor) else a.dtype.name for n, a in tensors.items()}
    assert kinds["model.layers.0.mlp.experts.down_proj"] == "q4_0"                 # the first rule
    assert kinds["model.layers.0.mlp.experts.up_proj"] == "q8_0"
    assert kinds["model.layers.1.self_attn.q_proj.weight"] == "uint16"             # bfloat16 bits
    assert kinds["model.layers.1.self_attn.compress_k.fc1.weight"] == "uint16"     # any float may convert
    assert kinds["model.embed_tokens.weight"] == "uint16" and kinds["lm_head.weight"] == "q4_0"
    assert kinds["model.layers.0.mlp.gate.weight"] == "float32"                    # untouched: kept
    ggml = {}
    for n, a in tensors.items():
        if isinstance(a, QuantTensor):
            ggml[n] = gguf_quants.dequantize(np.asarray(a.data), GGML[a.qtype]).reshape(a.shape)
        elif a.dtype == np.uint16:          # bfloat16: float32 rounded to nearest even at bit 16
            bits = np.asarray(floats[n], np.float32).view(np.uint32).astype(np.uint64)
            ggml[n] = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
        else:
            ggml[n] = np.asarray(a)
    ids = [1, 5, 9, 200, 3, 3, 17, 42]
    want, _ = naive.forward(ggml, json.loads((out / "config.json").read_text()), ids)
    for backend in ("numpy", "numba"):
        got = cogcore.load(out, backend=backend).forward(ids)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    with pytest.raises(WeightsError, match=r"'model.layers.0.mlp.gate.weight'.*asks to quantize a tensor cogcore keeps float"):
        cogcore.quantize(float_dir, tmp_path / "bad", "q8_0", tensor_types=[r"mlp\.gate\.weight=q8_0"])
    for rule, why in [("experts", "PATTERN=TYPE"), ("x=q5_0", "PATTERN=TYPE"), ("(=q8_0", "not a regular")]:
        with pytest.raises(WeightsError, match=why):
            cogcore.quantize(float_dir, tmp_path / "bad", "q8_0", tensor_types=[rule])
    assert not os.path.exists(tmp_path / "bad")


def test_a_public_familys_router_stays_float(tmp_path):
    """Mixtral names its router `block_sparse_moe.gate`: the policy judges a tensor by its cogcore
    role (the family's renames), so the router is not quantized as a plain linear weight (it was)."""
    mixtral = os.path.join(os.path.dirname(__file__), "fixtures", "families", "mixtral")
    chosen = cogcore.quantize(mixtral, tmp_path / "q", "q8_0")
    assert chosen["model.layers.0.block_sparse_moe.gate.weight"] == "F32"
    assert chosen["model.layers.0.self_attn.q_proj.weight"] == "q8_0"
    assert chosen["model.layers.0.block_sparse_moe.experts.0.w1.weight"] == "q8_0"
    model = cogcore.load(tmp_path / "q")
    assert not isinstance(model.layers[0].ffn.router, QuantTensor)
    assert model.forward([1, 2, 3]).shape == (3, 320)


def test_quant_study_runs_and_its_float_plan_is_exact(tiny_dir, capsys):
    """`python -m cogcore.quant_study` (docs/quantization.md's measurements): the float32 plan equals
    the reference exactly, the routing experiment runs with its routes pinned, and the int8 one finds
    GGML's method (by gguf.quants) as far from the float path as cogcore's int8 activations."""
    from cogcore.quant_study import main as study
    study([tiny_dir, "-n", "1", "--what", "mixed", "routing", "int8", "--random", "2"])
    out = capsys.readouterr().out
    assert re.search(r"^float32 +KL 0\.00000  top-1 100\.00%", out, re.M)
    assert re.search(r"^q8_0 +KL \d", out, re.M) and "routing pinned at every position" in out
    kl = {name: float(v) for name, v in re.findall(r"^  (.+?) against the q8_0 float path +KL mean (\S+)", out, re.M)}
    assert len(kl) == 3 and kl["int8 activations"] > 0
    for other in ("GGML's method by gguf.quants", "int8 activations, Numba"):   # the same up to rounding ties
        assert abs(kl[other] - kl["int8 activations"]) <= 0.1 * kl["int8 activations"], kl


# ---- int8 activations (an option: GGML's integer block dots) -------------------------------------
def rounded_activations(x):
    """x rounded to q8_0 blocks by gguf's quantizer (the independent implementation), as float64."""
    q = gguf_quants.quantize(x, GGML["q8_0"])
    return gguf_quants.dequantize(q, GGML["q8_0"]).reshape(x.shape).astype(np.float64)


def test_activation_quantizers_are_ggml_reference():
    from cogcore.blocks.linear import quantize_activations
    from cogcore.kernels import quant as kq
    x = awkward_rows(np.random.default_rng(1))
    theirs = gguf_quants.quantize(x, GGML["q8_0"]).reshape(len(x), -1, 34)
    want_q, want_d = theirs[..., 2:].view(np.int8), theirs[..., :2].copy().view(np.float16)[..., 0]
    q, d = quantize_activations(x)                                # the NumPy reference
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(d, want_d.astype(np.float32))
    xq, xs, xd = kq.quantize_activations(x)                      # the Numba kernel
    np.testing.assert_array_equal(xq, want_q.reshape(len(x), -1))
    np.testing.assert_array_equal(xd, want_d.astype(np.float32))
    np.testing.assert_array_equal(xs, -xq.reshape(len(x), -1, 4).astype(np.int32).sum(-1))


def exact_case(rng, qtype, rows, nblocks):
    """Weights whose scales are 1 (float16 0x3C00) and integer activations with a +-127 in every
    block (so d_x = 1 and q_x = x): every partial sum is an integer below 2**24, exact in float32,
    and the result must equal the integer dot to the last bit."""
    cols = 32 * nblocks
    if qtype == "q8_0":
        q = rng.integers(-128, 128, (rows, nblocks, 32))        # -128 too (GGML never writes it; a file may)
        body, values = q.astype(np.int8).view(np.uint8), q
    else:
        n = rng.integers(0, 16, (rows, nblocks, 32))
        body, values = (n[..., :16] | (n[..., 16:] << 4)).astype(np.uint8), n - 8
    scale = np.broadcast_to(np.float16(1.0).reshape(1).view(np.uint8), (rows, nblocks, 2))
    data = np.concatenate([scale, body], axis=-1).reshape(rows, -1)
    x = rng.integers(-127, 128, (3, cols)).astype(np.float32)
    x.reshape(3, nblocks, 32)[:, :, 5] = 127 * rng.choice([-1, 1], (3, nblocks))
    want = np.einsum("tj,oj->to", x.astype(np.int64), values.reshape(rows, cols))
    return QuantTensor(data, qtype, (rows, cols)), x, want


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("permute", [False, True], ids=["generic", "vpermps"])
def test_float_block_loops_both_ways(qtype, permute):
    """The float-path block loops and the dequantizer with q4_0's nibbles turned into floats by the
    AVX-512 table lookup (vpermps) and by the generic code (forced; what other CPUs run): integer
    cases whose every partial sum is exact equal the integer dot to the last bit, random ones the
    float64 product with gguf-dequantized weights, and the dequantized rows equal gguf's."""
    from numba import njit
    from cogcore.kernels import quant as kq
    if permute and (qtype == "q8_0" or not kq.AVX512):
        pytest.skip("q8_0 has no table lookup" if qtype == "q8_0" else "the CPU Numba compiles for has no AVX-512")
    code = kq.CODE[qtype]
    many, one = kq._float_rows(code, kq.ROWS, permute), kq._float_rows(code, 1, permute)
    dequantize_row, n = kq._dequantize_intrinsic(code, permute), kq.ROWS

    @njit
    def rows(data, x, table):                                  # fresh, not cached: this form only
        out = np.empty((x.shape[0], data.shape[0]), np.float32)
        for t in range(x.shape[0]):
            for r in range(0, data.shape[0] - n + 1, n):
                many(data, r, x[t], table, out[t], r)
            for r in range(data.shape[0] // n * n, data.shape[0]):
                one(data, r, x[t], table, out[t], r)
        return out

    @njit
    def dequantized(data, table, cols):
        out = np.empty((data.shape[0], cols), np.float32)
        for r in range(data.shape[0]):
            dequantize_row(data[r], table, out[r])
        return out

    rng = np.random.default_rng(3)
    for nblocks in (1, 2, 3, 5, 7):
        W, x, want = exact_case(rng, qtype, 19, nblocks)
        np.testing.assert_array_equal(rows(W.data, x, kq.HALF_TO_FLOAT), want.astype(np.float32))
        W = quantize_tensor(rng.standard_normal((19, 32 * nblocks)).astype(np.float32), qtype)
        theirs = gguf_quants.dequantize(W.data, GGML[qtype]).reshape(W.shape)
        np.testing.assert_array_equal(dequantized(W.data, kq.HALF_TO_FLOAT, W.shape[1]), theirs)
        want = x.astype(np.float64) @ theirs.T.astype(np.float64)
        np.testing.assert_allclose(rows(W.data, x, kq.HALF_TO_FLOAT), want, rtol=1e-5,
                                   atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("qtype", QTYPES)
def test_int8_block_dots_are_exact(qtype):
    """The integer dots of every implementation, the forced generic (non-VNNI) IR included."""
    from numba import njit
    from cogcore.blocks.linear import linear_int8
    from cogcore.kernels import quant as kq
    rng = np.random.default_rng(2)
    four, one = (kq.dot_i8_intrinsics(vnni=False, nrows=n)[kq.CODE[qtype]] for n in (4, 1))

    @njit
    def generic_rows(data, xq, xs, xd, table):                 # fresh, not cached: the generic form
        out = np.empty((xq.shape[0], data.shape[0]), np.float32)
        for t in range(xq.shape[0]):
            for r in range(0, data.shape[0] - 3, 4):
                four(data, r, xq[t], xs[t], xd[t], table, out[t], r)
            for r in range(data.shape[0] // 4 * 4, data.shape[0]):
                one(data, r, xq[t], xs[t], xd[t], table, out[t], r)
        return out

    for nblocks in (1, 2, 3, 5, 7):
        W, x, want = exact_case(rng, qtype, 19, nblocks)
        xq, xs, xd = kq.quantize_activations(x)
        assert (xd == 1).all() and (xq == x).all()
        for got in (kq.linear_i8(x, W.data, qtype, W.shape[1]), linear_int8(x, W),
                    generic_rows(W.data, xq, xs, xd, kq.HALF_TO_FLOAT)):
            np.testing.assert_array_equal(got, want.astype(np.float32))


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("T", [1, 3, 8, 9, 33])
def test_int8_linear_matches_reference(qtype, T):
    """Both backends against the float64 product of gguf-rounded activations and gguf-dequantized
    weights (decode: integer block dots; T > 8: the rounded x through the prefill path)."""
    from cogcore.backends import NumbaInt8Ops, NumbaOps
    from cogcore.blocks import ReferenceInt8Ops
    rng = np.random.default_rng(T)
    for rows, cols in [(1, 32), (17, 64), (37, 96), (131, 160)]:    # blocks: 1, 2, 3, 5
        W = quantize_tensor(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
        x = rng.standard_normal((T, cols)).astype(np.float32)
        want = rounded_activations(x) @ W.dequantize().T.astype(np.float64)
        for got in (NumbaInt8Ops.linear(x, W), ReferenceInt8Ops.linear(x, W)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    Wf = rng.standard_normal((5, 32)).astype(np.float32)            # float weights keep the float path
    np.testing.assert_array_equal(NumbaInt8Ops.linear(x[:, :32], Wf), NumbaOps.linear(x[:, :32], Wf))
    for ops in (NumbaInt8Ops, ReferenceInt8Ops):                     # no rows at all
        assert ops.linear(x[:0], W).shape == (0, W.shape[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_int8_linear_keeps_a_non_finite_activation_non_finite(bad):
    """A NaN or inf in x leaves the rows it reaches non-finite on both backends, as on the float path,
    so the model names the layer instead of answering from garbage (max() alone would skip a NaN)."""
    from cogcore.backends import NumbaInt8Ops
    from cogcore.blocks import ReferenceInt8Ops
    rng = np.random.default_rng(7)
    W = quantize_tensor(rng.standard_normal((40, 64)).astype(np.float32), "q4_0")
    for T in (1, 20):                                                # decode kernel, prefill path
        x = rng.standard_normal((T, 64)).astype(np.float32)
        x[0, 5] = bad
        for ops in (NumbaInt8Ops, ReferenceInt8Ops):
            with np.errstate(invalid="ignore"):
                y = ops.linear(x, W)
            assert not np.isfinite(y[0]).any() and np.isfinite(y[1:]).all()


@pytest.mark.parametrize("qtype", QTYPES)
def test_int8_serial_and_parallel_kernels_agree(qtype):
    from cogcore.kernels import quant as kq
    rng = np.random.default_rng(6)
    W = quantize_tensor(rng.standard_normal((77, 224)).astype(np.float32), qtype)
    x = rng.standard_normal((2, 224)).astype(np.float32)
    serial, parallel = (fn(x, (W.data,), kq.CODE[qtype], kq.HALF_TO_FLOAT, kq.INT8_PATH)
                        for fn in (kq._gemv_1, kq._gemv_p))
    np.testing.assert_array_equal(serial, parallel)                # the same dots, rows split differently
    E, D, F = 2, 64, 96
    G = quantize_tensor(rng.standard_normal((F, D)).astype(np.float32), qtype).data
    Dn = quantize_tensor(rng.standard_normal((D, F)).astype(np.float32), qtype).data
    x1 = rng.standard_normal((1, D)).astype(np.float32)
    y = [np.zeros(D, np.float32) for _ in range(2)]
    for fn, yt, threads in zip((kq._experts_1, kq._experts_p), y, (1, 2)):
        fn(x1, (G, G), (G, G), (Dn, Dn), F, np.float32([0.5, 0.25]), kq.CODE[qtype], kq.HALF_TO_FLOAT, kq.INT8_PATH, yt,
           threads)
    np.testing.assert_array_equal(y[0], y[1])


@pytest.mark.parametrize("qtype", QTYPES)
def test_experts_by_whole_experts_or_by_rows_agree(qtype):
    """The experts kernel's two splits (each thread whole experts when their number divides k; else
    every expert's rows shared out) give the same output to the bit, serial and parallel, both
    arithmetics, odd hidden and output sizes, k = 2 and 3, and equal the dequantized float experts."""
    from cogcore.kernels import quant as kq
    from cogcore.kernels.moe import silu_mul
    rng = np.random.default_rng(12)
    D, F = 160, 96 + 32 * 3                       # 5 and 8 blocks: rows end inside a task of 16
    Ws = [[quantize_tensor(rng.standard_normal(shape).astype(np.float32), qtype) for shape in ((F, D), (F, D), (D, F))]
          for _ in range(3)]
    x = rng.standard_normal((1, D)).astype(np.float32)
    for k in (2, 3):
        chosen, w = Ws[:k], np.float32([0.5, 0.3, 0.2][:k])
        gates, ups, downs = (tuple(e[i].data for e in chosen) for i in range(3))
        for mode in (kq.FLOAT_PATH, kq.INT8_PATH):
            got = []
            for fn, threads in ((kq._experts_1, 1), (kq._experts_p, 1), (kq._experts_p, 2), (kq._experts_1, 2)):
                yt = np.zeros(D, np.float32)
                fn(x, gates, ups, downs, F, w, kq.CODE[qtype], kq.HALF_TO_FLOAT, mode, yt, threads)
                got.append(yt)
            for g in got[1:]:
                np.testing.assert_array_equal(g, got[0])
            if mode is kq.FLOAT_PATH:
                g_, u_, d_ = ([e[i].dequantize().astype(np.float64) for e in chosen] for i in range(3))
                want = sum(wc * d @ np.array([silu_mul(np.float32(a), np.float32(b)) for a, b in zip(g @ x[0], u @ x[0])])
                           for wc, g, u, d in zip(w, g_, u_, d_))
                np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


class Twin:
    """A mixer or FFN of a Numba model that also runs its NumPy twin on the same input and on copies of the
    state and pass it was given, and compares the two (as closely as RoundingWatch allows)."""

    def __init__(self, block, twin, watch):
        self.block, self.twin, self.watch, self.ops = block, twin, watch, block.ops

    def new_state(self):
        return self.block.new_state()

    def __call__(self, x, state, ctx):
        state_now, at = copy.deepcopy(state), copy.deepcopy(ctx)
        got = self.block(x, state, ctx)
        self.watch.start(x)
        want = self.twin(x, state_now, at)
        tol = self.watch.tolerance(1e-5)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
        for name in ("expert_counts", "selected_blocks"):
            got_, want_ = getattr(ctx, name), getattr(at, name)
            assert got_.keys() == want_.keys() and all(np.array_equal(got_[i], want_[i]) for i in got_)
        if ctx.v_first is not None:
            np.testing.assert_allclose(ctx.v_first, at.v_first, rtol=tol, atol=tol * np.abs(at.v_first).max())
        return got


@pytest.mark.parametrize("qtype", QTYPES)
def test_int8_activations_option_runs_a_model(float_dir, tmp_path, qtype):
    """cogcore.load(..., int8_activations=True): both backends agree, prefill then decode token by token,
    and stay near the float path without equalling it. End to end a value rounded apart at a tie
    (RoundingWatch) carries to later layers and tokens, so the Numba model's embedding, mixers, FFNs and
    products (lm_head's among them) are each compared with the reference's on the same inputs and state."""
    from cogcore.cli import build_parser, load_model
    out = tmp_path / qtype
    cogcore.quantize(float_dir, out, qtype)
    ids = [1, 5, 9, 200, 3, 3, 17, 42, 8, 99, 100, 7, 64, 250]
    ref, fast = (cogcore.load(out, backend=backend, int8_activations=True) for backend in ("numpy", "numba"))
    assert ref.ops.int8_activations and fast.ops.int8_activations
    with RoundingWatch() as watch:
        def linear(x, W):
            got = type(fast.ops).linear(x, W)
            watch.start(x)
            want = ref.ops.linear(x, W)
            tol = watch.tolerance(1e-5)
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
            return got

        def embed(table, ids):
            got = type(fast.ops).embed(table, ids)
            np.testing.assert_array_equal(got, ref.ops.embed(table, ids))
            return got

        fast.ops.linear, fast.ops.embed = linear, embed      # the blocks' table too
        for layer, twin in zip(fast.layers, ref.layers):
            layer.mixer, layer.ffn = Twin(layer.mixer, twin.mixer, watch), Twin(layer.ffn, twin.ffn, watch)
        cache = fast.new_cache()
        for chunk in [ids[:9]] + [[t] for t in ids[9:]]:        # 9 tokens: the prefill kernels
            fast.forward(chunk, cache)
    assert watch.loose <= watch.tight // 3
    cache = ref.new_cache()
    want = np.concatenate([ref.forward(ids[:9], cache)] + [ref.forward([t], cache) for t in ids[9:]])
    float_path = cogcore.load(out).forward(ids)
    err = np.abs(want - float_path).mean() / np.abs(float_path).mean()
    assert 0 < err < 0.1, err
    args = build_parser().parse_args(["generate", "--model", str(out), "--backend", "numpy", "--int8-activations", "hi"])
    assert load_model(args).ops.int8_activations
