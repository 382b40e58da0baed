"""An OpenAI-compatible HTTP API over one model: Starlette on uvicorn (`cogcore serve`, docs/serving.md).

    app = create_app(model, prompt_cache=None, max_queue=64, max_active=8, timeout=600)
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: GET /health, GET /v1/models, GET /v1/models/{id}, POST /v1/completions,
POST /v1/chat/completions (both with "stream": true for server-sent events ending
with `data: [DONE]`). Generation runs on the `Engine`'s single worker thread; the
handlers only check requests, queue them and relay what the worker emits.

Every error is an OpenAI-style JSON body `{"error": {"message", "type", "param",
"code"}}` with its HTTP status (400 bad request, 404 unknown model or route, 413
body too large, 503 queue full, 504 timeout); nothing answers with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .chat_template import chat_prompt_ids, model_chat_template
from .engine import Engine, Job, ServerBusy
from .errors import CogcoreError, InputError
from .generate import encode_prompt, resolve_options

log = logging.getLogger("cogcore.server")

MAX_BODY_BYTES = 4 << 20
MAX_TOP_LOGPROBS = 20
DISCONNECT_POLL_SECONDS = 0.5
FINISH_REASON = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}
ERROR_TYPE = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error",
              405: "invalid_request_error", 503: "server_busy", 504: "timeout", 500: "server_error"}


class ApiError(Exception):
    """A request the API refuses: its HTTP status, message and the request field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None):
    body = {"message": message, "type": ERROR_TYPE.get(status, "invalid_request_error"),
            "param": param, "code": code}
    return JSONResponse({"error": body}, status_code=status)


# ---- request fields ---------------------------------------------------------------
def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(body: dict, name: str, kind: str, check=None, expected: str | None = None):
    """body[name] (None when absent or null) after checking its JSON type and `check(value)`."""
    value = body.get(name)
    if value is None:
        return None
    ok_type = {"integer": isinstance(value, int) and not isinstance(value, bool),
               "number": isinstance(value, (int, float)) and not isinstance(value, bool),
               "boolean": isinstance(value, bool),
               "string": isinstance(value, str),
               "object": isinstance(value, dict)}[kind]
    if not ok_type or (check is not None and not check(value)):
        raise ApiError(400, f"{name}: expected {expected or kind}, found {_show(value)}", param=name)
    return value


def _stop_field(body: dict):
    stop = body.get("stop")
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, f"stop: expected a non-empty string or a list of them, found {_show(stop)}",
                       param="stop")
    return stops


def sampling_options(body: dict, chat: bool) -> dict:
    """The keyword options of cogcore.generate.stream a request asks for (None: the model's default)."""
    for name in ("n", "best_of"):
        _field(body, name, "integer", lambda v: v == 1, "1 (one choice per request)")
    for name in ("presence_penalty", "frequency_penalty"):
        _field(body, name, "number", lambda v: v == 0, "0 (not supported; use repetition_penalty)")
    if not chat:
        _field(body, "echo", "boolean", lambda v: not v, "false (echo is not supported)")
        if body.get("suffix") is not None:
            raise ApiError(400, "suffix: not supported", param="suffix")
    max_tokens = _field(body, "max_tokens", "integer", lambda v: v >= 0, "an integer >= 0")
    if chat and max_tokens is None:
        max_tokens = _field(body, "max_completion_tokens", "integer", lambda v: v >= 0, "an integer >= 0")
    return dict(
        max_new_tokens=max_tokens,
        temperature=_field(body, "temperature", "number", lambda v: v >= 0, "a number >= 0 (0 = greedy)"),
        top_p=_field(body, "top_p", "number", lambda v: 0 < v <= 1, "a number in (0, 1]"),
        top_k=_field(body, "top_k", "integer", lambda v: v >= 0, "an integer >= 0 (0 = off)"),
        min_p=_field(body, "min_p", "number", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        repetition_penalty=_field(body, "repetition_penalty", "number", lambda v: v > 0, "a number > 0"),
        seed=_field(body, "seed", "integer", lambda v: v >= -1, "an integer >= 0 (-1 = unseeded)"),
        stop=_stop_field(body))


def logprobs_option(body: dict, chat: bool) -> int | None:
    """How many top alternatives each token's logprobs entry lists; None when logprobs are off."""
    in_range = (lambda v: 0 <= v <= MAX_TOP_LOGPROBS, f"an integer in 0..{MAX_TOP_LOGPROBS}")
    if not chat:                  # completions: "logprobs": k
        return _field(body, "logprobs", "integer", *in_range)
    wanted = _field(body, "logprobs", "boolean")
    top = _field(body, "top_logprobs", "integer", *in_range)
    if top is not None and not wanted:
        raise ApiError(400, "top_logprobs: needs \"logprobs\": true", param="top_logprobs")
    return (top or 0) if wanted else None


def completion_prompt_ids(model, prompt) -> list[int]:
    """A completions `prompt`: a string, a list of token ids, or a one-element list of either."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return encode_prompt(model, prompt)
    if (isinstance(prompt, list) and prompt
            and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt)):
        return list(prompt)
    raise ApiError(400, f"prompt: expected a string or a list of token ids (one prompt per request), "
                        f"found {_show(prompt)}", param="prompt")


# ---- the app --------------------------------------------------------------------
class Server:
    """The request handlers of one model, around its Engine."""

    def __init__(self, model, model_id: str | None = None, prompt_cache=None, max_queue: int = 64,
                 max_active: int = 8, timeout: float = 600.0):
        self.model = model
        self.model_id = model_id or os.path.basename(os.path.normpath(model.path or "cogcore"))
        self.created = int(time.time())
        self.template = model_chat_template(model)   # tokenizer_config.json's, or a GGUF file's
        _ = model.tokenizer                      # a model without a tokenizer fails at start, not per request
        self.engine = Engine(model, prompt_cache=prompt_cache, max_queue=max_queue,
                             max_active=max_active, timeout=timeout)

    # ---- small routes ----
    async def health(self, request: Request):
        return JSONResponse({"status": "ok", "model": self.model_id, **self.engine.counts()})

    def _card(self) -> dict:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "cogcore",
                "max_model_len": self.model.config.max_position_embeddings}

    async def models(self, request: Request):
        return JSONResponse({"object": "list", "data": [self._card()]})

    async def model_card(self, request: Request):
        name = request.path_params["name"]
        if name != self.model_id:
            return self._unknown_model(name).response()
        return JSONResponse(self._card())

    def _unknown_model(self, name) -> ApiError:
        return ApiError(404, f"model {name!r} not found; this server serves {self.model_id!r}",
                        param="model", code="model_not_found")

    # ---- generation ----
    async def completions(self, request: Request):
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: Request):
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, chat: bool):
        try:
            body = await _read_json(request)
            job, stream, include_usage = self._job(body, chat)
        except ApiError as e:
            return e.response()
        except CogcoreError as e:                 # the library's own checks: options, prompt, context
            return error_response(400, str(e))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event):                          # from the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:                  # the event loop is gone (shutting down)
                job.cancel()

        job.emit = emit
        try:
            self.engine.submit(job)
        except ServerBusy as e:
            return error_response(503, str(e))
        reply = Reply(self, job, chat)
        try:
            event = await _next_event(events, request, job)
            if stream and event[0] != "error":
                return StreamingResponse(reply.sse(event, events, include_usage), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            while event[0] == "piece":
                reply.add(event)
                event = await _next_event(events, request, job)
        except ClientGone:
            return JSONResponse({}, status_code=499)    # nobody reads it; nginx's code for "client closed"
        if event[0] == "error":
            return error_response(event[1], event[2])
        reply.add(event)
        return JSONResponse(reply.whole())

    def _job(self, body: dict, chat: bool) -> tuple[Job, bool, bool]:
        """(the Job, stream?, include_usage?) for a request body, or an ApiError / InputError."""
        name = _field(body, "model", "string")
        if name is not None and name != self.model_id:
            raise self._unknown_model(name)
        stream = bool(_field(body, "stream", "boolean"))
        stream_options = _field(body, "stream_options", "object") or {}
        include_usage = bool(_field(stream_options, "include_usage", "boolean"))
        top_logprobs = logprobs_option(body, chat)
        options = sampling_options(body, chat)
        resolve_options(self.model, **options)   # the library's own range checks, now rather than later
        if chat:
            if "messages" not in body:
                raise ApiError(400, "messages: required", param="messages")
            try:
                ids, shared = chat_prompt_ids(self.model, body["messages"], self.template)
            except InputError as e:
                raise ApiError(400, str(e), param="messages") from None
        else:
            if "prompt" not in body:
                raise ApiError(400, "prompt: required", param="prompt")
            ids, shared = completion_prompt_ids(self.model, body["prompt"]), 0
        limit = self.model.config.max_position_embeddings
        if len(ids) > limit:
            raise ApiError(400, f"{'messages' if chat else 'prompt'}: {len(ids)} tokens exceed the "
                                f"context of {limit} tokens", param="messages" if chat else "prompt",
                           code="context_length_exceeded")
        self.model.check_tokens(ids)             # ids out of the vocabulary: InputError now, not later
        job = Job(ids, options, emit=None, top_logprobs=top_logprobs, shared_prefix=shared)
        return job, stream, include_usage


class ClientGone(Exception):
    """The client closed the connection while its request was being served."""


async def _next_event(events: asyncio.Queue, request: Request, job: Job):
    """The job's next event; the job is cancelled if the client disconnects meanwhile."""
    getter = asyncio.ensure_future(events.get())
    try:
        while True:
            done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return getter.result()
            if await request.is_disconnected():
                job.cancel()
                raise ClientGone()
    finally:
        if not getter.done():
            getter.cancel()


async def _read_json(request: Request) -> dict:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body: expected at most {MAX_BODY_BYTES} bytes, found {declared}")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body: expected at most {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body: expected JSON, found a parse error ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body: expected a JSON object, found {type(body).__name__}")
    return body


class Reply:
    """Turns one job's events into OpenAI completion / chat.completion objects and chunks."""

    def __init__(self, server: Server, job: Job, chat: bool):
        self.server, self.job, self.chat = server, job, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.text, self.logprobs, self.result = "", [], None
        self.tokenizer = server.model.tokenizer

    def add(self, event) -> None:
        if event[0] == "piece":
            self.text += event[1]
        else:
            self.result = event[1]
        self.logprobs += event[2]

    def _object(self, choice: dict, chunk: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.server.model_id,
                "choices": [{"index": 0, **choice}]}

    def usage(self) -> dict:
        prompt, completion = len(self.result.prompt_ids), len(self.result.token_ids)
        cached = getattr(self.result, "cached_tokens", 0)     # restored from the prompt cache (branch pcache)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached}}

    def whole(self) -> dict:
        finish = FINISH_REASON[self.result.finish_reason]
        if self.chat:
            choice = {"message": {"role": "assistant", "content": self.text}}
        else:
            choice = {"text": self.text}
        out = self._object({**choice, "logprobs": self._logprobs(self.logprobs, 0),
                            "finish_reason": finish}, chunk=False)
        out["usage"] = self.usage()
        return out

    def chunk(self, text: str, logprobs: list, finish: str | None, first: bool, offset: int) -> dict:
        if self.chat:
            delta = ({"role": "assistant"} if first else {}) | ({"content": text} if text or first else {})
            choice = {"delta": delta}
        else:
            choice = {"text": text}
        return self._object({**choice, "logprobs": self._logprobs(logprobs, offset),
                             "finish_reason": finish}, chunk=True)

    async def sse(self, first, events: asyncio.Queue, include_usage: bool):
        """Server-sent events for a streamed reply; the job is cancelled if the client goes away."""
        job, event, is_first = self.job, first, True
        try:
            while event[0] == "piece":
                yield _sse(self.chunk(event[1], event[2], None, is_first, len(self.text)))
                self.add(event)
                is_first = False
                event = await events.get()
            if event[0] == "error":
                body = {"message": event[2], "type": ERROR_TYPE.get(event[1], "server_error"),
                        "param": None, "code": event[1]}
                yield _sse({"error": body})
            else:
                self.add(event)
                final = self.chunk("", event[2], FINISH_REASON[self.result.finish_reason], is_first,
                                   len(self.text))
                yield _sse(final)
                if include_usage:
                    yield _sse({**self._object({}, chunk=True), "choices": [], "usage": self.usage()})
            yield "data: [DONE]\n\n"
        finally:                                  # also when the client disconnects (cancellation)
            job.cancel()

    def _logprobs(self, entries: list, offset: int):
        """OpenAI's logprobs object for some TokenLogprob entries (None when not asked for)."""
        if self.job.top_logprobs is None:
            return None
        if self.chat:
            return {"content": [{**self._token(e.token_id, e.logprob),
                                 "top_logprobs": [self._token(i, lp) for i, lp in e.top]}
                                for e in entries]}
        tokens = [self._token(e.token_id, e.logprob)["token"] for e in entries]
        offsets, at = [], offset
        for t in tokens:
            offsets.append(at)
            at += len(t)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{self._token(i, lp)["token"]: lp for i, lp in e.top} for e in entries],
                "text_offset": offsets}

    def _token(self, token_id: int, logprob: float) -> dict:
        raw = self.tokenizer.piece_bytes(token_id)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _http_error(request: Request, exc: HTTPException):
    return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")


async def _internal_error(request: Request, exc: Exception):
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}")


def create_app(model, model_id: str | None = None, prompt_cache=None, max_queue: int = 64,
               max_active: int = 8, timeout: float = 600.0) -> Starlette:
    """The Starlette app serving `model` (its Engine's worker thread starts now, stops at shutdown)."""
    server = Server(model, model_id, prompt_cache, max_queue, max_active, timeout)
    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/models/{name:path}", server.model_card, methods=["GET"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.engine.close()

    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _internal_error},
                    lifespan=lifespan)
    app.state.server = server
    return app


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1", start_seconds: float = 30.0):
    """Serve `app` with uvicorn in a thread on a free port of `host`; yields its base URL
    ("http://127.0.0.1:PORT"). For tests and the benchmark; `cogcore serve` runs uvicorn itself."""
    import uvicorn
    sock = socket.socket()
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_seconds
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        if not server.started:
            raise CogcoreError(f"serving: uvicorn did not start within {start_seconds:g} s")
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
