"""tokenizer.json and chat templates against transformers' recorded encodings and renderings.

The reference (tests/fixtures/families/tokenizer_reference.json) was written by
transformers' AutoTokenizer and apply_chat_template in tests/fixtures/make_families.py.
"""

import json
import os

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

import cogcore
from cogcore.chat_template import TemplateChat, render
from cogcore.errors import InputError
from cogcore.tokenizer import HFTokenizer, load_tokenizer

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "families")
with open(os.path.join(HERE, "tokenizer_reference.json"), encoding="utf-8") as f:
    REF = json.load(f)


@pytest.fixture(scope="module")
def model():
    return cogcore.load(os.path.join(HERE, "llama"), backend="numpy")


def test_a_family_directory_gets_its_tokenizer_json(model):
    tok = model.tokenizer
    assert isinstance(tok, HFTokenizer) and tok.bos_id == 1 and tok.eos_id == 2
    assert tok.vocab_size <= model.config.vocab_size


@pytest.mark.parametrize("text", list(REF["encodings"]))
def test_encode_decode_and_stream_as_transformers(model, text):
    tok = model.tokenizer
    assert tok.encode(text, bos=True) == REF["encodings"][text]          # tokenizer.encode(text)
    ids = tok.encode(text)
    assert ids == REF["no_special"][text]                               # add_special_tokens=False
    assert tok.decode(ids) == REF["decodings"][text]
    dec = tok.stream_decoder()
    assert "".join(dec.push(i) for i in REF["encodings"][text]) + dec.flush() == REF["decodings"][text]


def test_chat_template_renders_as_transformers(model):
    tok = model.tokenizer
    assert render(tok.chat_template, REF["messages"], True, **tok.special_tokens()) == REF["chat"]
    assert render(tok.chat_template, REF["messages"], False, **tok.special_tokens()) == REF["chat_no_prompt"]


def test_template_errors_are_input_errors():
    with pytest.raises(InputError, match="chat_template"):
        render("{% for m in messages %}", [])
    with pytest.raises(InputError, match="no system"):
        render("{{ raise_exception('no system') }}", [])
    with pytest.raises(InputError, match="chat_template"):     # the sandbox refuses attribute tricks
        render("{{ messages.__class__.__mro__ }}", [])


def test_template_chat_feeds_exactly_the_rendered_conversation(model):
    tok = model.tokenizer
    chat = TemplateChat(model, temperature=0.0, max_new_tokens=6)
    for text in ("Hi there", "2+2?", "thanks"):
        reply = chat.send(text)
        "".join(reply)
    result = chat.last.result
    fed = chat.cached_ids + result.prompt_ids + result.token_ids[:-1]
    assert chat.cache.length == len(fed)
    messages = chat.messages + [{"role": "assistant", "content": tok.decode(result.token_ids)}]
    # the cache holds the template's rendering of the conversation, then the reply so far
    assert tok.tok.decode(fed, skip_special_tokens=False) == (
        render(tok.chat_template, messages[:-1], True, **tok.special_tokens())
        + tok.tok.decode(result.token_ids[:-1], skip_special_tokens=False))


def test_template_chat_through_a_prompt_cache_answers_as_without_and_restores_earlier_turns(model):
    from cogcore import PromptCache
    plain = TemplateChat(model, temperature=0.0, max_new_tokens=6)
    cached = TemplateChat(model, temperature=0.0, max_new_tokens=6, prompt_cache=PromptCache(model))
    for turn, text in enumerate(("Hi there", "2+2?", "thanks")):
        assert "".join(cached.send(text)) == "".join(plain.send(text))
        result, alone = cached.last.result, plain.last.result
        assert result.prompt_ids == plain.cached_ids + alone.prompt_ids      # the same tokens in the model
        if turn:                         # the earlier turns came back from the store, not recomputed
            assert result.cached_tokens >= len(plain.cached_ids) > 0
    assert cached.cache is None


def test_cli_chat_with_a_template_takes_a_prompt_cache(model, tmp_path, monkeypatch, capsys):
    import io
    import sys
    from cogcore import cli
    args = ["chat", "--model", model.path, "--backend", "numpy", "-n", "4", "-t", "0", "--speed"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi there\n2+2?\n"))
    assert cli.main(args) == 0
    plain = capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi there\n2+2?\n"))
    assert cli.main([*args, "--prompt-cache", str(tmp_path / "store")]) == 0
    out, err = capsys.readouterr()
    assert out == plain and err.count("restored from the prompt cache") == 1       # the second turn


def test_template_chat_history_reset_answers_each_turn_alone(model):
    tok = model.tokenizer
    chat = TemplateChat(model, history="reset", temperature=0.0, max_new_tokens=4)
    "".join(chat.send("Hi there"))
    reply = "".join(chat.send("2+2?"))
    alone = render(tok.chat_template, [{"role": "user", "content": "2+2?"}], True, **tok.special_tokens())
    assert chat.last.result.prompt_ids == tok.encode(alone)
    assert reply == "".join(TemplateChat(model, history="keep", temperature=0.0, max_new_tokens=4).send("2+2?"))


def test_template_chat_starts_afresh_when_the_conversation_outgrows_the_context(model):
    limit = model.config.max_position_embeddings
    chat = TemplateChat(model, temperature=0.0, max_new_tokens=limit // 2)
    "".join(chat.send("Hi there"))
    assert chat.notice is None
    "".join(chat.send("a longer question " * 4))
    assert chat.notice and str(limit) in chat.notice and len(chat.messages) == 1


def test_sentencepiece_stays_for_cogcore_models():
    from cogcore.tokenizer import Tokenizer
    root = os.path.dirname(os.path.dirname(__file__))
    assert type(load_tokenizer(os.path.join(root, "weights", "cogcore-tiny"))) is Tokenizer


def test_a_corrupt_tokenizer_json_is_named(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="tokenizer.json"):
        HFTokenizer.from_model_dir(tmp_path)


@pytest.mark.parametrize("settings, problem", [
    ('{"chat_template": 5}', "chat_template"),
    ('[1, 2]', "JSON object"),
    ('{"chat_template": ', "valid JSON"),
])
def test_a_bad_tokenizer_config_is_named(tmp_path, settings, problem):
    import shutil
    shutil.copy(os.path.join(HERE, "llama", "tokenizer.json"), tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(settings)
    with pytest.raises(InputError, match=problem):
        HFTokenizer.from_model_dir(tmp_path)


def test_a_list_of_named_templates_takes_the_default(tmp_path):
    import shutil
    shutil.copy(os.path.join(HERE, "llama", "tokenizer.json"), tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    assert HFTokenizer.from_model_dir(tmp_path).chat_template == "D"
