"""Generation: greedy and sampled decoding over the cache, stop rules, streaming, statistics,
generation_config.json defaults, conversations, bad input, and the generate/chat commands."""

import io
import json
import os
import sys

import numpy as np
import pytest

import cogcore
from cogcore import cli
from cogcore.blocks import ReferenceOps
from cogcore.errors import InputError
from cogcore.generate import Conversation, GenerationOptions, complete, generate, resolve_options, stream
from cogcore.model import Pass
from cogcore.tokenizer import Tokenizer

try:
    from textmodel import make_text_model, train_tokenizer
except ImportError:  # tests/ imported as a package
    from tests.textmodel import make_text_model, train_tokenizer


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    tok = str(root / "tokenizer.model")
    n = train_tokenizer(tok)
    return str(root), tok, n


@pytest.fixture(scope="module")
def model_dir(files):
    return make_text_model(*files)


@pytest.fixture(scope="module")
def model(model_dir):
    return cogcore.load(model_dir, backend="numpy")


def reference_greedy(model, prompt_ids, n):
    """Greedy decoding the slow way: the whole sequence through a fresh forward for every token."""
    ids = list(prompt_ids)
    for _ in range(n):
        ids.append(int(np.argmax(model.forward(ids)[-1])))
    return ids[len(prompt_ids):]


# ---- decoding over the cache ---------------------------------------------------------------------
def test_greedy_matches_uncached_reference(model):
    r = complete(model, "the cat", max_new_tokens=12, stop=[], eos_token_id=[])
    prompt = [1] + model.tokenizer.encode("the cat")
    assert r.prompt_ids == prompt
    assert r.token_ids == reference_greedy(model, prompt, 12)
    assert r.finish_reason == "length" and r.cache.length == len(prompt) + 11
    assert r.text == generate(model, "the cat", max_new_tokens=12, stop=[], eos_token_id=[])
    dec = model.tokenizer.stream_decoder()
    assert r.text == "".join(dec.push(t) for t in r.token_ids) + dec.flush()


def test_model_generate_is_the_normative_api(model):
    text = model.generate("the cat", max_new_tokens=8, temperature=0.0, top_k=0, top_p=1.0, seed=0)
    assert isinstance(text, str)
    assert text == generate(model, "the cat", max_new_tokens=8)


def test_prefill_chunks_do_not_change_the_result(model):
    prompt = "what is 12+345= the cat sat on a mat " * 3
    a = complete(model, prompt, max_new_tokens=6, stop=[], prefill_chunk=256, stats=True)
    b = complete(model, prompt, max_new_tokens=6, stop=[], prefill_chunk=5, stats=True)
    assert a.token_ids == b.token_ids
    n = len(a.prompt_ids)
    assert len(b.stats.token_expert_counts[0]) == -(-n // 5) + len(b.token_ids) - 1   # one row per call


def test_sampling_is_seeded_and_streams_the_same_text(model):
    opts = dict(max_new_tokens=25, temperature=1.2, top_k=50, top_p=0.95, min_p=0.01,
                repetition_penalty=1.3, stop=[])
    s = stream(model, "hello world", seed=7, **opts)
    pieces = list(s)
    assert "".join(pieces) == s.result.text and all(pieces)
    assert complete(model, "hello world", seed=7, **opts).token_ids == s.result.token_ids
    others = {tuple(complete(model, "hello world", seed=k, **opts).token_ids) for k in range(4)}
    assert len(others) > 1


def test_stats_match_a_whole_forward(model):
    r = complete(model, "the cat sat on a mat 12+3=", max_new_tokens=30, stop=[], eos_token_id=[],
                 prefill_chunk=4, stats=True)
    st = r.stats
    fed = r.prompt_ids + r.token_ids[:-1]
    assert st.positions.tolist() == list(range(len(fed)))
    model.forward(fed)
    whole = model.last_pass
    k = model.config.num_experts_per_tok
    for layer, counts in st.expert_counts.items():
        assert counts.sum() == k * len(fed)
        np.testing.assert_array_equal(counts, whole.expert_counts[layer])
        np.testing.assert_array_equal(st.token_expert_counts[layer].sum(0), counts)
    assert sorted(st.selected_blocks) == [1, 3]           # the sparse layers of the tiny preset
    for layer, kept in st.selected_blocks.items():
        np.testing.assert_array_equal(kept, whole.selected_blocks[layer])
        assert kept.shape == (len(fed), model.config.num_key_value_heads, model.config.nsa_select_count)
    assert complete(model, "the cat", max_new_tokens=2).stats is None


def test_context_limit_ends_generation(files):
    small = make_text_model(*files, name="short", max_position_embeddings=24)
    m = cogcore.load(small, backend="numpy")
    prompt = "the cat sat"
    n = len(m.tokenizer.encode(prompt)) + 1
    r = complete(m, prompt, max_new_tokens=100, stop=[], eos_token_id=[])
    assert r.finish_reason == "context" and r.cache.length == 24 and len(r.token_ids) == 24 - n + 1
    with pytest.raises(InputError, match="max_position_embeddings=24"):
        generate(m, "the cat sat on a mat " * 5)


def test_both_backends_generate_the_same(model_dir, model):
    numba = cogcore.load(model_dir, backend="numba")
    opts = dict(max_new_tokens=10, stop=[], temperature=0.9, seed=3)
    assert complete(numba, "the dog", **opts).token_ids == complete(model, "the dog", **opts).token_ids


# ---- options, defaults and bad input -------------------------------------------------------------
def test_generation_config_defaults(files, model_dir, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    for f in os.listdir(model_dir):
        os.symlink(os.path.join(model_dir, f), d / f)
    (d / "generation_config.json").write_text(json.dumps(
        {"max_new_tokens": 3, "temperature": 0.7, "top_p": 0.9, "do_sample": False,
         "eos_token_id": [2, 5], "stop_strings": ["###"]}))
    m = cogcore.load(str(d), backend="numpy")
    opt = resolve_options(m)
    assert opt == GenerationOptions(max_new_tokens=3, temperature=0.0, top_p=0.9, eos_token_id=(2, 5),
                                    stop=("###",))
    assert resolve_options(m, max_new_tokens=9, stop="x").max_new_tokens == 9      # arguments win
    assert resolve_options(m, stop="x").stop == ("x",)
    assert len(complete(m, "the cat", eos_token_id=[]).token_ids) == 3
    assert resolve_options(cogcore.load(model_dir, backend="numpy")) == GenerationOptions()


@pytest.mark.parametrize("prompt,opts,match", [
    ("", {}, "prompt"),
    ([], {}, "prompt"),
    ("the cat", {"max_new_tokens": -1}, "max_new_tokens"),
    ("the cat", {"top_p": 0.0}, "top_p"),
    ("the cat", {"top_p": 1.01}, "top_p"),
    ("the cat", {"temperature": -0.5}, "temperature"),
    ("the cat", {"top_k": -2}, "top_k"),
    ("the cat", {"stop": [""]}, "stop"),
    ("the cat", {"prefill_chunk": 0}, "prefill_chunk"),
    ("the cat", {"bogus": 1}, "bogus"),
])
def test_bad_input(model, prompt, opts, match):
    with pytest.raises(InputError, match=match):
        generate(model, prompt, **opts)


def test_prompt_longer_than_context(model):
    with pytest.raises(InputError, match="exceed max_position_embeddings=4096"):
        generate(model, list(range(3, 40)) * 111)


def test_model_without_tokenizer(files, tmp_path):
    d = tmp_path / "notok"
    d.mkdir()
    src = os.path.join(files[0], "model")
    for f in ("config.json", "model.safetensors"):
        os.symlink(os.path.join(src, f), d / f)
    m = cogcore.load(str(d), backend="numpy")
    with pytest.raises(InputError, match="tokenizer.model"):
        generate(m, "the cat")
    with pytest.raises(InputError, match="tokenizer.model"):
        generate(m, [1, 5, 6])                    # ids in, but text out needs the tokenizer
    r = complete(m, [1, 5, 6], max_new_tokens=0)  # no text asked for: fine
    assert r.text == "" and r.token_ids == [] and r.cache.length == 3


# ---- stop rules and streaming, with a model that says what it is told ----------------------------
class ScriptedModel:
    """Duck-typed model whose next token after position p is script[p + 1 - start], then EOS."""

    def __init__(self, tokenizer, config, script, start):
        self.tokenizer, self.config, self.path = tokenizer, config, None
        self.script, self.start, self.last_pass = list(script), start, None
        self.ops = ReferenceOps()

    def new_cache(self):
        return type("C", (), {"length": 0})()

    def forward(self, ids, cache, last_only=False):
        ids = np.asarray(ids)
        logits = np.zeros((len(ids), self.config.vocab_size), np.float32)
        for row, p in enumerate(range(cache.length, cache.length + len(ids))):
            j = p + 1 - self.start
            logits[row, self.script[j] if 0 <= j < len(self.script) else self.config.eos_token_id] = 10.0
        cache.length += len(ids)
        self.last_pass = Pass(positions=np.arange(cache.length - len(ids), cache.length))
        return logits[-1:] if last_only else logits


@pytest.fixture(scope="module")
def tok(files):
    _, path, n = files
    return Tokenizer.from_file(path, cogcore.preset("tiny", vocab_size=n))


def scripted(tok, text_out, prompt="q", eos=False):
    """text_out: the text to say, or a list of texts and token ids."""
    parts = [text_out] if isinstance(text_out, str) else text_out
    script = [i for part in parts for i in (tok.encode(part) if isinstance(part, str) else [part])]
    script += [tok.eos_id] if eos else []
    cfg = cogcore.preset("tiny", vocab_size=tok.vocab_size)
    return ScriptedModel(tok, cfg, script, start=len(tok.encode(prompt)) + 1)


def test_stops_at_eos(tok):
    m = scripted(tok, "the cat", eos=True)
    r = complete(m, "q", max_new_tokens=50, stop=[])
    assert (r.text, r.finish_reason) == ("the cat", "eos")
    assert r.token_ids[-1] == tok.eos_id and r.pending_ids == [tok.eos_id]


def test_stops_at_newline_by_default(tok):
    newline = tok.sp.piece_to_id("<0x0A>")       # the normaliser folds "\n" in text to a space
    m = scripted(tok, ["12+3=15", newline, "the cat"])
    r = complete(m, "q")
    assert (r.text, r.finish_reason) == ("12+3=15", "stop")
    assert complete(m, "q", stop=[], max_new_tokens=50).text.startswith("12+3=15\nthe cat")


def test_stop_string_split_over_tokens_is_held_back(tok):
    m = scripted(tok, "a # b ## c ### d")
    ids = tok.encode("a # b ## c ### d")
    assert len(ids) > 8
    s = stream(m, "q", stop=["###"], max_new_tokens=50)
    pieces = list(s)
    assert "".join(pieces) == "a # b ## c " and s.result.finish_reason == "stop"
    # nothing that belongs to the stop string was ever printed
    printed = ""
    for p in pieces:
        printed += p
        assert "###" not in printed


def test_max_new_tokens_exact(tok):
    m = scripted(tok, "the cat sat on a mat the dog ran")
    r = complete(m, "q", max_new_tokens=4, stop=[])
    assert len(r.token_ids) == 4 and r.finish_reason == "length"
    assert r.text == tok.decode(r.token_ids)
    assert complete(m, "q", max_new_tokens=0).text == ""


@pytest.mark.parametrize("text", ["日本語 ✓ 🎉", "café 🎉🎉 naïve"])
def test_streaming_never_splits_a_character(tok, text):
    m = scripted(tok, text)
    pieces = list(stream(m, "q", stop=[], max_new_tokens=60))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) < len(tok.encode(text))                 # byte pieces were held back


def test_incomplete_character_at_the_end_is_replaced(tok):
    ids = tok.encode("🎉")[:2]
    cfg = cogcore.preset("tiny", vocab_size=tok.vocab_size)
    m = ScriptedModel(tok, cfg, ids, start=2)
    assert complete(m, "q", max_new_tokens=2, stop=[]).text == "\ufffd"


# ---- conversations -------------------------------------------------------------------------------
def test_conversation_keeps_the_cache(model):
    chat = Conversation(model, max_new_tokens=6, stop=[], temperature=0.8, seed=1)
    first = "".join(chat.send("hello"))
    r1 = chat.last.result
    second = chat.send("what is 1+2=")
    text2 = "".join(second)
    r2 = second.result
    enc = model.tokenizer.encode
    closing = [] if r1.token_ids[-1] == 2 else [2]
    assert r1.prompt_ids == [1] + enc("hello") and first == r1.text
    assert r2.prompt_ids == r1.token_ids[-1:] + closing + [1] + enc("what is 1+2=")
    history = r1.prompt_ids + r1.token_ids + closing + [1] + enc("what is 1+2=") + r2.token_ids[:-1]
    assert r2.cache is r1.cache and r2.cache.length == len(history)
    # the kept cache is exactly a fresh pass over the whole history
    fork = chat.cache.copy()
    np.testing.assert_allclose(model.forward([5], fork), model.forward(history + [5])[-1:], atol=2e-5)
    assert text2 == r2.text
    chat.reset()
    assert chat.cache.length == 0 and "".join(chat.send("hello")) == first


# ---- the command line ----------------------------------------------------------------------------
def test_cli_generate(model_dir, model, capsys):
    rc = cli.main(["generate", "--model", model_dir, "--backend", "numpy", "the cat", "-n", "7",
                   "-t", "0.8", "--seed", "4", "--top-k", "40", "--multiline", "--stats"])
    out, err = capsys.readouterr()
    assert rc == 0
    expected = generate(model, "the cat", max_new_tokens=7, temperature=0.8, seed=4, top_k=40, stop=[])
    assert out == expected + "\n"
    assert "tokens/s" in err and "prompt: 4 tokens" in err and "layer 0 tokens per expert" in err


@pytest.mark.parametrize("args,match", [
    (["--top-p", "1.5"], "top_p"), (["-t", "-1"], "temperature"), (["-n", "-1"], "max_new_tokens")])
def test_cli_bad_options(model_dir, capsys, args, match):
    assert cli.main(["generate", "--model", model_dir, "--backend", "numpy", "x", *args]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and match in err and "Traceback" not in err


def test_cli_errors_are_one_line(files, tmp_path, capsys):
    assert cli.main(["generate", "--model", os.path.join(files[0], "model"), "--backend", "numpy", ""]) == 1
    assert "prompt" in capsys.readouterr().err
    d = tmp_path / "notok"
    d.mkdir()
    for f in ("config.json", "model.safetensors"):
        os.symlink(os.path.join(files[0], "model", f), d / f)
    assert cli.main(["generate", "--model", str(d), "--backend", "numpy", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokenizer.model" in err
    assert cli.main(["chat", "--model", str(d), "--backend", "numpy"]) == 1


def test_cli_chat_reads_stdin_until_eof(model_dir, model, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n\nwhat is 1+2=\n"))
    rc = cli.main(["chat", "--model", model_dir, "--backend", "numpy", "-n", "5", "--speed"])
    out, err = capsys.readouterr()
    assert rc == 0
    chat = Conversation(model, max_new_tokens=5)
    expected = "".join(chat.send("hello")) + "\n" + "".join(chat.send("what is 1+2=")) + "\n"
    assert out == expected
    assert err.count("finish:") == 2


def test_cli_stop_options():
    from cogcore.commands.generate import sampling_options
    parse = lambda *a: sampling_options(cli.build_parser().parse_args(["generate", "p", *a]))
    assert parse()["stop"] is None                                    # generation_config or "\n"
    assert parse("--stop", "###", "--stop", "é\\t")["stop"] == ["\n", "###", "é\t"]
    assert parse("--multiline")["stop"] == []
    assert parse("--multiline", "--stop", "\\n\\n")["stop"] == ["\n\n"]


def test_cli_prompt_from_stdin(model_dir, model, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("the cat"))
    assert cli.main(["generate", "--model", model_dir, "--backend", "numpy", "-", "-n", "4"]) == 0
    assert capsys.readouterr().out == generate(model, "the cat", max_new_tokens=4) + "\n"
