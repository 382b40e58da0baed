"""The figures of `cogcore trace --plot` (skipped without matplotlib, the `viz` extra)."""

import os

import pytest

pytest.importorskip("matplotlib")

from conftest import build_model, small_config   # noqa: E402
from cogcore import trace, trace_plots           # noqa: E402


def test_every_layer_kind_gets_its_figures(tmp_path):
    model, _ = build_model(small_config(), seed=1)
    tr = trace.record(model, list(range(1, 20)))
    paths = trace_plots.plot_all(tr, tmp_path)
    # small_config: recurrent, sparse, full, sliding mixers; moe in layers 0 and 3
    assert sorted(os.path.basename(p) for p in paths) == sorted(
        ["expert_load.png", "router_entropy.png", "nsa_layer1.png", "nsa_gates.png", "rwkv.png",
         "attention_layer2.png", "attention_layer3.png"])
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)   # no temporaries
