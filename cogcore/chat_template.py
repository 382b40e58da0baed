"""Chat templates (the Jinja `chat_template` of tokenizer_config.json), rendered as transformers does.

    text = render(template, messages, add_generation_prompt=True, bos_token="<s>", ...)

transformers' `apply_chat_template` compiles the template in a sandboxed Jinja
environment with `trim_blocks` and `lstrip_blocks`, the loop-control extension, a
`tojson` filter that keeps non-ASCII characters, and the globals `raise_exception`
and `strftime_now`; it renders it with `messages`, `add_generation_prompt`, `tools`,
`documents` and the tokenizer's special tokens (`bos_token`, `eos_token`, ...).
This module does the same. Templates come from model files, so they are never
trusted: the sandbox refuses attribute tricks, and a template error is an InputError.
"""

from __future__ import annotations

import datetime
import functools
import json

from .errors import InputError


@functools.lru_cache(maxsize=8)
def compile_template(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (transformers marks assistant text with it): its body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateError as e:
        raise InputError(f"chat_template: expected a Jinja template, found one that does not parse ({e})") from None


def render(template: str, messages: list[dict], add_generation_prompt: bool = False, **special_tokens) -> str:
    """The conversation as the model was trained to see it (special tokens as text)."""
    import jinja2
    try:
        return compile_template(template).render(messages=messages, tools=None, documents=None,
                                                 add_generation_prompt=add_generation_prompt,
                                                 **special_tokens)
    except jinja2.exceptions.TemplateError as e:
        raise InputError(f"chat_template: rendering failed ({e})") from None


class TemplateChat:
    """A chat through the model's chat template, one cache across turns (the interface of
    `cogcore.generate.Conversation`).

    Each turn renders the whole conversation with `add_generation_prompt=True`. What
    the cache already holds (the earlier prompts and replies, with their special
    tokens) is a prefix of that text whenever the template renders a reply as it was
    generated; then only the rest is encoded and fed. When it is not (a template that
    rewrites earlier replies), the conversation is fed again from a fresh cache, so the
    model always sees exactly the rendered text.
    """

    def __init__(self, model, stats: bool = False, history: str | None = None, **options):
        from .generate import history_policy, resolve_options
        self.model, self.stats, self.options = model, stats, options
        self.tokenizer = model.tokenizer
        resolve_options(model, **options)        # bad options fail now, not at the first turn
        self.history = history_policy(model, history)
        self.notice: str | None = None           # set by a turn that had to drop the conversation
        self.reset()

    def reset(self) -> None:
        self.cache = self.model.new_cache()
        self.messages: list[dict] = []
        self.cached_ids: list[int] = []          # every token the cache holds, or will once pending is fed
        self.last = None

    def send(self, text: str, **overrides):
        from .generate import Stream, resolve_options
        tok = self.tokenizer
        options = {**self.options, **overrides}
        self.notice = None
        if self.history == "reset":
            self.reset()
        if self.last is not None:
            result = self.last.result
            self.cached_ids += result.prompt_ids + result.token_ids
            self.messages.append({"role": "assistant", "content": tok.decode(result.token_ids)})
        self.messages.append({"role": "user", "content": text})
        full = render(tok.chat_template, self.messages, add_generation_prompt=True, **tok.special_tokens())
        limit = self.model.config.max_position_embeddings
        if len(self.messages) > 1 and (len(tok.encode(full))
                                       + resolve_options(self.model, **options).max_new_tokens) > limit:
            self.reset()
            self.messages = [{"role": "user", "content": text}]
            full = render(tok.chat_template, self.messages, add_generation_prompt=True, **tok.special_tokens())
            self.notice = (f"the conversation outgrew the model's context of {limit} positions; "
                           f"it starts afresh with this turn")
        held = tok.tok.decode(self.cached_ids, skip_special_tokens=False) if self.cached_ids else ""
        pending: list[int] = []
        if held and full.startswith(held):
            pending = self.last.result.pending_ids
            new_text = full[len(held):]
        else:
            self.cache, self.cached_ids, new_text = self.model.new_cache(), [], full
        self.cached_ids = self.cached_ids[:len(self.cached_ids) - len(pending)]   # pending: fed again below
        self.last = Stream(self.model, tok.encode(new_text), cache=self.cache, bos=False, stats=self.stats,
                           prefix_ids=pending, **options)   # the template writes BOS
        return self.last
