"""config.json parsing and validation (SPEC Section 2), presets (Section 8), parameter counts."""

import json
import re

import pytest

import cogcore
from cogcore.config import GENERAL_DEFAULTS, Config

import naive
from conftest import small_config


def check_error(exc_info, *fragments):
    """The error is a CogcoreError whose message contains every fragment."""
    assert isinstance(exc_info.value, cogcore.CogcoreError)
    msg = str(exc_info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"


def test_small_config_is_valid_and_round_trips():
    cfg = Config.from_dict(small_config())
    assert cfg.layer_types == ("recurrent", "sparse_attention", "full_attention", "sliding_attention")
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()


def test_defaults_of_general_keys():
    raw = small_config()
    for key in GENERAL_DEFAULTS:
        raw.pop(key, None)
    cfg = Config.from_dict(raw)
    assert cfg.model_type == "cogcore"
    assert cfg.norm_type == "rmsnorm" and cfg.norm_eps == 1e-5
    assert cfg.embedding_norm is False and cfg.tie_word_embeddings is False
    assert (cfg.bos_token_id, cfg.eos_token_id) == (1, 2)
    assert cfg.max_position_embeddings == 131072
    assert cfg.norm_topk_prob is True
    assert cfg.num_shared_experts == 0


def test_unknown_keys_are_ignored():
    cfg = Config.from_dict({**small_config(), "architectures": ["X"], "torch_dtype": "bfloat16"})
    assert cfg == Config.from_dict(small_config())
    assert "architectures" not in cfg.to_dict()


def test_keys_unused_by_the_layers_may_be_absent_and_are_dropped():
    raw = small_config(num_hidden_layers=2, layer_types=["full_attention", "full_attention"],
                       mlp_types=["dense", "dense"])
    for key in list(raw):
        if key.startswith(("nsa_", "rwkv_")) or key in ("sliding_window", "num_experts",
                                                         "num_experts_per_tok", "moe_intermediate_size"):
            del raw[key]
    cfg = Config.from_dict(raw)
    assert cfg.nsa_window is None and cfg.rwkv_head_size is None and cfg.num_experts is None
    # present but unused keys are dropped too, so equal models compare equal
    full = small_config(num_hidden_layers=2, layer_types=["full_attention", "full_attention"],
                        mlp_types=["dense", "dense"])
    assert Config.from_dict(full) == cfg
    assert "nsa_window" not in cfg.to_dict()


@pytest.mark.parametrize("key", ["vocab_size", "hidden_size", "num_hidden_layers", "layer_types", "mlp_types"])
def test_missing_required_key(key):
    raw = small_config()
    del raw[key]
    with pytest.raises(cogcore.ConfigError) as e:
        Config.from_dict(raw, source="m/config.json")
    check_error(e, "m/config.json", f"'{key}'", "required")


@pytest.mark.parametrize("key", ["head_dim", "num_key_value_heads", "rope_theta", "sliding_window",
                                 "nsa_select_block", "nsa_window", "rwkv_head_size", "rwkv_gate_rank",
                                 "num_experts", "moe_intermediate_size", "intermediate_size"])
def test_missing_key_required_by_a_layer(key):
    raw = small_config()
    del raw[key]
    with pytest.raises(cogcore.ConfigError) as e:
        Config.from_dict(raw, source="m/config.json")
    check_error(e, "m/config.json", f"'{key}'", "nothing")


# (overrides, key named, expected-fragment, found-fragment): one per rule of SPEC Section 2
RULES = [
    ({"num_attention_heads": 6, "num_key_value_heads": 4}, "num_key_value_heads", "divisor of num_attention_heads=6", "4"),
    ({"head_dim": 7}, "head_dim", "even", "7"),
    ({"rwkv_head_size": 7}, "rwkv_head_size", "divisor of hidden_size=30", "7"),
    ({"nsa_compress_block": 5}, "nsa_compress_block", "multiple of nsa_compress_stride=2", "5"),
    ({"nsa_select_block": 7}, "nsa_select_block", "multiple of nsa_compress_stride=2", "7"),
    ({"nsa_select_count": 2}, "nsa_select_count", ">= 3", "2"),
    ({"num_experts_per_tok": 6}, "num_experts_per_tok", "between 1 and num_experts=5", "6"),
    ({"num_experts_per_tok": 0}, "num_experts_per_tok", ">= 1", "0"),
    ({"eos_token_id": 37}, "eos_token_id", "< vocab_size=37", "37"),
    ({"bos_token_id": 40}, "bos_token_id", "< vocab_size=37", "40"),
    ({"eos_token_id": -1}, "eos_token_id", ">= 0", "-1"),
    ({"norm_type": "batchnorm"}, "norm_type", "rmsnorm, layernorm", "batchnorm"),
    ({"model_type": "llama"}, "model_type", "'cogcore'", "llama"),
    ({"layer_types": ["recurrent", "sparse_attention", "mamba", "sliding_attention"]}, "layer_types[2]",
     "one of full_attention", "mamba"),
    ({"mlp_types": ["moe", "dense", "glu", "moe"]}, "mlp_types[2]", "one of moe, dense, channel_mix", "glu"),
    ({"layer_types": ["recurrent"] * 3}, "layer_types", "num_hidden_layers=4", "recurrent"),
    ({"mlp_types": ["moe"] * 5}, "mlp_types", "num_hidden_layers=4", "moe"),
    ({"num_hidden_layers": 0}, "num_hidden_layers", ">= 1", "0"),
    ({"hidden_size": "30"}, "hidden_size", "integer", "'30'"),
    ({"hidden_size": 30.0}, "hidden_size", "integer", "30.0"),
    ({"vocab_size": True}, "vocab_size", "integer", "True"),
    ({"norm_eps": "1e-5"}, "norm_eps", "finite number > 0", "'1e-5'"),
    ({"norm_eps": 0}, "norm_eps", "> 0", "0"),
    ({"rope_theta": float("inf")}, "rope_theta", "finite", "inf"),
    ({"embedding_norm": 1}, "embedding_norm", "true or false", "1"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings", "true or false", "yes"),
    ({"layer_types": "recurrent"}, "layer_types", "a list", "recurrent"),
    ({"sliding_window": 0}, "sliding_window", ">= 1", "0"),
    ({"num_shared_experts": 2, "shared_expert_intermediate_size": 4}, "num_shared_experts", "0 or 1", "2"),
    ({"num_shared_experts": 1, "shared_expert_intermediate_size": 0}, "shared_expert_intermediate_size",
     ">= 1", "0"),
    ({"norm_bias": 0}, "norm_bias", "true or false", "0"),
    ({"rwkv_group_norm_eps": 1.5}, "rwkv_group_norm_eps", "(0, 1)", "1.5"),
    ({"rwkv_group_norm_eps": float("nan")}, "rwkv_group_norm_eps", "(0, 1)", "nan"),
    ({"rwkv_kk_norm": "l2"}, "rwkv_kk_norm", "clamp, epsilon", "l2"),
    ({"rwkv_first_v_lora": "no"}, "rwkv_first_v_lora", "true or false", "no"),
]


@pytest.mark.parametrize("overrides,key,expected,found", RULES, ids=[r[1] + "-" + str(i) for i, r in enumerate(RULES)])
def test_validation_rule(overrides, key, expected, found):
    with pytest.raises(cogcore.ConfigError) as e:
        Config.from_dict(small_config(**overrides), source="dir/config.json")
    check_error(e, "dir/config.json", f"'{key}'", expected, found)


def test_boundary_values_are_accepted():
    # exactly at each limit: n = 3, k = E, eos = V - 1, Hkv = H, l = s
    cfg = Config.from_dict(small_config(nsa_select_count=3, num_experts_per_tok=5, eos_token_id=36,
                                        num_key_value_heads=6, nsa_compress_block=2))
    assert cfg.nsa_select_count == 3 and cfg.num_experts_per_tok == 5


def test_rwkv_rule_only_when_a_layer_is_recurrent():
    raw = small_config(rwkv_head_size=7, layer_types=["full_attention"] * 4)
    assert Config.from_dict(raw).rwkv_head_size is None


def test_rwkv_options_default_to_the_reference_and_exist_only_with_recurrent_layers():
    cfg = Config.from_dict(small_config())
    assert (cfg.rwkv_group_norm_eps, cfg.rwkv_kk_norm, cfg.rwkv_first_v_lora) == (64e-5, "clamp", True)
    attention_only = Config.from_dict(small_config(layer_types=["full_attention"] * 4, rwkv_kk_norm="epsilon"))
    assert "rwkv_kk_norm" not in attention_only.to_dict()


def test_config_not_an_object():
    with pytest.raises(cogcore.ConfigError) as e:
        Config.from_dict([1, 2], source="x/config.json")
    check_error(e, "x/config.json", "JSON object", "list")


def test_config_file_errors(tmp_path):
    with pytest.raises(cogcore.ConfigError) as e:
        Config.from_file(tmp_path / "config.json")
    check_error(e, str(tmp_path / "config.json"), "not found")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"vocab_size\": 3,")
    with pytest.raises(cogcore.ConfigError) as e:
        Config.from_file(bad)
    check_error(e, str(bad), "JSON")
    arr = tmp_path / "arr.json"
    arr.write_text("[]")
    with pytest.raises(cogcore.ConfigError) as e:
        Config.from_file(arr)
    check_error(e, str(arr), "object")


def test_config_is_immutable_and_replace_validates():
    cfg = Config.from_dict(small_config())
    with pytest.raises(Exception):
        cfg.hidden_size = 3
    assert cfg.replace(num_experts_per_tok=1).num_experts_per_tok == 1
    with pytest.raises(cogcore.ConfigError, match="num_experts_per_tok"):
        cfg.replace(num_experts_per_tok=9)


# ---------------------------------------------------------------- presets (SPEC Section 8)
def test_tiny_preset_matches_spec():
    c = cogcore.preset("tiny")
    assert c.hidden_size == 64 and c.num_hidden_layers == 4 and c.vocab_size == 256
    assert c.layer_types == ("recurrent", "sparse_attention") * 2
    assert (c.num_attention_heads, c.head_dim, c.num_key_value_heads) == (4, 16, 2)
    assert (c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size) == (8, 2, 32)
    assert set(c.mlp_types) == {"moe"}
    assert (c.nsa_compress_block, c.nsa_compress_stride, c.nsa_select_block, c.nsa_select_count,
            c.nsa_window) == (8, 4, 16, 4, 16)


def test_4b_preset_matches_spec():
    c = cogcore.preset("4b")
    assert c.hidden_size == 2048 and c.num_hidden_layers == 24 and c.vocab_size == 32000
    assert c.layer_types == ("recurrent", "sparse_attention") * 12
    assert (c.num_attention_heads, c.head_dim, c.num_key_value_heads) == (16, 128, 4)
    assert (c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size) == (32, 2, 768)
    assert (c.nsa_compress_block, c.nsa_compress_stride, c.nsa_select_block, c.nsa_select_count,
            c.nsa_window) == (32, 16, 64, 16, 512)


def test_4b_parameter_counts():
    counts = cogcore.parameter_counts(cogcore.preset("4b"))
    assert 4.0e9 <= counts["total"] <= 4.2e9                      # "about 4.1 B"
    assert 0.55e9 <= counts["active_non_embedding"] <= 0.65e9     # "about 0.6 B active"
    ref = naive.spec_counts(cogcore.preset("4b").to_dict())
    assert {k: counts[k] for k in ref} == ref
    assert counts["embedding"] == 2 * 32000 * 2048


@pytest.mark.parametrize("overrides", [
    {},
    {"norm_type": "layernorm", "embedding_norm": True, "tie_word_embeddings": True},
    {"num_shared_experts": 1, "shared_expert_intermediate_size": 13},
])
def test_tensor_shapes_and_counts_match_spec_tables(overrides):
    raw = small_config(**overrides)
    cfg = Config.from_dict(raw)
    assert cogcore.tensor_shapes(cfg) == naive.spec_shapes(raw)
    counts = cogcore.parameter_counts(cfg)
    ref = naive.spec_counts(raw)
    assert {k: counts[k] for k in ref} == ref


def test_unknown_preset():
    with pytest.raises(cogcore.ConfigError) as e:
        cogcore.preset("huge")
    check_error(e, "huge", "tiny", "4b")


def test_error_message_shape():
    """Messages follow "<where>: key '<k>': expected <what>, found <value>"."""
    with pytest.raises(cogcore.ConfigError) as e:
        Config.from_dict(small_config(head_dim=5), source="cfg.json")
    assert re.fullmatch(r"cfg\.json: key 'head_dim': expected .+, found 5", str(e.value))
