"""The PyTorch training mirror (cogcore/train/torch_model.py) against the NumPy runtime.

The mirror is an independent implementation of SPEC Section 4 used to train the
shipped model; on the same weights it must give the runtime's logits. It runs in
float64 here, so a difference is the runtime's float32 round-off (or a bug).
Skipped when PyTorch (the optional `train` extra) is not installed.
"""

import os
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cogcore                                                  # noqa: E402
from cogcore.config import Config                              # noqa: E402
from cogcore.train.torch_model import CogcoreTorch, WKV7, tensor_shapes, wkv7_reference  # noqa: E402

from conftest import build_model, small_config                 # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "weights", "cogcore-tiny")


def mirror_for(cfg: dict, tensors: dict, dtype=None) -> CogcoreTorch:
    m = CogcoreTorch(cfg)
    m.load_spec({n: torch.from_numpy(np.asarray(t, dtype=np.float32)) for n, t in tensors.items()})
    return m.to(dtype or torch.float64).eval()


def mirror_logits(m: CogcoreTorch, ids) -> np.ndarray:
    with torch.no_grad():
        return m(torch.as_tensor(np.asarray(ids), dtype=torch.long)).numpy()


def assert_close(runtime, mirror, rel=2e-5):
    scale = float(np.abs(mirror).max())
    err = float(np.abs(runtime.astype(np.float64) - mirror).max())
    assert err <= rel * max(scale, 1.0), f"max |runtime - mirror| = {err:.3g} (logit scale {scale:.3g})"


def compare(cfg: dict, T: int, seed: int = 0):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, tensors = build_model(cfg, seed=seed)
    canonical = Config.from_dict(cfg).to_dict()
    assert set(tensor_shapes(canonical)) == set(tensors)        # same tensor list as the runtime
    ids = np.random.default_rng(seed).integers(0, cfg["vocab_size"], T)
    assert_close(model.forward(ids), mirror_logits(mirror_for(canonical, tensors), ids))


def test_every_layer_kind():
    # recurrent, sparse (drops blocks: l' 4 * n 4 = 16 < T), full, sliding; moe, dense, channel_mix
    compare(small_config(), T=45)


def test_two_recurrent_layers_layernorm_shared_expert():
    cfg = small_config(
        layer_types=["recurrent", "sparse_attention", "recurrent", "sparse_attention"],
        mlp_types=["moe", "moe", "channel_mix", "moe"],
        norm_type="layernorm", embedding_norm=True, tie_word_embeddings=True,
        norm_topk_prob=False, num_shared_experts=1, shared_expert_intermediate_size=8,
        nsa_compress_block=6, nsa_compress_stride=3, nsa_select_block=6, nsa_select_count=3, nsa_window=9)
    compare(cfg, T=50, seed=3)


def test_tiny_preset(tiny_dir):
    model = cogcore.load(tiny_dir, backend="numpy")
    from safetensors.numpy import load_file
    tensors = load_file(os.path.join(tiny_dir, "model.safetensors"))
    cfg = model.config.to_dict()
    ids = np.random.default_rng(5).integers(0, cfg["vocab_size"], 100)   # 100 > l' 16 * n 4
    assert_close(model.forward(ids), mirror_logits(mirror_for(cfg, tensors), ids))


@pytest.mark.skipif(not os.path.exists(os.path.join(SHIPPED, "model.safetensors")),
                    reason="no shipped model")
def test_shipped_model_on_long_recall_prompt():
    # float32 on both sides: in a trained model the compressed attention is sharp, and
    # with l = 2s a compressed block that straddles two selection blocks gives them the
    # same score (SPEC 4.3 step 3) up to round-off; which of the two is kept then depends
    # on the last bits, so a float64 mirror can pick the other block (seen: 0.13 on one
    # logit at one position of this prompt).
    import sentencepiece as spm
    from safetensors.numpy import load_file
    from cogcore.tasks import make_recall
    model = cogcore.load(SHIPPED, backend="numpy")
    sp = spm.SentencePieceProcessor(model_file=os.path.join(SHIPPED, "tokenizer.model"))
    prompt, _ = make_recall(random.Random(0), n_pairs=40)   # ~90 tokens: more than 4 blocks of 16
    ids = [model.config.bos_token_id] + sp.encode(prompt)
    cfg = model.config.to_dict()
    assert len(ids) > cfg["nsa_select_block"] * cfg["nsa_select_count"]   # selection drops blocks
    m = mirror_for(cfg, load_file(os.path.join(SHIPPED, "model.safetensors")), torch.float32)
    assert_close(model.forward(np.array(ids)), mirror_logits(m, ids), rel=1e-4)


# ----------------------------------------------------------------------------- mirror self-checks

def test_nsa_equals_full_attention_when_everything_is_selected():
    """SPEC 4.3: with l' * n >= T and w >= T the selected and window branches are full causal
    attention; with zero compressor output (o_cmp = 0) and zero gate logits (G = 1/2) the
    whole mixer is full attention."""
    base = dict(num_hidden_layers=1, mlp_types=["dense"], nsa_select_block=4, nsa_select_count=8,
                nsa_window=32)
    T = 30
    _, tensors = build_model(small_config(layer_types=["sparse_attention"], **base), seed=2)
    tensors = {n: np.array(t, dtype=np.float32) for n, t in tensors.items()}
    for n in tensors:
        if n.endswith("fc2.weight") or (n.endswith("gate_proj.weight") and "self_attn" in n):
            tensors[n][:] = 0
    full = {n: t for n, t in tensors.items() if "compress" not in n and "self_attn.gate_proj" not in n}
    cs = Config.from_dict(small_config(layer_types=["sparse_attention"], **base)).to_dict()
    cf = Config.from_dict(small_config(layer_types=["full_attention"], **base)).to_dict()
    ids = np.random.default_rng(0).integers(0, 37, T)
    a = mirror_logits(mirror_for(cs, tensors), ids)
    b = mirror_logits(mirror_for(cf, full), ids)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_wkv7_backward_matches_autograd():
    g = torch.Generator().manual_seed(0)
    B, T, H, N = 2, 6, 2, 3
    ins = [torch.randn(B, T, H, N, dtype=torch.float64, generator=g) for _ in range(6)]
    ins[1] = torch.rand(B, T, H, N, dtype=torch.float64, generator=g) * 0.45 + 0.545
    ins = [t.requires_grad_() for t in ins]
    np.testing.assert_allclose(WKV7.apply(*ins).detach().numpy(), wkv7_reference(*ins).detach().numpy(),
                               rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(WKV7.apply, ins)


def test_padding_after_a_sequence_does_not_change_its_logits():
    cfg = Config.from_dict(small_config()).to_dict()
    _, tensors = build_model(small_config(), seed=1)
    m = mirror_for(cfg, tensors)
    ids = np.random.default_rng(1).integers(0, 37, 30)
    full = mirror_logits(m, ids)
    batch = np.stack([ids, np.concatenate([ids[:20], np.full(10, 2)])])
    both = mirror_logits(m, batch)
    np.testing.assert_allclose(both[0], full, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(both[1, :20], full[:20], rtol=1e-10, atol=1e-10)
