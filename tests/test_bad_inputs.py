"""Every input of issue 18 that once escaped as a traceback (or gave a wrong answer) now
gives a CogcoreError naming what is wrong, or the right answer. One test per case."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import cogcore
from cogcore import cli
from cogcore.generate import Conversation, generate
from cogcore.tensorfile import read_safetensors, temporary_name, write_safetensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "weights", "cogcore-tiny")


@pytest.fixture(scope="module")
def shipped():
    return cogcore.load(SHIPPED, backend="numpy")


@pytest.fixture
def copy(tmp_path):
    """A fresh copy of the shipped model directory, edited by `edit(d)` or config changes."""
    def make(edit=None, **config):
        d = tmp_path / "m"
        shutil.copytree(SHIPPED, d)
        if config:
            raw = json.loads((d / "config.json").read_text())
            (d / "config.json").write_text(json.dumps({**raw, **config}))
        if edit:
            edit(d)
        return str(d)
    return make


def raises(fragments, f, *args, **kwargs):
    with pytest.raises(cogcore.CogcoreError) as e:
        f(*args, **kwargs)
    for frag in fragments:
        assert frag in str(e.value), (frag, str(e.value))


def cli_error(capsys, argv, *fragments):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    for frag in fragments:
        assert frag in err, (frag, err)


def header_file(d, header: bytes, data: bytes = b"\0" * 4):
    os.remove(d / "model.safetensors")
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + data)


# ---- files where directories are expected, and the reverse ---------------------------------------
def test_config_json_is_a_directory(copy):
    def edit(d):
        os.remove(d / "config.json")
        os.mkdir(d / "config.json")
    raises(["config.json", "found a directory"], cogcore.load, copy(edit), backend="numpy")


def test_shard_index_is_a_directory(copy):
    def edit(d):
        os.remove(d / "model.safetensors")
        os.mkdir(d / "model.safetensors.index.json")
    raises(["model.safetensors.index.json", "found a directory"], cogcore.load, copy(edit), backend="numpy")


def test_inspect_a_file(capsys):
    cli_error(capsys, ["inspect", os.path.join(SHIPPED, "config.json")], "expected a model directory", "a file")


# ---- numbers too big for anything ----------------------------------------------------------------
def test_integer_over_4300_digits_in_config(copy):
    def edit(d):
        text = (d / "config.json").read_text().replace('"hidden_size": 128', '"hidden_size": ' + "9" * 5000)
        (d / "config.json").write_text(text)
    raises(["config.json", "parse error"], cogcore.load, copy(edit), backend="numpy")


def test_integer_over_4300_digits_in_header(copy):
    def edit(d):
        header_file(d, b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,' + b"9" * 5000 + b"]}}")
    raises(["model.safetensors", "not valid UTF-8 JSON"], cogcore.load, copy(edit), backend="numpy")


def test_integer_over_4300_digits_in_shard_index(copy):
    def edit(d):
        os.rename(d / "model.safetensors", d / "model-00001-of-00001.safetensors")
        (d / "model.safetensors.index.json").write_text('{"metadata": {"total_size": ' + "9" * 5000 + "}}")
    raises(["model.safetensors.index.json", "parse error"], cogcore.load, copy(edit), backend="numpy")


@pytest.mark.parametrize("dtype", [["F32"], {"F32": 1}])
def test_safetensors_dtype_not_a_string(copy, dtype):
    def edit(d):
        header_file(d, json.dumps({"a": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}).encode())
    raises(["tensor 'a'", "unsupported dtype"], cogcore.load, copy(edit), backend="numpy")


def test_inspect_empty_header(copy, capsys):
    cli_error(capsys, ["inspect", copy(lambda d: header_file(d, b"{}", b""))], "holds none")


def test_inspect_huge_vocab_size(copy, capsys):
    cli_error(capsys, ["inspect", copy(vocab_size=10 ** 20)], "vocab_size", "at most 2147483647")


@pytest.mark.parametrize("key", ["nsa_window", "nsa_select_count", "hidden_size"])
def test_sizes_beyond_32_bits(copy, key):
    raises([key, "at most 2147483647"], cogcore.load, copy(**{key: 2 ** 63}), backend="numpy")


def test_huge_norm_eps(copy):
    raises(["norm_eps", "(0, 1)"], cogcore.load, copy(norm_eps=1e308), backend="numpy")


# ---- text that is not UTF-8 -----------------------------------------------------------------------
def test_lone_surrogate_prompt(shipped):
    raises(["valid UTF-8", "character 2"], generate, shipped, "1+\udcff=")


def test_non_utf8_argv_and_stdin(capsys, monkeypatch):
    import io
    cli_error(capsys, ["generate", "--backend", "numpy", "1+\udcff="], "valid UTF-8")   # how Python reads argv
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"1+\xff=\n"), encoding="utf-8"))
    cli_error(capsys, ["generate", "--backend", "numpy", "-"], "valid UTF-8")


def test_non_utf8_chat_line_is_reported_and_the_chat_goes_on(capsys, monkeypatch):
    import io
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"1+\xff=\n12+345=\n"), encoding="utf-8"))
    assert cli.main(["chat", "--backend", "numpy"]) == 0
    out, err = capsys.readouterr()
    assert out == "357\n" and "valid UTF-8" in err


# ---- generation options ---------------------------------------------------------------------------
@pytest.mark.parametrize("eos", ["x", {}, 9999, -1, [2, "x"], True])
def test_bad_eos_token_id(shipped, eos):
    raises(["eos_token_id"], generate, shipped, "1+1=", eos_token_id=eos)


@pytest.mark.parametrize("key,value,name", [("eos_token_id", 9999, "eos_token_id"),
                                            ("stop_strings", 5, "stop"), ("top_k", -1, "top_k")])
def test_bad_generation_config_names_the_file(copy, key, value, name):
    def edit(d):
        (d / "generation_config.json").write_text(json.dumps({key: value}))
    model = cogcore.load(copy(edit), backend="numpy")
    raises(["generation_config.json", name], generate, model, "1+1=")


def test_stop_not_a_string(shipped):
    raises(["stop", "a string or a list of strings"], generate, shipped, "1+1=", stop=5)


def test_top_k_beyond_int64(shipped):
    assert generate(shipped, "12+345=", top_k=2 ** 63, temperature=0.5) == generate(shipped, "12+345=")


@pytest.mark.parametrize("path", [None, 123])
def test_load_not_a_path(path):
    raises(["path", "model directory"], cogcore.load, path)


@pytest.mark.parametrize("prompt", [123, 1.5, [1.5, 2.0], [[1, 2]], ["a"]])
def test_prompt_neither_text_nor_ids(shipped, prompt):
    raises(["prompt"], generate, shipped, prompt)


@pytest.mark.parametrize("penalty", [1e-45, 1e-38, 1e38])
def test_extreme_repetition_penalty_warns_nothing(shipped, penalty):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(shipped, "12+345=", repetition_penalty=penalty, temperature=1.0)


def test_stdin_prompt_without_its_newline(capsys, monkeypatch):
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("12+345=\n"))
    assert cli.main(["generate", "--backend", "numpy", "-"]) == 0
    assert capsys.readouterr().out == "357\n"


def test_context_limit_said_plainly(shipped, capsys):
    from cogcore.commands.generate import report_context_full
    from cogcore.generate import complete
    result = complete(shipped, "12+345=", max_new_tokens=3000, eos_token_id=[], stop=[])
    assert result.finish_reason == "context" and len(result.prompt_ids) + len(result.token_ids) == 513
    report_context_full(result, shipped)
    assert "the reply stopped after 505 tokens because the model's context of 512 positions is full" in \
        capsys.readouterr().err


# ---- chat -----------------------------------------------------------------------------------------
PROMPTS = ["12+345=", "sort 3 1 2 =", "1+1=", "recall ab=3 cd=7 ? cd =", "77+8=", "sort 9 4 7 ="]


def test_chat_answers_as_each_prompt_alone(shipped):
    """The shipped model was trained on one question per sequence: its generation_config.json
    says chat_history "reset", so a chat answers every line as `generate` would alone."""
    chat = Conversation(shipped)
    assert chat.history == "reset"
    assert ["".join(chat.send(p)) for p in PROMPTS] == [generate(shipped, p) for p in PROMPTS]
    assert [generate(shipped, p) for p in PROMPTS[:3]] == ["357", "1 2 3", "2"]


def test_chat_outgrowing_the_context_starts_afresh(shipped, capsys, monkeypatch):
    import io
    chat = Conversation(shipped, history="keep", max_new_tokens=500)   # room for one turn only
    replies = ["".join(chat.send("12+345=")) for _ in range(2)]
    assert "starts afresh" in chat.notice and "512 positions" in chat.notice
    assert replies == ["357", "357"] and chat.cache.length < 20   # the second turn on a fresh cache
    long_line = "1+" * 400 + "1="   # one line longer than the context: an error, then the chat goes on
    monkeypatch.setattr(sys, "stdin", io.StringIO(long_line + "\n12+345=\n"))
    assert cli.main(["chat", "--backend", "numpy"]) == 0
    out, err = capsys.readouterr()
    assert out == "357\n" and "max_position_embeddings=512" in err


# ---- non-finite weights ---------------------------------------------------------------------------
def _poison(d, name, value, index=0):
    tensors, _ = read_safetensors(d / "model.safetensors")
    tensors = {k: np.array(v) for k, v in tensors.items()}
    tensors[name].reshape(-1)[index] = value
    write_safetensors(d / "model.safetensors", tensors)


@pytest.mark.parametrize("name", ["model.layers.1.input_layernorm.weight", "model.embed_tokens.weight",
                                  "lm_head.weight", "model.layers.2.mlp.gate.weight"])
def test_non_finite_weight_named_at_load(copy, name):
    raises([name, "NaN/Inf"], cogcore.load, copy(lambda d: _poison(d, name, np.nan)), backend="numpy")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name,where", [("model.layers.1.self_attn.q_proj.weight", "layer 1's sparse_attention"),
                                        ("model.layers.0.rwkv.key.weight", "layer 0's recurrent"),
                                        ("lm_head.weight", "lm_head")])
def test_non_finite_big_weight_named_in_flight(copy, monkeypatch, backend, name, where):
    """Tensors too big to scan at load are caught by what their layer puts out."""
    import cogcore.model
    monkeypatch.setattr(cogcore.model, "SMALL_TENSOR", 0)
    d = copy(lambda d: _poison(d, name, np.inf, index=slice(None)))
    model = cogcore.load(d, backend=backend)
    raises([where, "non-finite"], generate, model, "recall ab=3 cd=7 ? cd =")


# ---- writing --------------------------------------------------------------------------------------
def test_init_into_a_file_path(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    cli_error(capsys, ["init", "--preset", "tiny", str(tmp_path / "f")], "cannot create the model directory")
    cli_error(capsys, ["init", "--preset", "tiny", str(tmp_path / "f" / "sub")], "Not a directory")


def test_init_unwritable_directory(capsys):
    cli_error(capsys, ["init", "--preset", "tiny", "/proc/cogcore-test"], "cannot create the model directory")


def test_init_negative_seed(tmp_path, capsys):
    cli_error(capsys, ["init", "--preset", "tiny", "--seed", "-1", str(tmp_path / "m")], "seed")
    assert not (tmp_path / "m" / "model.safetensors").exists()


@pytest.mark.parametrize("argv,fragment", [(["--threads", "0"], "--threads"), (["--threads", "99999"], "--threads"),
                                           (["--json", "/proc/x/y.json"], "cannot write there"),
                                           (["--json", "/tmp"], "found a directory"),
                                           (["--model", "/nonexistent/model"], "expected a model directory")])
def test_bench_arguments_checked_before_running(capsys, argv, fragment):
    start = time.perf_counter()
    cli_error(capsys, ["bench", "--quick", *argv], fragment)
    assert time.perf_counter() - start < 5     # refused before any measuring


def test_stale_temporaries_are_removed_on_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"model.safetensors.{dead.pid}.cogcore-tmp"
    mine = tmp_path / f"other.{os.getpid()}.cogcore-tmp"        # a live writer's: kept
    stale.write_bytes(b"half")
    mine.write_bytes(b"busy")
    assert temporary_name(str(tmp_path / "config.json")).endswith(f".{os.getpid()}.cogcore-tmp")
    assert not stale.exists() and mine.exists()


SWALLOWED_SIGTERM = """
import argparse, os, signal, sys, time, types
from cogcore import cli

class Swallows:
    def __del__(self):   # SIGTERM lands in here: Python prints the exception and carries on
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(100000))

def run(args):
    Swallows()
    deadline = time.time() + 20
    while time.time() < deadline:
        pass
    print("ran to the end")

cli.build_parser = lambda: types.SimpleNamespace(parse_args=lambda argv: argparse.Namespace(run=run, command="test"))
sys.exit(cli.main([]))
"""


def test_sigterm_swallowed_by_a_finalizer_is_raised_again():
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", SWALLOWED_SIGTERM], capture_output=True, cwd=ROOT, timeout=60)
    assert b"Exception ignored" in done.stderr                       # the first one was swallowed
    assert done.returncode == 128 + signal.SIGTERM and b"terminated" in done.stderr, done.stderr
    assert b"ran to the end" not in done.stdout and time.perf_counter() - start < 15


def test_sigterm_during_a_long_write_leaves_nothing(tmp_path):
    out = tmp_path / "big"
    proc = subprocess.Popen([sys.executable, "-m", "cogcore", "init", "--preset", "4b", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.time() + 300   # a loaded machine starts slowly
    while time.time() < deadline and not (out.exists() and any(out.iterdir())):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    said = f"exit {proc.returncode}, left {sorted(p.name for p in out.iterdir())}, stderr: {err.decode()[-2000:]}"
    assert proc.returncode == 128 + signal.SIGTERM and b"terminated" in err, said
    assert list(out.iterdir()) == [], said
