"""`cogcore init` and `cogcore inspect` (SPEC Section 7), checked against SPEC Sections 3 and 8."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import cogcore
from cogcore.cli import main
from cogcore.tensorfile import read_model_tensors

import naive


@pytest.fixture(scope="module")
def cli_tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny"
    assert main(["init", "--preset", "tiny", str(out), "--seed", "3"]) == 0
    return out


def test_init_writes_a_loadable_tiny_model(cli_tiny, capsys):
    assert sorted(os.listdir(cli_tiny)) == ["config.json", "model.safetensors"]
    cfg = json.loads((cli_tiny / "config.json").read_text())
    assert cogcore.Config.from_dict(cfg) == cogcore.preset("tiny")
    tensors, _ = read_model_tensors(cli_tiny)
    want = naive.spec_shapes(cfg)
    assert {n: a.shape for n, a in tensors.items()} == want
    assert all(a.dtype == np.float32 for a in tensors.values())        # tiny defaults to float32
    model = cogcore.load(cli_tiny, backend="numpy")
    logits = model.forward([1, 2, 3])
    assert logits.shape == (3, 256) and np.isfinite(logits).all()
    ref, _ = naive.forward(tensors, cfg, [1, 2, 3])
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_init_seed_and_dtype(tmp_path, capsys):
    assert main(["init", "--preset", "tiny", str(tmp_path / "a"), "--seed", "1", "--dtype", "bfloat16"]) == 0
    assert main(["init", "--preset", "tiny", str(tmp_path / "b"), "--seed", "2", "--dtype", "bfloat16"]) == 0
    a, _ = read_model_tensors(tmp_path / "a")
    b, _ = read_model_tensors(tmp_path / "b")
    assert a["lm_head.weight"].dtype == np.uint16
    assert not np.array_equal(a["lm_head.weight"], b["lm_head.weight"])
    out = capsys.readouterr().out
    assert "bfloat16" in out and "seed 2" in out


def _number(text, label):
    m = re.search(rf"^\s*{re.escape(label)}\s+([\d,]+)", text, re.M)
    assert m, f"no line '{label}' in:\n{text}"
    return int(m.group(1).replace(",", ""))


def test_inspect_table(cli_tiny, capsys):
    capsys.readouterr()
    assert main(["inspect", str(cli_tiny)]) == 0
    out = capsys.readouterr().out
    ref = naive.spec_counts(cogcore.preset("tiny").to_dict())
    assert _number(out, "total") == ref["total"]
    assert _number(out, "active per token") == ref["active"]
    assert _number(out, "active per token, no embeddings") == ref["active_non_embedding"]
    assert _number(out, "weights on disk") == 4 * ref["total"]
    shapes = naive.spec_shapes(cogcore.preset("tiny").to_dict())
    assert f"## tensors ({len(shapes)})" in out
    for name, shape in shapes.items():
        assert re.search(rf"^\s*{re.escape(name)}\s+F32\s+{re.escape(str(list(shape)))}", out, re.M), name


def test_inspect_json(cli_tiny, capsys):
    capsys.readouterr()
    assert main(["inspect", "--json", str(cli_tiny)]) == 0
    data = json.loads(capsys.readouterr().out)
    cfg = cogcore.preset("tiny").to_dict()
    ref = naive.spec_counts(cfg)
    assert {k: data["parameters"][k] for k in ref} == ref
    assert data["config"] == cfg
    assert {t["name"]: tuple(t["shape"]) for t in data["tensors"]} == naive.spec_shapes(cfg)
    assert all(t["numel"] == int(np.prod(t["shape"])) and t["dtype"] == "F32" and t["file"] == "model.safetensors"
               for t in data["tensors"])
    assert data["bytes"] == 4 * ref["total"]


def test_inspect_errors_are_one_line_exit_1(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cogcore inspect: error: ") and "config.json" in err and "not found" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_bad_preset_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["init", "--preset", "huge", str(tmp_path / "x")])
    assert e.value.code == 2
    assert "huge" in capsys.readouterr().err


def test_python_dash_m(cli_tiny):
    res = subprocess.run([sys.executable, "-m", "cogcore", "inspect", "--json", str(cli_tiny)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["parameters"]["total"] == naive.spec_counts(cogcore.preset("tiny").to_dict())["total"]
