"""The safetensors reader/writer and the model loader (SPEC Section 1): dtypes, sharding,
memory mapping, and every kind of bad input, which must be a CogcoreError naming the
file, tensor or key with what was expected and what was found."""

import json
import os
import struct

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cogcore
from cogcore.config import Config
from cogcore.create import init_model
from cogcore.dtypes import f32, to_bf16
from cogcore.tensorfile import read_model_tensors, read_safetensors, write_safetensors, write_sharded

from conftest import small_config


def check_error(exc_info, *fragments):
    assert isinstance(exc_info.value, cogcore.CogcoreError)
    msg = str(exc_info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"


def raw_file(path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    """Write a safetensors-like file by hand: 8-byte length, header, data."""
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb) if length is None else length))
        f.write(hb)
        f.write(data)
    return str(path)


# ---------------------------------------------------------------- dtypes and round trips
def test_round_trip_every_dtype(tmp_path, rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    tensors = {"a32": x, "a16": x.astype(np.float16), "abf": to_bf16(x), "scalar": np.array(2.5, np.float32),
               "empty": np.zeros((0, 4), np.float32)}
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors, metadata={"k": "v"})
    got, meta = read_safetensors(path)
    assert meta == {"k": "v"}
    assert set(got) == set(tensors)
    for name, a in tensors.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape
        np.testing.assert_array_equal(got[name], a)
    hdr = json.loads(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
    assert {n: hdr[n]["dtype"] for n in tensors} == {"a32": "F32", "a16": "F16", "abf": "BF16",
                                                    "scalar": "F32", "empty": "F32"}


def bf16_by_hand(x: float) -> int:
    """Round-to-nearest-even to bfloat16 from the format's definition, in float64: of the two
    bfloat16 neighbours of x (truncate, truncate + 1 ulp) take the nearer, ties to the even one."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    if x != x:
        return 0x7FC0
    lo = bits >> 16
    if (bits & 0xFFFF) == 0:
        return lo
    hi = lo + 1

    def value(b):
        return struct.unpack("<f", struct.pack("<I", (b & 0xFFFF) << 16))[0]

    if (hi & 0x7F80) == 0x7F80:          # rounding up overflows the exponent: +-inf
        d_lo, d_hi = abs(x - value(lo)), abs(value(lo) + (value(lo) - value(lo - 1)) - x)
    else:
        d_lo, d_hi = abs(x - value(lo)), abs(value(hi) - x)
    if d_lo != d_hi:
        return lo if d_lo < d_hi else hi
    return lo if lo % 2 == 0 else hi


def test_bf16_rounding_matches_the_definition(rng):
    x = np.concatenate([rng.standard_normal(2000).astype(np.float32) * 10.0 ** rng.integers(-8, 8, 2000),
                        np.array([0.0, -0.0, 1.0, np.inf, -np.inf, 3.4e38, 1e-40], np.float32)])
    # exact halfway cases: ties go to even
    halfway = np.array([0x3F808000, 0x3F818000, 0xBF808000], np.uint32).view(np.float32)
    x = np.concatenate([x, halfway]).astype(np.float32)
    want = np.array([bf16_by_hand(float(v)) for v in x], np.uint16)
    np.testing.assert_array_equal(to_bf16(x), want)
    # widening: bf16 bits are the top half of a float32
    np.testing.assert_array_equal(f32(want), (want.astype(np.uint32) << 16).view(np.float32))
    # by hand: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 and rounds to even (1.0)
    assert to_bf16(np.array([1 + 2 ** -8], np.float32))[0] == 0x3F80
    assert to_bf16(np.array([1 + 3 * 2 ** -8], np.float32))[0] == 0x3F82
    assert np.isnan(f32(to_bf16(np.array([np.nan], np.float32))))[0]


def test_files_written_by_safetensors_package_are_read(tmp_path, rng):
    tensors = {"w": rng.standard_normal((4, 7)).astype(np.float32),
               "h": rng.standard_normal(9).astype(np.float16)}
    path = str(tmp_path / "lib.safetensors")
    safetensors.numpy.save_file(tensors, path, metadata={"format": "np"})
    got, meta = read_safetensors(path)
    assert meta == {"format": "np"}
    for name, a in tensors.items():
        np.testing.assert_array_equal(got[name], a)
        assert got[name].dtype == a.dtype


def test_bf16_file_from_the_format_definition_is_read(tmp_path, rng):
    bits = rng.integers(0, 2 ** 16, (3, 6)).astype("<u2")
    bits[(bits & 0x7F80) == 0x7F80] = 0x3F80                    # no inf/NaN patterns
    path = raw_file(tmp_path / "bf.safetensors",
                    {"b": {"dtype": "BF16", "shape": [3, 6], "data_offsets": [0, 36]}}, bits.tobytes())
    got, _ = read_safetensors(path)
    assert got["b"].dtype == np.uint16
    np.testing.assert_array_equal(got["b"], bits)
    want = np.array([[struct.unpack("<f", struct.pack("<I", int(b) << 16))[0] for b in row] for row in bits],
                    np.float32)
    np.testing.assert_array_equal(f32(got["b"]), want)


def test_our_files_are_read_by_safetensors_package(tmp_path, rng):
    tensors = {"w": rng.standard_normal((4, 7)).astype(np.float32),
               "h": rng.standard_normal((2, 3, 5)).astype(np.float16)}
    path = str(tmp_path / "ours.safetensors")
    write_safetensors(path, tensors, metadata={"a": "b"})
    got = safetensors.numpy.load_file(path)
    for name, a in tensors.items():
        np.testing.assert_array_equal(got[name], a)
    write_safetensors(path, {"b": to_bf16(tensors["w"])})
    with safetensors.safe_open(path, framework="numpy") as f:     # numpy has no bfloat16: check the layout
        sl = f.get_slice("b")
        assert sl.get_dtype() == "BF16" and sl.get_shape() == [4, 7]


def test_arrays_are_memory_mapped_read_only(tmp_path, rng):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"a": rng.standard_normal((8, 8)).astype(np.float32),
                             "b": rng.standard_normal(5).astype(np.float32)})
    got, _ = read_safetensors(path)
    a, b = got["a"], got["b"]
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0] = 1.0
    roots = []
    for arr in (a, b):
        chain = [arr]
        while isinstance(chain[-1].base, np.ndarray):
            chain.append(chain[-1].base)
        assert any(isinstance(c, np.memmap) for c in chain), "tensor does not view a memory map"
        assert not any(c.flags.owndata for c in chain[:-1])
        roots.append(chain[-1])
    assert roots[0] is roots[1]                      # both view the one mapping of the file
    assert np.shares_memory(a, roots[0]) and np.shares_memory(b, roots[0])
    assert roots[0].filename == os.path.realpath(path)


def test_loaded_model_weights_are_not_copied(tiny_dir):
    model = cogcore.load(tiny_dir, backend="numpy")
    for arr in (model.embed_tokens, model.layers[1].ffn.gate_proj, model.layers[0].mixer.W_r):
        assert not arr.flags.writeable and not arr.flags.owndata
        chain = [arr]
        while isinstance(chain[-1].base, np.ndarray):
            chain.append(chain[-1].base)
        assert isinstance(chain[-1], np.memmap)


def test_writer_rejects_unsupported_dtypes(tmp_path):
    with pytest.raises(cogcore.WeightsError) as e:
        write_safetensors(tmp_path / "x.safetensors", {"d": np.zeros(3, np.float64)})
    check_error(e, "'d'", "float32", "float64")
    with pytest.raises(cogcore.WeightsError) as e:
        write_safetensors(tmp_path / "x.safetensors", {"i": np.zeros(3, np.int32)})
    check_error(e, "'i'", "int32")
    assert not os.path.exists(tmp_path / "x.safetensors")


def test_writer_writes_non_contiguous_arrays_in_c_order(tmp_path, rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    write_safetensors(tmp_path / "t.safetensors", {"t": x.T, "s": x[:, ::2]})
    got, _ = read_safetensors(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(got["t"], x.T)
    np.testing.assert_array_equal(got["s"], x[:, ::2])


# ---------------------------------------------------------------- sharding
def test_sharded_round_trip_and_model_load(tmp_path):
    cfg = Config.from_dict(small_config())
    one = tmp_path / "one"
    init_model(one, cfg, seed=5)
    tensors, _ = read_model_tensors(one)
    many = tmp_path / "many"
    many.mkdir()
    write_sharded(many, {k: np.array(v) for k, v in tensors.items()}, max_shard_bytes=20_000)
    (many / "config.json").write_text((one / "config.json").read_text())
    index = json.loads((many / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in tensors.values())
    for s in shards:
        assert os.path.getsize(many / s) < 20_000 + 4096
    got, origin = read_model_tensors(many)
    assert set(got) == set(tensors)
    for name in tensors:
        np.testing.assert_array_equal(got[name], tensors[name])
        assert os.path.basename(origin[name]) == index["weight_map"][name]
    ids = [1, 5, 9, 3, 30, 2]
    a = cogcore.load(one, backend="numpy").forward(ids)
    b = cogcore.load(many, backend="numpy").forward(ids)
    np.testing.assert_array_equal(a, b)


@pytest.fixture
def sharded(tmp_path, rng):
    d = tmp_path / "sh"
    d.mkdir()
    tensors = {f"t{i}": rng.standard_normal(50).astype(np.float32) for i in range(4)}
    write_sharded(d, tensors, max_shard_bytes=400)
    return d, json.loads((d / "model.safetensors.index.json").read_text())


def test_missing_shard(sharded):
    d, index = sharded
    shard = index["weight_map"]["t3"]
    os.remove(d / shard)
    with pytest.raises(cogcore.WeightsError) as e:
        read_model_tensors(d)
    check_error(e, "model.safetensors.index.json", shard, "does not exist")


def test_shard_missing_a_tensor_the_index_names(sharded):
    d, index = sharded
    index["weight_map"]["t9"] = index["weight_map"]["t0"]
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(cogcore.WeightsError) as e:
        read_model_tensors(d)
    check_error(e, index["weight_map"]["t0"], "'t9'", "does not hold")


def test_shard_holding_a_tensor_the_index_does_not_map_there(sharded):
    d, index = sharded
    index["weight_map"]["t1"] = index["weight_map"]["t3"]
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(cogcore.WeightsError) as e:
        read_model_tensors(d)
    check_error(e, "'t1'")


@pytest.mark.parametrize("text,fragment", [("{", "JSON"), ("[]", "weight_map"),
                                           ('{"weight_map": {"a": 3}}', "weight_map"),
                                           ('{"weight_map": {"a": "../x.safetensors"}}', "inside the model directory")])
def test_bad_index(tmp_path, text, fragment):
    (tmp_path / "model.safetensors.index.json").write_text(text)
    with pytest.raises(cogcore.WeightsError) as e:
        read_model_tensors(tmp_path)
    check_error(e, "model.safetensors.index.json", fragment)


def test_no_weights_at_all(tmp_path):
    with pytest.raises(cogcore.WeightsError) as e:
        read_model_tensors(tmp_path)
    check_error(e, str(tmp_path), "model.safetensors", "neither")


# ---------------------------------------------------------------- corrupt files
GOOD = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "F16", "shape": [4], "data_offsets": [16, 24]}}


def test_hand_written_file_is_read(tmp_path):
    data = np.arange(4, dtype=np.float32).tobytes() + np.arange(4, dtype=np.float16).tobytes()
    got, _ = read_safetensors(raw_file(tmp_path / "f", GOOD, data))
    np.testing.assert_array_equal(got["a"], [[0, 1], [2, 3]])
    np.testing.assert_array_equal(got["b"], [0, 1, 2, 3])


@pytest.mark.parametrize("header,data_len,fragments", [
    ({"a": {"dtype": "I32", "shape": [4], "data_offsets": [0, 16]}}, 16, ["'a'", "unsupported dtype", "F32", "'I32'"]),
    ({"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}}, 16, ["'a'", "unsupported dtype", "'F64'"]),
    ({"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, 16, ["'a'", "[5]", "needs 20 bytes", "span 16"]),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 32]}}, 16, ["'a'", "[0, 32]", "outside", "16 bytes"]),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [-4, 12]}}, 16, ["'a'", "outside"]),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [8, 4]}}, 16, ["'a'", "outside"]),
    ({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, 16, ["'a'", "'b'", "overlap"]),
    ({"a": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}, 16, ["'a'", "shape", "'4'"]),
    ({"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, 16, ["'a'", "shape", "-4"]),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0]}}, 16, ["'a'", "data_offsets", "[0]"]),
    ({"a": [1, 2]}, 16, ["'a'", "expected an object"]),
    ({"__metadata__": {"x": 1}}, 0, ["__metadata__", "strings"]),
])
def test_bad_header_entries(tmp_path, header, data_len, fragments):
    path = raw_file(tmp_path / "bad.safetensors", header, b"\0" * data_len)
    with pytest.raises(cogcore.WeightsError) as e:
        read_safetensors(path)
    check_error(e, path, *fragments)


def test_header_not_json_or_not_object(tmp_path):
    path = raw_file(tmp_path / "nj", b"{not json", b"")
    with pytest.raises(cogcore.WeightsError) as e:
        read_safetensors(path)
    check_error(e, path, "JSON")
    path = raw_file(tmp_path / "arr", b"[1, 2]", b"")
    with pytest.raises(cogcore.WeightsError) as e:
        read_safetensors(path)
    check_error(e, path, "JSON object", "list")
    path = raw_file(tmp_path / "utf", b"\xff\xfe{}", b"")
    with pytest.raises(cogcore.WeightsError) as e:
        read_safetensors(path)
    check_error(e, path, "UTF-8")


def test_truncated_files(tmp_path):
    data = np.arange(4, dtype=np.float32).tobytes() + np.arange(4, dtype=np.float16).tobytes()
    full = (tmp_path / "full")
    raw_file(full, GOOD, data)
    blob = full.read_bytes()
    short = tmp_path / "short"
    short.write_bytes(blob[:5])
    with pytest.raises(cogcore.WeightsError) as e:
        read_safetensors(short)
    check_error(e, str(short), "8-byte header length", "5 bytes")
    short.write_bytes(blob[:30])                         # header cut
    with pytest.raises(cogcore.WeightsError) as e:
        read_safetensors(short)
    check_error(e, str(short), "header says", "22 bytes")
    short.write_bytes(blob[:-3])                         # data cut: b no longer fits
    with pytest.raises(cogcore.WeightsError) as e:
        read_safetensors(short)
    check_error(e, str(short), "'b'", "outside")
    huge = raw_file(tmp_path / "huge", b"{}", b"", length=2 ** 62)
    with pytest.raises(cogcore.WeightsError) as e:
        read_safetensors(huge)
    check_error(e, huge, "header says")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(cogcore.WeightsError) as e:
        read_safetensors(tmp_path / "nope.safetensors")
    check_error(e, "nope.safetensors", "not found")
    with pytest.raises(cogcore.WeightsError) as e:
        read_safetensors(tmp_path)
    check_error(e, str(tmp_path), "directory")


_json = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                     max_leaves=12)
_entry = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I32", "F64", 3, None]),
    "shape": st.lists(st.integers(-2, 5), max_size=3) | _json,
    "data_offsets": st.lists(st.integers(-8, 80), min_size=0, max_size=3) | _json})


def _attempt(path):
    """Reading must either succeed with consistent arrays or raise a CogcoreError."""
    try:
        tensors, meta = read_safetensors(path)
    except cogcore.CogcoreError:
        return
    for a in tensors.values():
        assert a.dtype in (np.float32, np.float16, np.uint16)
        _ = np.asarray(a).sum()   # every byte is readable
    assert all(isinstance(v, str) for v in meta.values())


HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYP
@given(header=st.dictionaries(st.text(max_size=5), _entry | _json, max_size=4), pad=st.integers(0, 96))
def test_random_headers_never_crash(tmp_path, header, pad):
    _attempt(raw_file(tmp_path / "h.safetensors", header, b"\x01" * pad))


@HYP
@given(flips=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(1, 255)), max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 10 ** 6)))
def test_corrupted_files_never_crash(tmp_path, flips, cut):
    data = np.arange(4, dtype=np.float32).tobytes() + np.arange(4, dtype=np.float16).tobytes()
    blob = bytearray(open(raw_file(tmp_path / "g", GOOD, data), "rb").read())
    for pos, x in flips:
        blob[pos % len(blob)] ^= x
    if cut is not None:
        blob = blob[:cut % (len(blob) + 1)]
    path = tmp_path / "c.safetensors"
    path.write_bytes(bytes(blob))
    _attempt(str(path))


@HYP
@given(text=st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_random_header_bytes_never_crash(tmp_path, text):
    _attempt(raw_file(tmp_path / "r.safetensors", text, b"\0" * 8))


def test_deeply_nested_header_is_an_error(tmp_path):
    path = raw_file(tmp_path / "deep", b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(cogcore.WeightsError) as e:
        read_safetensors(path)
    check_error(e, path, "JSON")


# ---------------------------------------------------------------- model directories
@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "m"
    init_model(d, Config.from_dict(small_config()), seed=2)
    return d


def _rewrite(d, change):
    tensors, _ = read_safetensors(d / "model.safetensors")
    tensors = {k: np.array(v) for k, v in tensors.items()}
    change(tensors)
    write_safetensors(d / "model.safetensors", tensors)


def test_missing_tensor(model_dir):
    _rewrite(model_dir, lambda t: t.pop("model.layers.1.self_attn.compress_v.fc1.weight"))
    with pytest.raises(cogcore.WeightsError) as e:
        cogcore.load(model_dir, backend="numpy")
    check_error(e, str(model_dir), "'model.layers.1.self_attn.compress_v.fc1.weight'", "[7, 24]", "no such")


def test_wrong_shape(model_dir):
    _rewrite(model_dir, lambda t: t.update({"model.layers.0.rwkv.r_k": np.zeros((10, 3), np.float32)}))
    with pytest.raises(cogcore.WeightsError) as e:
        cogcore.load(model_dir, backend="numpy")
    check_error(e, "model.safetensors", "'model.layers.0.rwkv.r_k'", "expected shape [3, 10]", "found [10, 3]")


def test_unexpected_tensor_and_strict_false(model_dir):
    _rewrite(model_dir, lambda t: t.update({"model.layers.9.extra": np.zeros(3, np.float32)}))
    with pytest.raises(cogcore.WeightsError) as e:
        cogcore.load(model_dir, backend="numpy")
    check_error(e, "model.safetensors", "'model.layers.9.extra'", "unexpected", "strict=False")
    model = cogcore.load(model_dir, backend="numpy", strict=False)
    assert model.forward([1, 2]).shape == (2, 37)


def test_lm_head_left_over_when_tied(model_dir):
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(cogcore.WeightsError) as e:
        cogcore.load(model_dir, backend="numpy")
    check_error(e, "'lm_head.weight'", "unexpected")


def test_config_error_names_the_file(model_dir):
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["num_key_value_heads"] = 4
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(cogcore.ConfigError) as e:
        cogcore.load(model_dir, backend="numpy")
    check_error(e, str(model_dir / "config.json"), "'num_key_value_heads'", "num_attention_heads=6", "4")


def test_load_errors(model_dir, tmp_path):
    with pytest.raises(cogcore.CogcoreError) as e:
        cogcore.load(model_dir, backend="torch")
    check_error(e, "backend", "numba, numpy", "'torch'")
    with pytest.raises(cogcore.CogcoreError) as e:
        cogcore.load(tmp_path / "nothing", backend="numpy")
    check_error(e, "nothing", "model directory")
    with pytest.raises(cogcore.CogcoreError) as e:
        cogcore.load(model_dir / "config.json", backend="numpy")
    check_error(e, "config.json", "a file")
    os.remove(model_dir / "config.json")
    with pytest.raises(cogcore.ConfigError) as e:
        cogcore.load(model_dir, backend="numpy")
    check_error(e, "config.json", "not found")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_narrow_dtypes_load_and_widen(tmp_path, dtype):
    cfg = Config.from_dict(small_config())
    init_model(tmp_path / dtype, cfg, dtype=dtype, seed=1)
    init_model(tmp_path / "f32", cfg, dtype="float32", seed=1)
    narrow, _ = read_model_tensors(tmp_path / dtype)
    wide, _ = read_model_tensors(tmp_path / "f32")
    for name, a in narrow.items():
        assert a.dtype == (np.float16 if dtype == "float16" else np.uint16)
        if dtype == "float16":
            np.testing.assert_array_equal(a, wide[name].astype(np.float16))
        else:
            np.testing.assert_array_equal(a, to_bf16(np.asarray(wide[name])))
    logits = cogcore.load(tmp_path / dtype, backend="numpy").forward([3, 4, 5])
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
