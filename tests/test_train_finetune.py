"""The fine-tuning options of the training recipe (cogcore/train/train.py): --init-from,
the router margin term, router jitter and --distill. Skipped without PyTorch."""

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors.numpy import load_file                     # noqa: E402

from cogcore.train.torch_model import CogcoreTorch           # noqa: E402
from cogcore.train.train import CONFIG, export, main, router_margin_loss   # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "weights", "cogcore-tiny")

# the shipped vocabulary (the tokenizer is copied), a much smaller body
SMALL = dict(CONFIG, vocab_size=730, hidden_size=32, num_hidden_layers=2, layer_types=["recurrent", "sparse_attention"],
             mlp_types=["moe", "moe"], num_attention_heads=2, num_key_value_heads=1, head_dim=16,
             rwkv_head_size=8, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=16)


def test_router_margin_loss_is_the_mean_hinge_on_the_kth_gap():
    rng = np.random.default_rng(0)
    layers = [rng.normal(size=(12, 5)) for _ in range(3)]
    valid = rng.random(12) < 0.7
    k, margin = 2, 0.8
    expected = []
    for logits in layers:
        hinges = []
        for row, ok in zip(logits, valid):
            if ok:
                s = sorted(row, reverse=True)
                hinges.append(max(0.0, margin - (s[k - 1] - s[k])))
        expected.append(sum(hinges) / len(hinges))
    got = router_margin_loss([torch.from_numpy(a) for a in layers], torch.from_numpy(valid), k, margin)
    assert abs(float(got) - float(np.mean(expected))) < 1e-12


def _small_model_dir(path):
    os.makedirs(path)
    export(CogcoreTorch(SMALL, seed=3), SMALL, str(path))
    shutil.copyfile(os.path.join(SHIPPED, "tokenizer.model"), os.path.join(path, "tokenizer.model"))
    return str(path)


def _finetune(init, out, tmp_path, *extra):
    main(["--init-from", init, "--out", str(out), "--ckpt", str(tmp_path / "ckpt"), "--curriculum", "",
          "--batch", "4", "--warmup", "1", "--eval-every", "0", "--final-eval", "0", "--log-every", "1", *extra])
    return load_file(os.path.join(out, "model.safetensors"))


@pytest.mark.skipif(not os.path.isdir(SHIPPED), reason="the shipped tokenizer is not in weights/")
def test_init_from_starts_at_the_given_weights(tmp_path):
    init = _small_model_dir(tmp_path / "init")
    out = tmp_path / "out"
    # learning rate 0: every term runs, nothing moves (AdamW's decay is lr-scaled too)
    tuned = _finetune(init, out, tmp_path, "--steps", "2", "--lr", "0", "--router-margin", "1",
                      "--margin-weight", "1", "--router-jitter", "0.1", "--distill", "1")
    start = load_file(os.path.join(init, "model.safetensors"))
    assert tuned.keys() == start.keys()
    for name in start:
        assert np.array_equal(tuned[name], start[name]), name
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f) == SMALL
    with open(os.path.join(out, "tokenizer.model"), "rb") as a, open(os.path.join(init, "tokenizer.model"), "rb") as b:
        assert a.read() == b.read()


@pytest.mark.skipif(not os.path.isdir(SHIPPED), reason="the shipped tokenizer is not in weights/")
def test_the_margin_term_widens_the_routers_kth_gap(tmp_path):
    init = _small_model_dir(tmp_path / "init")
    tuned = _finetune(init, tmp_path / "out", tmp_path, "--steps", "30", "--lr", "1e-2", "--aux", "0",
                      "--router-margin", "2", "--margin-weight", "10")
    ids = torch.from_numpy(np.random.default_rng(1).integers(3, 730, (4, 24)))

    def kth_gaps(tensors):
        m = CogcoreTorch(SMALL)
        m.load_spec({n: torch.from_numpy(t) for n, t in tensors.items()})
        m.train()                                   # records the router logits
        with torch.no_grad():
            m(ids)
        top = [torch.topk(lg, 3, -1).values for lg in m.router_logits]
        return torch.cat([t[:, 1] - t[:, 2] for t in top])

    before, after = kth_gaps(load_file(os.path.join(init, "model.safetensors"))), kth_gaps(tuned)
    assert after.median() > 2 * before.median()
    assert (after < 0.05).float().mean() < (before < 0.05).float().mean()
