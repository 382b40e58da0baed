"""Chat templates (the Jinja `chat_template` of tokenizer_config.json), rendered as transformers does.

    text = render(template, messages, add_generation_prompt=True, bos_token="<s>", ...)

transformers' `apply_chat_template` compiles the template in a sandboxed Jinja
environment with `trim_blocks` and `lstrip_blocks`, the loop-control extension, a
`tojson` filter that keeps non-ASCII characters, and the globals `raise_exception`
and `strftime_now`; it renders it with `messages`, `add_generation_prompt`, `tools`,
`documents` and the tokenizer's special tokens (`bos_token`, `eos_token`, ...).
This module does the same. Templates come from model files, so they are never
trusted: the sandbox refuses attribute tricks, and a template error is an InputError.

`TemplateChat` is `cogcore chat` through a template. For `/v1/chat/completions`
(docs/serving.md), OpenAI chat messages become prompt token ids: a model directory
whose tokenizer_config.json has a `chat_template` is rendered with it (`render`,
`add_generation_prompt` true) and the text encoded without an extra BOS. cogcore's
own models have no template and get the turn format `cogcore chat` (generate.Conversation) feeds:

    system     [bos] text [eos]       a closed document before the conversation
    user       [bos] text             the reply continues this document ...
    assistant  text [eos]             ... and closes it

A user turn that no assistant message answers is closed with [eos] before the next
message, as Conversation closes a turn. The last message must be a user message.
"""

from __future__ import annotations

import datetime
import functools
import json
import os

from .errors import InputError
from .generate import Conversation, Stream, resolve_options
from .tokenizer import HF_TOKENIZER_CONFIG, chat_template_files, read_tokenizer_config


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


class TemplateChat(Conversation):
    """A chat through the model's chat template, one cache across turns: a
    `cogcore.generate.Conversation` (same options, history policies and prompt cache)
    whose turns are rendered by the template instead of cogcore's own turn format.

    Each turn renders the whole conversation with `add_generation_prompt=True`. What
    the cache already holds (the earlier prompts and replies, with their special
    tokens) is a prefix of that text whenever the template renders a reply as it was
    generated; then only the rest is encoded and fed. When it is not (a template that
    rewrites earlier replies), the conversation is fed again from a fresh cache, so the
    model always sees exactly the rendered text.

    With `prompt_cache=` (a `cogcore.PromptCache`) the chat keeps no cache of its own:
    each turn's prompt is the whole conversation (the same tokens as without it), whose
    longest stored prefix the prompt cache restores (and keeps, on disk too when it has
    a directory).
    """

    def reset(self) -> None:
        self.tokenizer = self.model.tokenizer
        self.cache = self.model.new_cache() if self.prompt_cache is None else None
        self.messages: list[dict] = []
        self.cached_ids: list[int] = []          # every token the cache holds, or will once pending is fed
        self.last = None

    def send(self, text: str, **overrides) -> Stream:
        tok = self.tokenizer
        options = {**self.options, **overrides}
        self.notice = None
        if self.history == "reset":
            self.reset()
        if self.last is not None:
            result = self.last.result
            # with a prompt cache, each turn's prompt is the whole conversation
            self.cached_ids = (self.cached_ids if self.prompt_cache is None else []) + result.prompt_ids \
                + result.token_ids
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
            self.cached_ids, new_text = [], full
            self.cache = self.model.new_cache() if self.prompt_cache is None else None
        self.cached_ids = self.cached_ids[:len(self.cached_ids) - len(pending)]   # pending: fed again below
        # with a prompt cache the prompt is the whole conversation, restored as far as the store holds it
        prefix = pending if self.prompt_cache is None else self.cached_ids + pending
        self.last = Stream(self.model, tok.encode(new_text), cache=self.cache, bos=False, stats=self.stats,
                           prefix_ids=prefix, prompt_cache=self.prompt_cache, **options)   # the template writes BOS
        return self.last


ROLES = ("system", "developer", "user", "assistant")     # developer: OpenAI's newer name for system


def message_text(message, index: int) -> tuple[str, str]:
    """(role, text) of one OpenAI chat message, or an InputError naming messages[index]."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InputError(f"{where}: expected an object with role and content, found {_show(message)}")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise InputError(f"{where}.role: expected one of {', '.join(ROLES)}, found {_show(role)}")
    if isinstance(content, list):                       # [{"type": "text", "text": ...}, ...]
        parts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise InputError(f"{where}.content[{j}]: expected a text part "
                                 f'{{"type": "text", "text": ...}}, found {_show(part)}')
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise InputError(f"{where}.content: expected a string or a list of text parts, found {_show(content)}")
    return ("system" if role == "developer" else role), content


def chat_prompt_ids(model, messages, template: tuple[str, dict] | None = None) -> tuple[list[int], int]:
    """(prompt token ids, how many of them the leading system messages are) for a list of OpenAI
    chat messages: `template` (from `chat_template`, read once by the caller) when there is one
    (its system part is not known in tokens: 0), else the default turn format."""
    if not isinstance(messages, list) or not messages:
        raise InputError(f"messages: expected a non-empty list of messages, found {_show(messages)}")
    turns = [message_text(m, i) for i, m in enumerate(messages)]
    if template is not None:
        return model.tokenizer.encode(render_template(template, turns), bos=False), 0
    return default_chat_ids(model, turns)


def default_chat_ids(model, turns: list[tuple[str, str]]) -> tuple[list[int], int]:
    """The turn format of the module docstring: (ids, length of the leading system documents)."""
    if turns[-1][0] != "user":
        raise InputError(f"messages[{len(turns) - 1}]: expected the last message to be from the user, "
                         f"found role {turns[-1][0]!r}")
    tok = model.tokenizer
    bos, eos = model.config.bos_token_id, model.config.eos_token_id
    ids: list[int] = []
    system = None                                        # set at the first non-system message
    open_turn = False                                    # a user turn waiting for its reply
    for role, text in turns:
        if system is None and role != "system":
            system = len(ids)
        if role == "assistant":
            ids += ([] if open_turn else [bos]) + tok.encode(text) + [eos]
            open_turn = False
            continue
        if open_turn:
            ids.append(eos)
        ids += [bos] + tok.encode(text) + ([eos] if role == "system" else [])
        open_turn = role == "user"
    return ids, system


def chat_template(model_dir: str | None) -> tuple[str, dict] | None:
    """(`chat_template`, {bos_token, eos_token texts}) of model_dir/tokenizer_config.json, if it has
    one; chat_template.jinja beside it, where transformers 5 saves it, comes first, as in transformers."""
    if model_dir is None or not os.path.isdir(model_dir):
        return None
    config = read_tokenizer_config(model_dir)
    config = config if isinstance(config, dict) else {}
    template = chat_template_files(model_dir)
    template = config.get("chat_template") if template is None else template
    if isinstance(template, list):                       # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None:
        return None
    if not isinstance(template, str):
        raise InputError(f"{os.path.join(model_dir, HF_TOKENIZER_CONFIG)}: chat_template: expected a string, found {type(template).__name__}")
    special = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in config.items()
               if k in ("bos_token", "eos_token")}
    return template, special


def model_chat_template(model) -> tuple[str, dict] | None:
    """`chat_template` of the model's directory, or, for a GGUF file, the template its tokenizer
    read from the metadata (tokenizer.chat_template) with the tokenizer's special token texts."""
    template = chat_template(model.path)
    text = getattr(model.tokenizer, "chat_template", None) if template is None and model.path else None
    return (text, model.tokenizer.special_tokens()) if text else template


def render_template(template: tuple[str, dict], turns: list[tuple[str, str]]) -> str:
    """(role, text) turns rendered with `template` (from `chat_template`), as transformers renders them."""
    text, special = template
    return render(text, [{"role": r, "content": t} for r, t in turns], add_generation_prompt=True,
                  bos_token=special.get("bos_token") or "", eos_token=special.get("eos_token") or "")


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
