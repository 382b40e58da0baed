"""Prompt caches (issue 12): a restored prefix gives the logits of a full recompute, for every layer
type, at prefix lengths on and off checkpoint and NSA block boundaries; corrupted restores are
caught; files of another model or damaged files are errors; LRU under the byte budget."""

import io
import os
import sys

import numpy as np
import pytest

from cogcore.errors import CogcoreError, InputError
from cogcore.generate import Conversation, complete, stream
from cogcore.prompt_cache import PromptCache, PromptCacheError, layout, model_identity

try:
    from test_cache import make_model
except ImportError:  # tests/ imported as a package
    from tests.test_cache import make_model

# The model of test_cache: recurrent, sliding (window 8), sparse (l 4, s 2, l' 8, n 3, w 8), full;
# moe, channel_mix and dense FFNs. Checkpoints every 8 tokens, prefill chunks of 5 (so a chunk
# boundary is rarely a checkpoint).
EVERY, CHUNK, T, V = 8, 5, 90, 64
ATOL = 2e-5


@pytest.fixture(scope="module", params=["numpy", "numba"])
def model(request):
    return make_model(request.param)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, V, T)


def diverge(ids, c):
    """ids that share exactly their first c tokens with `ids`."""
    return np.concatenate([ids[:c], (ids[c:] + 1) % V])


def restore_and_feed(model, pc, new):
    """Restore the longest stored prefix of `new`, feed the rest; (restored length, logits of the rest)."""
    entry, j = pc.lookup(new)
    cache = entry.restore(model, j)
    P = cache.length
    return P, model.forward(new[P:], cache)


@pytest.mark.parametrize("stored", [40, 45])           # on / off a checkpoint (and NSA stride 2, block 4)
@pytest.mark.parametrize("common", [45, 44, 41, 40, 39, 33, 17, 8])
def test_restored_prefix_gives_the_logits_of_a_full_recompute(model, ids, stored, common):
    pc = PromptCache(model, snapshot_every=EVERY)
    pc.prefill(ids[:stored], chunk=CHUNK)
    new = diverge(ids, common)
    P, logits = restore_and_feed(model, pc, new)
    # restored at the last checkpoint inside the shared prefix: a multiple of 8, or the stored end
    c = min(common, stored)
    assert P == (stored if c == stored else c // EVERY * EVERY)
    np.testing.assert_allclose(logits, model.forward(new)[P:], atol=ATOL)


def test_full_hit_needs_no_forward(model, ids):
    pc = PromptCache(model, snapshot_every=EVERY)
    _, last, restored, _ = pc.prefill(ids[:45], chunk=CHUNK)
    cache, logits, again, _ = pc.prefill(ids[:45], chunk=CHUNK)
    assert (restored, again, cache.length, len(pc)) == (0, 45, 45, 1)
    np.testing.assert_array_equal(logits, last)
    np.testing.assert_allclose(logits, model.forward(ids[:45])[-1], atol=ATOL)


def test_the_tests_catch_wrong_restores(model, ids):
    """Each of these deliberate mistakes moves the logits far beyond round-off."""
    pc = PromptCache(model, snapshot_every=EVERY)
    pc.prefill(ids[:45], chunk=CHUNK)
    entry = next(iter(pc.entries.values()))
    new = diverge(ids, 42)                    # restores at checkpoint 40; positions 42.. differ
    want = model.forward(new)[40:]
    j = list(entry.checkpoints).index(40)

    def error(cache, start=40):
        return np.abs(model.forward(new[start:], cache) - model.forward(new)[start:]).max()

    assert error(entry.restore(model, j)) < ATOL
    # one position off: the states of 40 with K/V (and the count) of 39
    off = entry.restore(model, j)
    for mixer, _ in off.layers:
        kv = getattr(mixer, "kv", mixer)
        if hasattr(kv, "k") and hasattr(kv.k, "n"):
            kv.k.n = kv.v.n = 39
    off.length = 39
    assert error(off, 39) > 1e-3
    # a recurrent state from the wrong snapshot (32 instead of 40)
    wrong = entry.restore(model, j)
    earlier = entry.restore(model, j - 1)
    wrong.layers[0][0].S = earlier.layers[0][0].S
    assert error(wrong) > 1e-3
    # stale NSA compressed blocks: those of the stored suffix (blocks ending after 40) kept
    stale = entry.restore(model, j)
    for i in (2, 5):                          # the sparse layers
        st = stale.layers[i][0]
        full = entry.tensors[f"layers.{i}.mixer.kc"], entry.tensors[f"layers.{i}.mixer.vc"]
        nb = st.kc.n + 2                      # two blocks that read positions 40..43
        st.kc.data, st.kc.n = full[0][:nb].copy(), nb
        st.vc.data, st.vc.n = full[1][:nb].copy(), nb
    assert want.shape == model.forward(new[40:], stale).shape
    assert error(stale) > 1e-3


class CharTokenizer:
    """Just enough tokenizer for generation on this random model: one token per character."""

    def encode(self, text, bos=True):
        return [1] * bos + [ord(c) % V for c in text]

    def stream_decoder(self):
        return self

    def push(self, token):
        return f"<{token}>"

    def flush(self):
        return ""


@pytest.fixture
def text_model(model):
    model._tokenizer = CharTokenizer()
    return model


def test_generate_with_a_prompt_cache_gives_the_same_tokens(text_model, ids):
    model = text_model
    opts = dict(max_new_tokens=6, stop=[], temperature=0.9, seed=2, eos_token_id=[], prefill_chunk=CHUNK)
    doc = [int(t) for t in ids[:50]]
    queries = ([3, 4], [5, 6, 7], [3, 4])
    pc = PromptCache(model, snapshot_every=EVERY)
    plain = [complete(model, doc + q, **opts) for q in queries]
    cached = [complete(model, doc + q, prompt_cache=pc, **opts) for q in queries]
    assert [r.token_ids for r in cached] == [r.token_ids for r in plain]
    # 48: the last checkpoint inside the document; 57: the whole first prompt and 6 - 1 tokens fed
    assert [r.cached_tokens for r in cached] == [0, 48, 52]
    assert pc.hits == 2 and pc.misses == 1
    assert "".join(stream(model, doc + [9], prompt_cache=pc, **opts)) == complete(model, doc + [9], **opts).text


def test_conversation_keeps_its_cache_in_the_store(text_model):
    model = text_model
    opts = dict(max_new_tokens=5, stop=[], temperature=0.7, seed=1, eos_token_id=[])
    pc = PromptCache(model, snapshot_every=EVERY)
    plain, cached = Conversation(model, **opts), Conversation(model, prompt_cache=pc, **opts)
    for turn in ("hello there", "and more", "bye"):
        a, b = plain.send(turn).result, cached.send(turn).result
        assert a.token_ids == b.token_ids
    # everything but the previous reply's last token (never fed), EOS, BOS and "bye"
    assert b.cached_tokens == len(b.prompt_ids) - 3 - len("bye")
    assert len(pc) == 1                      # each turn's entry replaces the one it extends


def run_ids(model, prompt_ids, **opts):
    model._tokenizer = CharTokenizer()
    return complete(model, prompt_ids, max_new_tokens=2, **opts)


# ---- the store -----------------------------------------------------------------------------------
def test_lru_under_the_byte_budget(ids):
    model = make_model("numpy")
    probe = PromptCache(model, snapshot_every=EVERY)
    probe.prefill(ids[:30], chunk=CHUNK)
    size = probe.nbytes
    pc = PromptCache(model, max_bytes=int(2.5 * size), snapshot_every=EVERY)
    a, b, c = (np.concatenate([[k], ids[1:30]]) for k in (1, 2, 3))
    pc.prefill(a)
    pc.prefill(b)
    pc.prefill(a)                            # a is now the most recently used
    pc.prefill(c)                            # over budget: b goes
    assert pc.nbytes <= pc.max_bytes and len(pc) == 2
    assert pc.lookup(b)[0] is None and pc.lookup(a)[0] is not None
    assert PromptCache(model, max_bytes=size // 2).prefill(a)[2] == 0   # too big to keep: not kept


def test_persistent_store_across_instances(tmp_path, ids):
    model = make_model("numpy")
    d = tmp_path / "store"
    first = PromptCache(model, directory=d, snapshot_every=EVERY)
    _, last, _, _ = first.prefill(ids[:45], chunk=CHUNK)
    assert len(os.listdir(d)) == 1
    again = PromptCache(make_model("numpy"), directory=d, snapshot_every=EVERY)   # "another process"
    entry, j = again.lookup(ids[:60])
    assert entry is not None and entry.checkpoints[j] == 45
    assert isinstance(entry.tensors["logits"], np.memmap) or entry.tensors["logits"].base is not None
    P, logits = restore_and_feed(model, again, ids[:60])
    np.testing.assert_allclose(logits, model.forward(ids[:60])[45:], atol=ATOL)
    again.prefill(ids[:60], chunk=CHUNK)    # supersedes the 45-token entry
    assert len(os.listdir(d)) == 1 and not any(f.endswith(".tmp") for f in os.listdir(d))


def test_another_model_or_config_is_an_error(tmp_path, ids):
    d = tmp_path / "store"
    PromptCache(make_model("numpy"), directory=d).prefill(ids[:20])
    other_config = make_model("numpy", sliding_window=6)
    with pytest.raises(PromptCacheError, match="another model or config"):
        PromptCache(other_config, directory=d)
    from cogcore.create import random_weights
    from cogcore.model import Model
    from cogcore.weights import Weights
    m = make_model("numpy")
    other_weights = Model(m.config, Weights(random_weights(m.config, seed=4)), backend="numpy")
    assert model_identity(other_weights) != model_identity(m)
    with pytest.raises(CogcoreError, match="another model"):
        PromptCache(other_weights, directory=d)


def test_damaged_files_are_errors(tmp_path, ids):
    """Fuzz: truncations and flipped bytes anywhere give a PromptCacheError (at open or at first use)."""
    model = make_model("numpy")
    d = tmp_path / "good"
    PromptCache(model, directory=d, snapshot_every=EVERY).prefill(ids[:30], chunk=CHUNK)
    (name,) = os.listdir(d)
    good = (d / name).read_bytes()
    rng = np.random.default_rng(5)
    cases = [good[:n] for n in (0, 5, 8, 100, len(good) // 2, len(good) - 1)]
    for _ in range(40):
        bad = bytearray(good)
        i = int(rng.integers(0, len(bad)))
        bad[i] ^= 1 << int(rng.integers(0, 8))
        cases.append(bytes(bad))
    for k, data in enumerate(cases):
        bad_dir = tmp_path / f"bad{k}"
        bad_dir.mkdir()
        (bad_dir / name).write_bytes(data)
        with pytest.raises(PromptCacheError):
            PromptCache(model, directory=bad_dir, snapshot_every=EVERY).verify()


def test_layout_is_what_is_stored(model, ids):
    pc = PromptCache(model, snapshot_every=EVERY)
    pc.prefill(ids[:45], chunk=CHUNK)
    entry = next(iter(pc.entries.values()))
    assert {n: a.shape for n, a in entry.tensors.items()} == layout(model, entry.checkpoints)
    assert list(entry.checkpoints) == [8, 16, 24, 32, 40, 45]


def test_bad_arguments(ids):
    model = make_model("numpy")
    with pytest.raises(InputError, match="max_bytes"):
        PromptCache(model, max_bytes=-1)
    with pytest.raises(InputError, match="snapshot_every"):
        PromptCache(model, snapshot_every=0)
    pc = PromptCache(model)
    with pytest.raises(InputError, match="prompt_cache"):
        run_ids(model, [1, 2], prompt_cache=pc, cache=model.new_cache())
    with pytest.raises(InputError, match="prompt_cache"):
        run_ids(make_model("numpy"), [1, 2], prompt_cache=pc)


# ---- the command line ----------------------------------------------------------------------------
def test_cli_cache_then_generate_and_chat(tmp_path, capsys, monkeypatch):
    from cogcore import cli
    try:
        from textmodel import make_text_model, train_tokenizer
    except ImportError:
        from tests.textmodel import make_text_model, train_tokenizer
    tok = str(tmp_path / "tokenizer.model")
    n_pieces = train_tokenizer(tok)
    model_dir = make_text_model(str(tmp_path), tok, n_pieces)
    context = "the cat sat on a mat what is 12+345= " * 12
    (tmp_path / "context.txt").write_text(context)
    store = str(tmp_path / "store")
    base = ["--model", model_dir, "--backend", "numpy"]
    assert cli.main(["cache", *base, store, "--file", str(tmp_path / "context.txt")]) == 0
    err = capsys.readouterr().err
    assert "prefill:" in err and "100 %" in err and "0 restored" in err
    gen = ["generate", *base, "--prompt-cache", store, context + "the dog", "-n", "6", "--multiline"]
    assert cli.main(gen) == 0
    out, err = capsys.readouterr()
    assert "restored from the prompt cache" in err
    plain = cogcore_generate(model_dir, context + "the dog")
    assert out == plain + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nmore\n"))
    assert cli.main(["chat", *base, "--prompt-cache", store, "-n", "4", "--speed"]) == 0
    assert capsys.readouterr().err.count("restored from the prompt cache") == 1   # the second turn
    assert cli.main(["cache", *base, store]) == 0                                  # lists the store
    assert "entries" in capsys.readouterr().err
    other = make_text_model(str(tmp_path), tok, n_pieces, name="other", norm_eps=1e-6)
    assert cli.main(["generate", "--model", other, "--backend", "numpy", "--prompt-cache", store, "x"]) == 1
    assert "another model" in capsys.readouterr().err


def cogcore_generate(model_dir, prompt):
    import cogcore
    return cogcore.load(model_dir, backend="numpy").generate(prompt, max_new_tokens=6, stop=[])
