"""Text generation over a cache: prefill in chunks, then one token at a time (docs/generation.md).

    text = generate(model, "12+345=", max_new_tokens=8)           # the continuation only
    for piece in stream(model, "Once", temperature=0.8, seed=1):  # text pieces as they decode
        print(piece, end="", flush=True)
    s = stream(model, "Once", stats=True); text = "".join(s); s.result   # GenerationResult
    chat = Conversation(model); "".join(chat.send("hello")); "".join(chat.send("more"))

The prompt is encoded as `[bos] + sp.encode(prompt)` (no BOS when it continues a
non-empty cache) and fed in chunks of `prefill_chunk` tokens. Each new token is
drawn by `cogcore.sampling` from the last logits. Generation ends at an EOS token
(not part of the text), when the text contains a stop string (default "\\n"; the
text before it is returned, the stop string is not), after `max_new_tokens`, or
when the cache reaches `max_position_embeddings`.

The cache then holds the prompt and every generated token except the last one
drawn (`GenerationResult.pending_ids`), which nothing has read yet.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Iterator, Sequence

import numpy as np

from .config import is_int, read_json
from .errors import InputError
from .sampling import check_options, sample_next

GENERATION_CONFIG = "generation_config.json"
DEFAULT_STOP = ("\n",)


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """How to generate. Built by `resolve_options`: explicit arguments > generation_config.json > these."""

    max_new_tokens: int = 64
    temperature: float = 0.0          # 0: greedy
    top_k: int = 0                    # 0: off
    top_p: float = 1.0                # 1: off
    min_p: float = 0.0                # 0: off
    repetition_penalty: float = 1.0   # 1: off
    seed: int | None = 0              # None: fresh entropy, not reproducible
    stop: tuple[str, ...] = DEFAULT_STOP
    eos_token_id: tuple[int, ...] | None = None   # None: the model's eos_token_id
    prefill_chunk: int = 256

    def check(self) -> "GenerationOptions":
        check_options(self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty)
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise InputError(f"max_new_tokens: expected an integer >= 0, found {self.max_new_tokens!r}")
        if not is_int(self.prefill_chunk) or self.prefill_chunk < 1:
            raise InputError(f"prefill_chunk: expected an integer >= 1, found {self.prefill_chunk!r}")
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            raise InputError(f"seed: expected an integer >= 0 or None, found {self.seed!r}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise InputError(f"stop: expected non-empty strings, found {s!r}")
        return self


_OPTION_NAMES = {f.name for f in dataclasses.fields(GenerationOptions)}


def read_generation_config(model_dir: str | os.PathLike | None) -> dict:
    """The model directory's generation_config.json as a dict ({} when there is none)."""
    if model_dir is None:
        return {}
    path = os.path.join(os.fspath(model_dir), GENERATION_CONFIG)
    if not os.path.lexists(path):
        return {}
    raw = read_json(path, InputError, "generation config")
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    return raw


def generation_defaults(model_dir: str | os.PathLike | None) -> dict:
    """The options that the model directory's generation_config.json suggests (may be empty).

    Read keys: max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty,
    do_sample (false means greedy whatever temperature says), eos_token_id (int or
    list), stop_strings (str or list), seed.
    """
    raw = read_generation_config(model_dir)
    out = {k: raw[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p", "min_p",
                               "repetition_penalty", "seed") if raw.get(k) is not None}
    if raw.get("do_sample") is False:
        out["temperature"] = 0.0
    if raw.get("eos_token_id") is not None:
        out["eos_token_id"] = raw["eos_token_id"]
    if raw.get("stop_strings") is not None:
        out["stop"] = raw["stop_strings"]
    return out


def resolve_options(model, **overrides) -> GenerationOptions:
    """GenerationOptions for `model`: arguments that are not None > generation_config.json > defaults.

    A bad value in generation_config.json is an InputError naming the file.
    """
    unknown = set(overrides) - _OPTION_NAMES
    if unknown:
        raise InputError(f"generate: unknown option(s) {', '.join(sorted(unknown))}; "
                         f"expected some of {', '.join(sorted(_OPTION_NAMES))}")
    model_dir = getattr(model, "path", None)
    suggested = generation_defaults(model_dir)
    try:
        _build_options(model, suggested)
    except InputError as e:
        raise InputError(f"{os.path.join(model_dir, GENERATION_CONFIG)}: {e}") from None
    return _build_options(model, {**suggested, **{k: v for k, v in overrides.items() if v is not None}})


def _build_options(model, values: dict) -> GenerationOptions:
    """Checked GenerationOptions from raw values (stop and eos_token_id may be one value or a list)."""
    values = dict(values)
    if "stop" in values:
        values["stop"] = _as_tuple(values["stop"], str, "stop", "a string or a list of strings")
    if "eos_token_id" in values:
        V = model.config.vocab_size
        expected = f"a token id in 0..{V - 1} (vocab_size={V}) or a list of them ([]: never stop at EOS)"
        eos = values["eos_token_id"] = _as_tuple(values["eos_token_id"], int, "eos_token_id", expected)
        bad = [i for i in eos if not 0 <= i < V]
        if bad:
            raise InputError(f"eos_token_id: expected {expected}, found {bad[0]}")
    if values.get("seed") == -1:
        values["seed"] = None
    options = GenerationOptions(**values).check()
    # top_k beyond the vocabulary keeps everything: the same as off, and no overflow in the kernels
    return dataclasses.replace(options, top_k=min(int(options.top_k), model.config.vocab_size))


def _as_tuple(value, kind: type, name: str, expected: str) -> tuple:
    """One value or a list/tuple of them, as a tuple; an InputError for anything else."""
    items = [value] if isinstance(value, (str, int, np.integer)) else value
    ok = isinstance(items, (list, tuple)) and all(
        (is_int(v) if kind is int else isinstance(v, kind)) for v in items)
    if not ok:
        raise InputError(f"{name}: expected {expected}, found {value!r:.60}")
    return tuple(int(v) if kind is int else v for v in items)


@dataclasses.dataclass
class GenerationStats:
    """Router and selection records of every position a generation fed through the model.

    expert_counts:       layer -> [E] int64, tokens routed to each expert (each token
                         counts once per expert among its top-k), summed over all positions
    token_expert_counts: layer -> [calls, E], the same per forward call (the prefill chunks,
                         then one row per generated token)
    selected_blocks:     sparse layer -> [P, Hkv, n] int64, the selection blocks each
                         position's query kept per kv head (ascending, -1 pads)
    positions:           [P] the absolute positions those rows belong to
    """

    expert_counts: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    token_expert_counts: dict[int, list] = dataclasses.field(default_factory=dict)
    selected_blocks: dict[int, list] = dataclasses.field(default_factory=dict)
    positions: list = dataclasses.field(default_factory=list)

    def add(self, ctx) -> None:
        """Record one forward call's `model.last_pass`."""
        self.positions.append(np.asarray(ctx.positions))
        for layer, counts in ctx.expert_counts.items():
            counts = np.asarray(counts, np.int64)
            self.expert_counts[layer] = self.expert_counts.get(layer, 0) + counts
            self.token_expert_counts.setdefault(layer, []).append(counts)
        for layer, kept in ctx.selected_blocks.items():
            self.selected_blocks.setdefault(layer, []).append(np.asarray(kept))

    def finish(self) -> "GenerationStats":
        """Lists of per-call arrays -> stacked arrays."""
        if isinstance(self.positions, list):
            self.positions = (np.concatenate(self.positions) if self.positions
                              else np.zeros(0, np.int64))
            self.token_expert_counts = {k: np.stack(v) for k, v in self.token_expert_counts.items()}
            self.selected_blocks = {k: np.concatenate(v) for k, v in self.selected_blocks.items()}
        return self


@dataclasses.dataclass
class GenerationResult:
    """Everything about one generation, available once its stream is exhausted."""

    text: str                          # the continuation (no EOS, no stop string)
    prompt_ids: list[int]              # what was fed before generating (BOS included)
    token_ids: list[int]               # every token drawn, the final EOS or stop token included
    finish_reason: str                 # "eos", "stop", "length" (max_new_tokens) or "context" (cache full)
    prompt_seconds: float              # prefill time (restoring from a prompt cache included)
    generate_seconds: float            # drawing tokens and feeding them back
    cache: object                      # the cache (prompt + token_ids[:-1])
    stats: GenerationStats | None = None
    cached_tokens: int = 0             # prompt tokens restored from a prompt cache, not computed

    @property
    def pending_ids(self) -> list[int]:
        """Tokens drawn but not yet fed to the cache (the last one, if any)."""
        return self.token_ids[-1:]

    @property
    def prompt_tokens_per_second(self) -> float:
        return len(self.prompt_ids) / self.prompt_seconds if self.prompt_seconds > 0 else float("inf")

    @property
    def tokens_per_second(self) -> float:
        n = len(self.token_ids)
        return n / self.generate_seconds if self.generate_seconds > 0 else (float("inf") if n else 0.0)

    def speed_line(self) -> str:
        return (f"prompt: {len(self.prompt_ids)} tokens in {self.prompt_seconds:.3f} s "
                f"({self.prompt_tokens_per_second:.1f} tokens/s); generated: {len(self.token_ids)} tokens "
                f"in {self.generate_seconds:.3f} s ({self.tokens_per_second:.1f} tokens/s); "
                + (f"restored from the prompt cache: {self.cached_tokens} tokens; " if self.cached_tokens else "") +
                f"finish: {self.finish_reason}")


def encode_prompt(model, prompt, bos: bool = True) -> list[int]:
    """`[bos] + sp.encode(prompt)` for text; a sequence of ints is taken as token ids as they are."""
    if isinstance(prompt, str):
        if not prompt:
            raise InputError("prompt: expected some text, found an empty string")
        return model.tokenizer.encode(prompt, bos=bos)
    ids = np.asarray(prompt) if isinstance(prompt, (list, tuple, np.ndarray)) else None
    if ids is not None and ids.ndim == 1 and ids.size == 0:
        raise InputError("prompt: expected some text or token ids, found nothing")
    if ids is None or ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"prompt: expected a str or a 1-D sequence of int token ids, found {prompt!r:.60}")
    return [int(i) for i in ids]


class Stream:
    """An iterator of text pieces as they decode; `.result` (a GenerationResult) once it is done.

    Nothing runs until the first `next()`. Reading `.result` early runs the rest.
    """

    def __init__(self, model, prompt, *, cache=None, bos: bool | None = None, stats: bool = False,
                 prefix_ids: Sequence[int] = (), prompt_cache=None, on_token=None, **options):
        self.model = model
        self.on_token = on_token          # on_token(token_id, logits) for each token drawn
        self.options = resolve_options(model, **options)
        if prompt_cache is not None and (cache is not None or prompt_cache.model is not model):
            raise InputError("prompt_cache: expected a PromptCache of this model and no cache=, found "
                             + ("cache= as well" if cache is not None else "one made for another model"))
        self.prompt_cache = prompt_cache
        self.cache = cache if cache is not None else model.new_cache()
        bos = (self.cache.length == 0) if bos is None else bos
        self.prompt_ids = [int(i) for i in prefix_ids] + encode_prompt(model, prompt, bos)
        limit = model.config.max_position_embeddings
        if self.cache.length + len(self.prompt_ids) > limit:
            held = f"{self.cache.length} cached + " if self.cache.length else ""
            raise InputError(f"prompt: {held}{len(self.prompt_ids)} tokens exceed "
                             f"max_position_embeddings={limit}")
        eos = self.options.eos_token_id
        self.eos_ids = frozenset(eos if eos is not None else (model.config.eos_token_id,))
        if self.options.max_new_tokens:
            self.decoder = model.tokenizer.stream_decoder()   # text out needs the tokenizer: fail early
        self.stats = GenerationStats() if stats else None
        self._result: GenerationResult | None = None
        self._steps = self._run()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._steps)

    @property
    def result(self) -> GenerationResult:
        for _ in self._steps:
            pass
        return self._result

    def _forward(self, ids, cache=None) -> np.ndarray:
        logits = self.model.forward(np.asarray(ids, np.int64), cache=self.cache if cache is None else cache,
                                    last_only=True)
        if self.stats is not None:
            self.stats.add(self.model.last_pass)
        return logits

    def _run(self) -> Iterator[str]:
        opt, model = self.options, self.model
        start = time.perf_counter()
        ids, chunk, restored = self.prompt_ids, opt.prefill_chunk, 0
        if self.prompt_cache is not None:   # restore the longest stored prefix, prefill the rest
            self.cache, logits, restored, recorder = self.prompt_cache.prefill(ids, chunk, self._forward)
        else:
            for a in range(0, len(ids), chunk):
                logits = self._forward(ids[a:a + chunk])[-1]
        cache = self.cache
        prefilled = time.perf_counter()

        rng = np.random.default_rng(opt.seed)
        context = list(ids)                              # what the repetition penalty looks at
        drawn: list[int] = []
        text, emitted, reason = "", 0, "length"
        limit = model.config.max_position_embeddings
        for step in range(opt.max_new_tokens):
            tok = sample_next(logits, rng, context, opt.temperature, opt.top_k, opt.top_p, opt.min_p,
                              opt.repetition_penalty, model.ops.token_probabilities)
            drawn.append(tok)
            if self.on_token is not None:
                self.on_token(tok, logits)
            if tok in self.eos_ids:
                reason = "eos"
                break
            context.append(tok)
            text += self.decoder.push(tok)
            hit = _find_stop(text, opt.stop, emitted)
            if hit is not None:
                text, reason = text[:hit], "stop"
                break
            safe = len(text) - _held_back(text, opt.stop, emitted)
            if safe > emitted:
                piece, emitted = text[emitted:safe], safe
                yield piece
            if step + 1 == opt.max_new_tokens:
                break
            if cache.length + 1 > limit:
                reason = "context"
                break
            logits = self._forward([tok])[-1]
        if reason != "stop" and opt.max_new_tokens:
            text += self.decoder.flush()
        if self.prompt_cache is not None:   # offer what the generated tokens added
            self.prompt_cache.extend(recorder, list(ids) + drawn[:-1], cache, logits)
        done = time.perf_counter()
        self._result = GenerationResult(
            text=text, prompt_ids=list(ids), token_ids=drawn, finish_reason=reason,
            prompt_seconds=prefilled - start, generate_seconds=done - prefilled, cache=cache,
            stats=self.stats.finish() if self.stats is not None else None, cached_tokens=restored)
        if len(text) > emitted:
            yield text[emitted:]


def _find_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    """Index of the earliest stop string in text[start:] (occurrences never begin before `start`)."""
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: Sequence[str], emitted: int) -> int:
    """Length of the longest tail of text[emitted:] that could still grow into a stop string."""
    best = 0
    room = len(text) - emitted
    for s in stops:
        for k in range(min(len(s) - 1, room), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def stream(model, prompt, **options) -> Stream:
    """Text pieces of the continuation as they decode (a `Stream`; `.result` when done).

    Options: max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed,
    stop (str or list; replaces the default "\\n"), eos_token_id, prefill_chunk, and
    cache (continue it), bos (default: only on an empty cache), stats (collect GenerationStats),
    prompt_cache (a `cogcore.PromptCache`: restore the longest stored prefix of the prompt, feed
    only the rest, and offer the result back; not with cache=).
    on_token (called as on_token(token_id, logits) for each token drawn, with the logits it was
    drawn from; the server's logprobs come from it).
    """
    return Stream(model, prompt, **options)


def generate(model, prompt, **options) -> str:
    """The continuation of `prompt`, prompt excluded (SPEC Section 6). Options as `stream`."""
    return stream(model, prompt, **options).result.text


def complete(model, prompt, **options) -> GenerationResult:
    """Like `generate` but returns the whole GenerationResult (ids, timings, stats, cache)."""
    return stream(model, prompt, **options).result


HISTORY_POLICIES = ("keep", "reset")


def history_policy(model, history: str | None) -> str:
    """`history`, or the model's `chat_history` (generation_config.json), else "keep"; checked."""
    if history is None:
        history = read_generation_config(getattr(model, "path", None)).get("chat_history", "keep")
    if history not in HISTORY_POLICIES:
        raise InputError(f"chat_history: expected one of {', '.join(HISTORY_POLICIES)}, found {history!r:.60}")
    return history


class Conversation:
    """A chat: one reply per `send`, with one of two per-turn policies (`history`).

    "keep": one cache across turns. Turn i feeds `pending + [eos] + [bos] + sp.encode(text)`:
    the last drawn token of the turn before (fed now), an EOS to close that turn if it
    did not end with one, then the new text, so the cache holds
    `[bos] q1 a1 [eos] [bos] q2 a2 [eos] ...`, the way packed training documents look.
    When the next turn (plus `max_new_tokens`) no longer fits in `max_position_embeddings`,
    the conversation starts afresh and `notice` says so.

    "reset": every turn is answered on a fresh cache, exactly as `generate` would answer
    it alone. For models trained on one question per sequence (the shipped one): after
    an earlier turn they answer wrongly (docs/generation.md, "Conversations").

    The default is the `chat_history` key of generation_config.json, else "keep".

    With `prompt_cache=` the conversation keeps no cache of its own: each turn is the
    whole conversation so far, whose computed state the prompt cache restores (and
    keeps, on disk too when it has a directory).
    """

    def __init__(self, model, stats: bool = False, history: str | None = None, prompt_cache=None, **options):
        self.model, self.stats, self.options, self.prompt_cache = model, stats, options, prompt_cache
        resolve_options(model, **options)        # bad options fail now, not at the first turn
        self.history = history_policy(model, history)
        self.notice: str | None = None           # set by a turn that had to drop the conversation
        self.reset()

    def reset(self) -> None:
        self.cache = self.model.new_cache() if self.prompt_cache is None else None
        self.past_ids: list[int] = []            # with a prompt cache: every token of the conversation
        self.last: Stream | None = None

    def send(self, text: str, **overrides) -> Stream:
        """The reply to `text`, as a Stream of pieces (the previous reply is finished first)."""
        options = {**self.options, **overrides}
        self.notice = None
        prefix: list[int] = []
        if self.history == "reset":
            self.reset()
        elif self.last is not None:
            result = self.last.result
            prefix = result.pending_ids
            if not prefix or prefix[-1] not in self.last.eos_ids:
                prefix = prefix + [self.model.config.eos_token_id]
            if self.prompt_cache is not None:
                self.past_ids = result.prompt_ids + result.token_ids[:-1]
            length = self.cache.length if self.cache is not None else len(self.past_ids)
            limit = self.model.config.max_position_embeddings
            needed = (len(prefix) + len(encode_prompt(self.model, text))
                      + resolve_options(self.model, **options).max_new_tokens)
            if length + needed > limit:
                self.reset()
                prefix = []
                self.notice = (f"the conversation outgrew the model's context of {limit} positions; "
                               f"it starts afresh with this turn")
        self.last = Stream(self.model, text, cache=self.cache, bos=True, stats=self.stats,
                           prefix_ids=self.past_ids + prefix, prompt_cache=self.prompt_cache, **options)
        return self.last
