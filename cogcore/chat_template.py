"""Chat messages -> prompt token ids, for `/v1/chat/completions` (docs/serving.md).

A model directory whose tokenizer_config.json has a `chat_template` (the Hugging
Face convention) is rendered with it (Jinja2, sandboxed, `add_generation_prompt`
true) and the text encoded without an extra BOS. cogcore's own models have no
template and get the turn format `cogcore chat` (generate.Conversation) feeds:

    system     [bos] text [eos]       a closed document before the conversation
    user       [bos] text             the reply continues this document ...
    assistant  text [eos]             ... and closes it

A user turn that no assistant message answers is closed with [eos] before the next
message, as Conversation closes a turn. The last message must be a user message.
"""

from __future__ import annotations

import json
import os

from .errors import CogcoreError, InputError

ROLES = ("system", "developer", "user", "assistant")     # developer: OpenAI's newer name for system
TEMPLATE_CONFIG = "tokenizer_config.json"


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
    """(`chat_template`, {bos_token, eos_token texts}) of model_dir/tokenizer_config.json, if it has one."""
    if model_dir is None or not os.path.isdir(model_dir):
        return None
    path = os.path.join(model_dir, TEMPLATE_CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise CogcoreError(f"{path}: expected valid JSON, found a parse error: {e}") from None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):                       # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None:
        return None
    if not isinstance(template, str):
        raise InputError(f"{path}: chat_template: expected a string, found {type(template).__name__}")
    special = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in config.items()
               if k in ("bos_token", "eos_token")}
    return template, special


def render_template(template: tuple[str, dict], turns: list[tuple[str, str]]) -> str:
    """A Hugging Face chat template rendered the way transformers renders it."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise InputError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    text, special = template
    try:
        return env.from_string(text).render(
            messages=[{"role": r, "content": t} for r, t in turns], add_generation_prompt=True,
            bos_token=special.get("bos_token") or "", eos_token=special.get("eos_token") or "")
    except TemplateError as e:
        raise InputError(f"chat template: {e}") from None


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
