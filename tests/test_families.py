"""Public model families against transformers' own recorded outputs (no torch needed).

The fixtures are unmodified Hugging Face directories of tiny random models made by
tests/fixtures/make_families.py, with the float32 logits, greedy continuation and
RoPE tables transformers computed from them; the RWKV-7 ones (rwkv7, rwkv7-tied) by
tests/fixtures/make_rwkv7.py from fla's RWKV7ForCausalLM.
"""

import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cogcore
from cogcore.blocks.rope import inv_freq, rope_tables
from cogcore.errors import ConfigError, WeightsError
from cogcore.families import FAMILIES, load_config
from cogcore.weights import ExpertStack

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "families")
NAMES = sorted(FAMILIES)
FIXTURES = sorted(n for n in os.listdir(HERE) if os.path.isdir(os.path.join(HERE, n)))   # a family, or family-variant
ATTENTION = [n for n in NAMES if n != "rwkv7"]


def reference(name):
    d = os.path.join(HERE, name)
    with open(os.path.join(d, "reference.json")) as f:
        ref = json.load(f)
    return d, ref, np.load(os.path.join(d, "logits.npy"))


def relative(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_every_family_has_a_fixture_of_the_required_shape():
    assert set(FAMILIES) == set(cogcore.config.FAMILIES)      # the Config accepts exactly these
    assert set(NAMES) <= set(FIXTURES)
    for name in FIXTURES:
        cfg = cogcore.load(os.path.join(HERE, name), backend="numpy").config
        assert cfg.family == name.split("-")[0]
        assert cfg.num_hidden_layers > 1
        if cfg.num_attention_heads:
            assert cfg.num_key_value_heads < cfg.num_attention_heads
        if "moe" in cfg.mlp_types:
            assert cfg.num_experts > 8


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", FIXTURES)
def test_logits_and_greedy_tokens_match_transformers(name, backend):
    d, ref, want = reference(name)
    model = cogcore.load(d, backend=backend)
    assert relative(model.forward(ref["prompt"]), want) < 1e-4
    cache = model.new_cache()
    logits = model.forward(ref["prompt"], cache=cache)
    steps = [model.forward([t], cache=model_cache)[0] for model_cache in [model.new_cache()]
             for t in ref["prompt"]]
    assert relative(np.stack(steps), want) < 1e-4          # token by token, through the cache
    greedy = []
    for _ in ref["greedy"]:
        greedy.append(int(np.argmax(logits[-1])))
        logits = model.forward([greedy[-1]], cache=cache)
    assert greedy == ref["greedy"]


@pytest.mark.parametrize("name", ATTENTION)
def test_rope_matches_transformers_at_long_positions(name):
    d = os.path.join(HERE, name)
    cfg = cogcore.load(d, backend="numpy").config
    ref = np.load(os.path.join(d, "rope.npz"))
    freq = inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.rope_angles)
    cos, sin = rope_tables(ref["positions"], freq)
    half = cfg.head_dim // 2
    np.testing.assert_allclose(cos, ref["cos"][:, :half], atol=2e-6)
    np.testing.assert_allclose(sin, ref["sin"][:, :half], atol=2e-6)
    # float64 angles (cogcore's own models) part from transformers' float32 ones far out (50x the tolerance)
    cos64, _ = rope_tables(ref["positions"], inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))
    assert np.abs(cos64 - ref["cos"][:, :half]).max() > 1e-4


def test_experts_are_stacked_without_copying():
    d = os.path.join(HERE, "mixtral")
    model = cogcore.load(d, backend="numpy")
    stack = model.layers[0].ffn.gate_proj
    assert isinstance(stack, ExpertStack) and stack.shape == (10, 16, 32)
    from cogcore.tensorfile import read_safetensors
    raw, _ = read_safetensors(os.path.join(d, "model.safetensors"))
    w1 = raw["model.layers.0.block_sparse_moe.experts.3.w1.weight"]
    assert isinstance(stack[3], np.memmap) and np.array_equal(stack[3], w1)   # the file itself, not a copy


def copy_with(tmp_path, name, change=None, drop=()):
    """A copy of a fixture with config.json keys changed and tensors dropped."""
    d = tmp_path / name
    shutil.copytree(os.path.join(HERE, name), d)
    with open(d / "config.json") as f:
        raw = json.load(f)
    raw.update(change or {})
    with open(d / "config.json", "w") as f:
        json.dump(raw, f)
    if drop:
        from cogcore.tensorfile import read_safetensors, write_safetensors
        tensors, _ = read_safetensors(d / "model.safetensors")
        kept = {k: np.array(v) for k, v in tensors.items() if k not in drop}
        write_safetensors(d / "model.safetensors", kept)
    return d


@pytest.mark.parametrize("name, change, field", [
    ("llama", {"model_type": "gpt_neox"}, "model_type"),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
     "rope_parameters.rope_type"),
    ("llama", {"rope_parameters": None, "rope_theta": 1e4, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
     "rope_scaling.rope_type"),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}},
     "rope_parameters.low_freq_factor"),
    ("llama", {"mlp_bias": True}, "mlp_bias"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act"),
    ("qwen2", {"use_sliding_window": True}, "use_sliding_window"),
    ("qwen2", {"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
    ("olmoe", {"clip_qkv": 8.0}, "clip_qkv"),
    ("mixtral", {"hidden_size": None}, "hidden_size"),
    ("rwkv7", {"attn": {"layers": [1], "num_heads": 4}}, "attn"),
    ("rwkv7", {"value_dim": 64}, "value_dim"),
    ("rwkv7", {"hidden_act": "swish"}, "hidden_act"),
    ("rwkv7", {"head_dim": None, "num_heads": 5}, "num_heads"),
    ("rwkv7", {"a_low_rank_dim": "8"}, "a_low_rank_dim"),
])
def test_unsupported_options_are_refused_by_name(tmp_path, name, change, field):
    d = copy_with(tmp_path, name, change)
    with pytest.raises(ConfigError, match=f"'{field}'"):
        cogcore.load(d, backend="numpy")


def test_a_missing_expert_is_named(tmp_path):
    d = copy_with(tmp_path, "mixtral", drop={"model.layers.1.block_sparse_moe.experts.4.w2.weight"})
    with pytest.raises(WeightsError, match="expert 4"):
        cogcore.load(d, backend="numpy")


def test_a_misshapen_expert_is_named(tmp_path):
    d = copy_with(tmp_path, "olmoe")
    from cogcore.tensorfile import read_safetensors, write_safetensors
    tensors, _ = read_safetensors(d / "model.safetensors")
    tensors = {k: np.array(v) for k, v in tensors.items()}
    name = "model.layers.0.mlp.experts.7.up_proj.weight"
    tensors[name] = tensors[name][:8]
    write_safetensors(d / "model.safetensors", tensors)
    with pytest.raises(WeightsError, match=name.replace(".", r"\.")):
        cogcore.load(d, backend="numpy")


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=True)
                           | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
CONFIGS = {name: json.load(open(os.path.join(HERE, name, "config.json"))) for name in NAMES}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), data=st.data())
def test_fuzzed_family_configs_load_or_fail_clearly(name, data):
    """Any key of a family config.json set to any JSON value: a Config or a ConfigError, nothing else."""
    raw = dict(CONFIGS[name])
    keys = sorted(raw) + ["rope_scaling", "rope_theta", "num_experts", "mlp_only_layers"]
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.sampled_from(keys))] = data.draw(JSON_VALUES)
    try:
        load_config(raw, "fuzz.json")
    except ConfigError:
        pass


def test_a_sharded_family_directory_loads(tmp_path):
    from cogcore.tensorfile import read_safetensors, write_sharded
    d, ref, want = reference("mixtral")
    out = tmp_path / "mixtral"
    shutil.copytree(d, out)
    tensors, _ = read_safetensors(out / "model.safetensors")
    os.remove(out / "model.safetensors")
    write_sharded(out, {k: np.array(v) for k, v in tensors.items()}, max_shard_bytes=60_000)
    assert len([f for f in os.listdir(out) if f.startswith("model-")]) > 2
    model = cogcore.load(out, backend="numpy")
    assert relative(model.forward(ref["prompt"]), want) < 1e-4


def test_a_saved_lm_head_of_a_tied_model_is_ignored_as_transformers_does(tmp_path):
    from cogcore.tensorfile import read_safetensors, write_safetensors
    d, ref, want = reference("qwen2")                        # tie_word_embeddings: true
    out = tmp_path / "qwen2"
    shutil.copytree(d, out)
    tensors, _ = read_safetensors(out / "model.safetensors")
    tensors = {k: np.array(v) for k, v in tensors.items()}
    tensors["lm_head.weight"] = np.zeros_like(tensors["model.embed_tokens.weight"])
    write_safetensors(out / "model.safetensors", tensors)
    assert relative(cogcore.load(out, backend="numpy").forward(ref["prompt"]), want) < 1e-4


def test_a_family_model_can_be_traced(tmp_path):
    from cogcore import trace
    d, _, _ = reference("mixtral")
    model = cogcore.load(d, backend="numpy")
    trace.save(trace.record(model, "Hello"), tmp_path / "t")            # no nsa_* fields to record
    got = trace.load(tmp_path / "t")
    assert got.nsa == {} and len(got.layers) == model.config.num_hidden_layers
    assert all(layer["experts"].shape[-1] == model.config.num_experts_per_tok for layer in got.layers)


# ---- RWKV-7 (fla's layout) ----------------------------------------------------

def test_rwkv7_views_of_the_file_are_not_copies():
    """fla's nn.Linear LoRA halves are presented transposed, its [1, 1, D] token-shift mixes
    as [D]: both as views of the memory-mapped file."""
    from cogcore.tensorfile import read_safetensors
    d = os.path.join(HERE, "rwkv7")
    model = cogcore.load(d, backend="numpy")
    raw, _ = read_safetensors(os.path.join(d, "model.safetensors"))
    got = model.weights.tensors
    for ours, theirs, view in [("model.layers.1.rwkv.w1", "model.layers.1.attn.w_lora.lora.0.weight", np.transpose),
                               ("model.layers.2.rwkv.g2", "model.layers.2.attn.g_lora.lora.2.weight", np.transpose),
                               ("model.layers.1.rwkv.v0", "model.layers.1.attn.v_lora.lora.2.bias", np.asarray),
                               ("model.layers.0.rwkv.x_a", "model.layers.0.attn.x_a", np.ravel)]:
        assert isinstance(got[ours], np.memmap) and not got[ours].flags.owndata      # the file itself
        assert np.array_equal(got[ours], view(raw[theirs]))
    assert "model.layers.0.rwkv.v1" not in got                # fla's layer 0 has no v_lora


def test_rwkv7_group_norm_eps_is_flas_head_size_times_norm_eps():
    """fla's g_norm eps is head_dim * norm_eps (8e-5 here), not the reference's 64e-5: the
    fixture tells them apart, so it checks the option."""
    from cogcore.model import Model
    d, ref, want = reference("rwkv7")
    model = cogcore.load(d, backend="numpy")
    assert model.config.rwkv_group_norm_eps == pytest.approx(8 * 1e-5)
    other = Model(model.config.replace(rwkv_group_norm_eps=64e-5), model.weights, "numpy")
    assert relative(other.forward(ref["prompt"]), want) > 1e-3


def test_rwkv7_config_takes_flas_defaults():
    """Absent keys take RWKV7Config's defaults; null widths fla's layer formulas."""
    cfg = load_config({"model_type": "rwkv7"}, "config.json")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.rwkv_head_size, cfg.vocab_size) == (2048, 24, 64, 32000)
    assert (cfg.rwkv_decay_rank, cfg.rwkv_a_rank, cfg.rwkv_v_rank, cfg.rwkv_gate_rank) == (64, 64, 16, 128)
    assert cfg.intermediate_size == 4 * 2048 and cfg.norm_type == "layernorm" and cfg.embedding_norm
    assert cfg.rwkv_group_norm_eps == pytest.approx(64e-5) and cfg.rwkv_kk_norm == "epsilon"
    assert set(cfg.layer_types) == {"recurrent"} and set(cfg.mlp_types) == {"channel_mix"}
    nulls = {"model_type": "rwkv7", "head_dim": 64, "decay_low_rank_dim": None, "a_low_rank_dim": None,
             "v_low_rank_dim": None, "gate_low_rank_dim": None, "hidden_ratio": 3.5, "fuse_norm": False}
    # the widths fla 0.6.0's RWKV7Attention and RWKV7FeedForward chose for these sizes
    for D, ranks, F in [(1024, (64, 64, 64, 160), 3584), (2048, (128, 128, 64, 224), 7168)]:
        cfg = load_config({**nulls, "hidden_size": D}, "config.json")
        assert (cfg.rwkv_decay_rank, cfg.rwkv_a_rank, cfg.rwkv_v_rank, cfg.rwkv_gate_rank) == ranks
        assert cfg.intermediate_size == F and cfg.rwkv_kk_norm == "clamp"


def test_rwkv7_without_pre_norm_and_bias_keys_is_refused_by_tensor(tmp_path):
    """A layout that does not match the config is named by tensor (here norm_first: false with ln0 saved)."""
    d = copy_with(tmp_path, "rwkv7", {"norm_first": False})
    with pytest.raises(WeightsError, match="model.embed_norm"):
        cogcore.load(d, backend="numpy")


@pytest.mark.parametrize("name, shape, named", [
    ("model.layers.1.attn.x_r", (2, 16), "model.layers.1.rwkv.x_r"),                   # not [1, 1, D]
    ("model.layers.1.attn.w_lora.lora.0.weight", (8, 32, 1), "model.layers.1.rwkv.w1"),
    ("model.layers.2.attn.v_lora.lora.2.bias", (31,), "model.layers.2.rwkv.v0"),
])
def test_rwkv7_misshapen_tensors_are_named(tmp_path, name, shape, named):
    from cogcore.tensorfile import read_safetensors, write_safetensors
    d = copy_with(tmp_path, "rwkv7")
    tensors, _ = read_safetensors(d / "model.safetensors")
    tensors = {k: np.array(v) for k, v in tensors.items()}
    tensors[name] = np.zeros(shape, np.float32)
    write_safetensors(d / "model.safetensors", tensors)
    with pytest.raises(WeightsError, match=named.replace(".", r"\.")):
        cogcore.load(d, backend="numpy")


def test_rwkv7_directory_through_the_cli(capsys):
    from cogcore import cli
    d = os.path.join(HERE, "rwkv7")
    assert cli.main(["inspect", d]) == 0
    out = capsys.readouterr().out
    assert '"rwkv7"' in out and "model.layers.0.attn.w_lora.lora.0.weight" in out   # the file's own names
    assert cli.main(["generate", "--model", d, "--backend", "numpy", "-n", "4", "-t", "0", "Hello"]) == 0
    model = cogcore.load(d, backend="numpy")
    assert capsys.readouterr().out == model.generate("Hello", max_new_tokens=4, temperature=0.0) + "\n"
