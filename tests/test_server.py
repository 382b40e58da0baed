"""`cogcore serve`: the OpenAI-compatible server on a loopback port, driven by the official `openai`
client (streaming and not) and by raw HTTP for malformed requests."""

import concurrent.futures
import contextlib
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

import cogcore                                                    # noqa: E402
from cogcore.engine import Job                                    # noqa: E402
from cogcore.generate import Conversation, complete               # noqa: E402
from cogcore.server import DISCONNECT_POLL_SECONDS, create_app, serving as serve_app   # noqa: E402

try:
    from textmodel import make_text_model, train_tokenizer
except ImportError:  # tests/ imported as a package
    from tests.textmodel import make_text_model, train_tokenizer

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "cogcore-tiny")


@contextlib.contextmanager
def serving(model, **app_options):
    """An app for `model` served on a free 127.0.0.1 port; yields (base url, app)."""
    app = create_app(model, **app_options)
    with serve_app(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def shipped():
    if not os.path.isdir(SHIPPED):
        pytest.skip("the shipped model is not in weights/")
    return cogcore.load(SHIPPED)


@pytest.fixture(scope="module")
def server(shipped):
    with serving(shipped) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A random model with a small tokenizer: it rarely draws EOS, so its replies run long."""
    root = tmp_path_factory.mktemp("serve")
    tok = str(root / "tokenizer.model")
    return cogcore.load(make_text_model(str(root), tok, train_tokenizer(tok)))


def log_softmax(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


# ---- the API, non-streaming and streaming ---------------------------------------------
def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["cogcore-tiny"]
    health = httpx.get(server[0] + "/health").json()
    assert health["status"] == "ok" and health["model"] == "cogcore-tiny"


def test_completion_equals_the_library(client, shipped):
    r = client.completions.create(model="cogcore-tiny", prompt="12+345=", max_tokens=8)
    alone = complete(shipped, "12+345=", max_new_tokens=8)
    assert r.choices[0].text == alone.text == "357"
    assert r.choices[0].finish_reason == "stop"              # EOS and stop strings both read "stop"
    assert r.usage.prompt_tokens == len(shipped.tokenizer.encode("12+345=", bos=True))
    assert r.usage.completion_tokens == len(alone.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_tokens_gives_finish_reason_length(client):
    r = client.completions.create(model="cogcore-tiny", prompt="12+345=", max_tokens=2)
    assert r.choices[0].text == "35" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 2


def test_streamed_completion_and_chat_match_the_whole_reply(client):
    whole = client.completions.create(model="cogcore-tiny", prompt="48+7=", max_tokens=8).choices[0].text
    chunks = list(client.completions.create(model="cogcore-tiny", prompt="48+7=", max_tokens=8, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole == "55"
    assert chunks[-1].choices[0].finish_reason == "stop"
    messages = [{"role": "user", "content": "48+7="}]
    chat = client.chat.completions.create(model="cogcore-tiny", messages=messages, max_tokens=8)
    pieces = list(client.chat.completions.create(model="cogcore-tiny", messages=messages, max_tokens=8,
                                                 stream=True, stream_options={"include_usage": True}))
    assert pieces[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in pieces if p.choices) == chat.choices[0].message.content
    assert pieces[-1].usage.total_tokens == chat.usage.total_tokens


def test_sse_wire_format_ends_with_done(server):
    body = {"prompt": "12+345=", "max_tokens": 8, "stream": True}
    with httpx.stream("POST", server[0] + "/v1/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1]) == "357"


def test_chat_uses_the_conversation_turn_format(client, shipped):
    """Without a template: a user message is fed as `cogcore chat` feeds a first turn, and a system
    message as a closed document [bos] text [eos] before it."""
    r = client.chat.completions.create(model="cogcore-tiny", messages=[{"role": "user", "content": "9+16="}],
                                       max_tokens=8)
    assert r.choices[0].message.content == "".join(Conversation(shipped, max_new_tokens=8).send("9+16="))
    tok, bos, eos = shipped.tokenizer, 1, 2
    system = "Answer the sum."
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "9+16="}]
    r = client.chat.completions.create(model="cogcore-tiny", messages=messages, max_tokens=8)
    ids = [bos] + tok.encode(system) + [eos, bos] + tok.encode("9+16=")
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.content == complete(shipped, ids, max_new_tokens=8).text


def test_chat_template_of_the_model_is_used(text_model, tmp_path):
    model_dir = str(tmp_path / "templated")
    shutil.copytree(text_model.path, model_dir)
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }} {% endfor %}assistant:"
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": template}, f)
    model = cogcore.load(model_dir)
    with serving(model) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
        r = c.chat.completions.create(model="templated", messages=messages, max_tokens=3)
    ids = model.tokenizer.encode("system: be brief user: hello assistant:")
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.content == complete(model, ids, max_new_tokens=3).text


def test_logprobs_are_the_models_log_softmax(client, shipped):
    prompt = "12+345="
    ids = shipped.tokenizer.encode(prompt, bos=True)
    expected = log_softmax(shipped.forward(ids)[-1])
    first = int(np.argmax(expected))
    r = client.completions.create(model="cogcore-tiny", prompt=prompt, max_tokens=3, logprobs=3)
    lp = r.choices[0].logprobs
    assert lp.tokens[0] == shipped.tokenizer.piece_bytes(first).decode()
    assert lp.token_logprobs[0] == pytest.approx(expected[first], abs=1e-5)
    top = sorted(range(len(expected)), key=lambda i: -expected[i])[:3]
    assert list(lp.top_logprobs[0].values()) == pytest.approx([expected[i] for i in top], abs=1e-5)
    assert lp.text_offset[:3] == [0, 1, 2]
    chat = client.chat.completions.create(model="cogcore-tiny", messages=[{"role": "user", "content": prompt}],
                                          max_tokens=3, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert content[0].logprob == pytest.approx(expected[first], abs=1e-5)
    assert [t.logprob for t in content[0].top_logprobs] == pytest.approx([expected[i] for i in top[:2]], abs=1e-5)
    assert "".join(t.token for t in content) == chat.choices[0].message.content


def test_sampling_is_reproducible_with_a_seed(client):
    def ask():
        return client.completions.create(model="cogcore-tiny", prompt="The", max_tokens=12, temperature=1.5,
                                         top_p=0.95, seed=7, stop=["\n"],
                                         extra_body={"top_k": 50, "min_p": 0.01}).choices[0].text
    assert ask() == ask()


# ---- bad requests --------------------------------------------------------------------
@pytest.mark.parametrize("body, status, param", [
    (b"{", 400, None),
    (b"[1, 2]", 400, None),
    (b"\xff\xfe", 400, None),
    (json.dumps({"prompt": "1+1=", "max_tokens": -1}), 400, "max_tokens"),
    (json.dumps({"prompt": "1+1=", "max_tokens": "8"}), 400, "max_tokens"),
    (json.dumps({"prompt": "1+1=", "temperature": "hot"}), 400, "temperature"),
    (json.dumps({"prompt": "1+1=", "stream": "yes"}), 400, "stream"),
    (json.dumps({"prompt": "1+1=", "stop": [1]}), 400, "stop"),
    (json.dumps({"prompt": "1+1=", "top_p": 0}), 400, "top_p"),
    (json.dumps({"prompt": "1+1=", "n": 2}), 400, "n"),
    (json.dumps({"prompt": "1+1=", "logprobs": 99}), 400, "logprobs"),
    (json.dumps({"prompt": 5}), 400, "prompt"),
    (json.dumps({"prompt": [1, 100000]}), 400, None),
    (json.dumps({"max_tokens": 3}), 400, "prompt"),
    (json.dumps({"prompt": "1+1=" * 200}), 400, "prompt"),
    (json.dumps({"prompt": "1+1=", "model": "gpt-4"}), 404, "model"),
])
def test_bad_completion_requests_get_openai_errors(server, body, status, param):
    r = httpx.post(server[0] + "/v1/completions", content=body, timeout=60)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and "Traceback" not in r.text
    ok = httpx.post(server[0] + "/v1/completions", json={"prompt": "12+345="}, timeout=60)
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "357"   # still serving


@pytest.mark.parametrize("messages", [None, [], "hi", [{"role": "robot", "content": "x"}],
                                      [{"role": "user", "content": 3}],
                                      [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]])
def test_bad_chat_messages(server, messages):
    body = {"max_tokens": 2} | ({} if messages is None else {"messages": messages})
    r = httpx.post(server[0] + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_errors_through_the_client(client):
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="cogcore-tiny", prompt="7+7=" * 200, max_tokens=4)
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")
    assert client.models.retrieve("cogcore-tiny").id == "cogcore-tiny"


def test_unknown_route_and_method_are_json(server):
    r = httpx.get(server[0] + "/v2/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server[0] + "/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


FIELDS = ("model", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
          "stop", "stream", "logprobs", "top_logprobs", "n", "repetition_penalty", "stream_options")
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6), chat=st.booleans())
def test_fuzzed_requests_never_get_a_500(server, body, chat):
    body = body | {"max_tokens": 2} if "max_tokens" not in body else body
    route = "/v1/chat/completions" if chat else "/v1/completions"
    r = httpx.post(server[0] + route, json=body, timeout=60)
    assert r.status_code in (200, 400, 404), r.text
    if r.status_code != 200:
        assert r.json()["error"]["message"]


# ---- concurrency, queue, disconnects, timeouts -----------------------------------------
def test_concurrent_clients_get_their_served_alone_answers(text_model):
    prompts = ["the cat", "hello world", "what is", "apple banana", "red blue", "12+5=", "dog ran"]
    with serving(text_model) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)

        def ask(i):
            prompt = prompts[i % len(prompts)]
            options = dict(model="model", max_tokens=10 + 3 * (i % 4), stop=[])
            if i % 2:
                chunks = c.completions.create(prompt=prompt, stream=True, **options)
                return "".join(ch.choices[0].text for ch in chunks)
            return c.chat.completions.create(messages=[{"role": "user", "content": prompt}],
                                             **options).choices[0].message.content

        alone = [ask(i) for i in range(14)]
        with concurrent.futures.ThreadPoolExecutor(7) as pool:
            together = list(pool.map(ask, range(14)))
    assert together == alone
    assert len(set(alone)) > 3                  # the answers differ, so a mix-up would show


def blocked_worker(app):
    """Park the engine's worker thread inside a job's emit; returns the Event that releases it."""
    release, parked = threading.Event(), threading.Event()

    def emit(event):
        parked.set()
        release.wait(60)

    app.state.server.engine.submit(Job([1, 5, 6], {"max_new_tokens": 1}, emit=emit))
    assert parked.wait(60)
    return release


def test_full_queue_answers_503_and_recovers(text_model):
    with serving(text_model, max_active=1, max_queue=1) as (url, app):
        release = blocked_worker(app)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            queued = pool.submit(httpx.post, url + "/v1/completions", json={"prompt": "the", "max_tokens": 2},
                                 timeout=60)
            for _ in range(200):                # bounded wait until that request sits in the queue
                if httpx.get(url + "/health").json()["waiting"] == 1:
                    break
                time.sleep(0.05)
            busy = httpx.post(url + "/v1/completions", json={"prompt": "the", "max_tokens": 2}, timeout=60)
            assert busy.status_code == 503 and "queue" in busy.json()["error"]["message"]
            release.set()
            assert queued.result().status_code == 200
        assert httpx.post(url + "/v1/completions", json={"prompt": "the", "max_tokens": 2}).status_code == 200


def test_request_timeout_answers_504(text_model):
    with serving(text_model, timeout=1e-6) as (url, _):
        r = httpx.post(url + "/v1/completions", json={"prompt": "the", "max_tokens": 2}, timeout=60)
        assert r.status_code == 504 and "timeout" in r.json()["error"]["message"]


def test_client_disconnect_mid_stream_stops_generation(text_model):
    with serving(text_model) as (url, app):
        body = {"prompt": "the cat", "max_tokens": 400, "stop": [], "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
        for _ in range(400):                    # bounded: the worker notices at its next token
            health = httpx.get(url + "/health").json()
            if health["running"] == 0:
                break
            time.sleep(0.05)
        assert health["cancelled"] == 1 and health["finished"] == 0, health


def test_client_disconnect_while_waiting_cancels_the_request(text_model):
    with serving(text_model, max_active=1) as (url, app):
        release = blocked_worker(app)
        with pytest.raises(httpx.ReadTimeout):     # the client gives up while its request is queued
            httpx.post(url + "/v1/completions", json={"prompt": "the cat", "max_tokens": 4}, timeout=0.5)
        time.sleep(2 * DISCONNECT_POLL_SECONDS)    # the handler notices and cancels the job
        release.set()
        for _ in range(400):
            health = httpx.get(url + "/health").json()
            if health["running"] == 0 and health["waiting"] == 0:
                break
            time.sleep(0.05)
        assert health["cancelled"] == 1, health


def test_prompt_cache_restores_the_shared_system_prompt(shipped):
    system = "Answer with the sum only. " * 12
    questions = ["12+345=", "48+7=", "9+16="]

    def answers(prompt_cache):
        with serving(shipped, prompt_cache=prompt_cache) as (url, _):
            c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            return [c.chat.completions.create(model="cogcore-tiny", max_tokens=8, messages=[
                {"role": "system", "content": system}, {"role": "user", "content": q}]) for q in questions]

    pc = cogcore.PromptCache(shipped, max_bytes=64 << 20)
    cached, plain = answers(pc), answers(None)
    assert [r.choices[0].message.content for r in cached] == [r.choices[0].message.content for r in plain]
    system_ids = 1 + len(shipped.tokenizer.encode(system)) + 1            # [bos] system [eos]
    assert [r.usage.prompt_tokens_details.cached_tokens for r in cached[1:]] == [system_ids] * 2
    assert pc.hits >= 2
