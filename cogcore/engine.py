"""One model, many requests: a single worker thread that interleaves generations (docs/serving.md).

    engine = Engine(model, prompt_cache=None, max_queue=64, max_active=8, timeout=600)
    job = Job(prompt_ids, options, emit=callback)   # options: keyword options of generate.stream
    engine.submit(job)                              # ServerBusy when the queue is full
    ...                                             # callback(event) from the worker thread
    job.cancel()                                    # the client went away: stop at the next token
    engine.close()

The worker owns the model: no two forward passes ever run at once. It keeps up to
`max_active` generations open, each with its own cache, and advances them in turn
one step (one piece of text, usually one token) at a time, so a short request is
not stuck behind a long one. A job that has not started goes before the others: its
first step (the prefill and first token) is what its client is waiting for. Jobs beyond
`max_active` wait in a FIFO queue of at most `max_queue`; `submit` refuses more.
Every generation depends only on its own prompt, options and seed, never on its
neighbours, so an answer equals the same request served alone.

Events a job receives, in order: ("piece", text, logprobs) any number of times,
then exactly one of ("done", GenerationResult, logprobs) or ("error", status,
message). `logprobs` is a list of `TokenLogprob`, one per token drawn since the
last event (empty unless the job asked for them; a final EOS is never listed).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Callable

import numpy as np

from .errors import CogcoreError
from .generate import Stream

log = logging.getLogger("cogcore.engine")


class ServerBusy(CogcoreError):
    """The engine's queue is full (the server answers 503)."""


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """A drawn token's log-probability under the model (log_softmax of its raw logits, before any
    sampling filter), and the `top` most likely tokens as (id, logprob), most likely first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def token_logprob(token_id: int, logits: np.ndarray, top: int) -> TokenLogprob:
    z = np.asarray(logits, np.float64)
    z = z - z.max()
    logp = z - np.log(np.exp(z).sum())
    order = np.argsort(-logp, kind="stable")[:top]          # ties to the lower id
    return TokenLogprob(int(token_id), float(logp[token_id]),
                        tuple((int(i), float(logp[i])) for i in order))


@dataclasses.dataclass(eq=False)
class Job:
    """One generation request. `emit` is called from the worker thread; it must not block."""

    prompt_ids: list[int]
    options: dict                                  # keyword options of cogcore.generate.stream
    emit: Callable[[tuple], None]
    top_logprobs: int | None = None                # None: no logprobs; k: the sampled token + top k
    timeout: float | None = None                   # seconds from submission; None: the engine's
    shared_prefix: int = 0                         # leading prompt tokens other requests share (a system prompt)
    submitted: float = 0.0
    stream: Stream | None = None
    _cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    _logprobs: list = dataclasses.field(default_factory=list)

    def cancel(self) -> None:
        """Stop this job at its next step (safe from any thread; nothing more is emitted)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _on_token(self, token_id: int, logits: np.ndarray) -> None:
        if token_id not in self.stream.eos_ids:
            self._logprobs.append(token_logprob(token_id, logits, self.top_logprobs))

    def _take_logprobs(self) -> list[TokenLogprob]:
        taken, self._logprobs = self._logprobs, []
        return taken


class Engine:
    """The worker thread that serves jobs on one model (see the module docstring)."""

    def __init__(self, model, prompt_cache=None, max_queue: int = 64, max_active: int = 8,
                 timeout: float = 600.0):
        if max_queue < 0 or max_active < 1 or not timeout > 0:
            raise CogcoreError(f"engine: expected max_queue >= 0, max_active >= 1 and timeout > 0, "
                               f"found {max_queue}, {max_active}, {timeout}")
        self.model, self.prompt_cache = model, prompt_cache
        self.max_queue, self.max_active, self.timeout = max_queue, max_active, timeout
        self._pending: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []
        self._wake = threading.Condition()
        self._closed = False
        self.finished = self.cancelled = self.failed = 0     # jobs ended each way, for /health
        self._thread = threading.Thread(target=self._run, name="cogcore-engine", daemon=True)
        self._thread.start()

    # ---- called from request handlers -------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job, or raise ServerBusy when `max_queue` jobs already wait."""
        with self._wake:
            if self._closed:
                raise ServerBusy("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise ServerBusy(f"the queue is full ({self.max_queue} requests waiting); "
                                 f"try again later")
            job.submitted = time.monotonic()
            self._pending.append(job)
            self._wake.notify()

    def counts(self) -> dict:
        """Jobs waiting and running now; jobs finished, cancelled and failed so far."""
        with self._wake:
            return {"waiting": len(self._pending), "running": len(self._active), "finished": self.finished,
                    "cancelled": self.cancelled, "failed": self.failed}

    def close(self) -> None:
        """Stop the worker; jobs not finished get an error event."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    # ---- the worker thread --------------------------------------------------
    def _run(self) -> None:
        active = self._active
        turn = 0                                  # round-robin position among started jobs
        while True:
            with self._wake:
                while not (self._closed or self._pending or active):
                    self._wake.wait()
                if self._closed:
                    for job in [*active, *self._pending]:
                        job.emit(("error", 503, "the server is shutting down"))
                    active.clear()
                    self._pending.clear()
                    return
                while self._pending and len(active) < self.max_active:
                    active.append(self._pending.popleft())
                # a job not yet started goes first: its prefill is what its client waits for
                job = next((j for j in active if j.stream is None), None)
                if job is None:
                    turn %= len(active)
                    job = active[turn]
                    turn += 1
            if not self._step(job):
                with self._wake:
                    index = active.index(job)
                    active.pop(index)
                    turn -= index < turn

    def _step(self, job: Job) -> bool:
        """Advance one job by one piece of text; False when it has finished (or failed)."""
        if job.cancelled:
            self.cancelled += 1
            return False
        timeout = job.timeout if job.timeout is not None else self.timeout
        if time.monotonic() - job.submitted > timeout:
            return self._fail(job, 504, f"the request took longer than its timeout of {timeout:g} s")
        try:
            if job.stream is None:
                job.stream = self._start(job)
            piece = next(job.stream)
        except StopIteration:
            self.finished += 1
            job.emit(("done", job.stream.result, job._take_logprobs()))
            return False
        except CogcoreError as e:                 # bad input found while generating (ids, context)
            return self._fail(job, 400, str(e))
        except Exception as e:                    # a bug: log it here, tell the client without a traceback
            log.exception("generation failed")
            return self._fail(job, 500, f"internal error: {type(e).__name__}")
        job.emit(("piece", piece, job._take_logprobs()))
        return True

    def _fail(self, job: Job, status: int, message: str) -> bool:
        self.failed += 1
        job.emit(("error", status, message))
        return False

    def _start(self, job: Job) -> Stream:
        options = dict(job.options)
        if self.prompt_cache is not None:
            if job.shared_prefix:
                self._keep_prefix(job.prompt_ids[:job.shared_prefix])
            options["prompt_cache"] = self.prompt_cache
        on_token = job._on_token if job.top_logprobs is not None else None
        return Stream(self.model, job.prompt_ids, on_token=on_token, **options)

    def _keep_prefix(self, ids: list[int]) -> None:
        """Make the prompt cache able to restore exactly `ids`, a prefix that requests share.

        The cache restores at its checkpoints (every `snapshot_every` tokens and where an
        entry ends), so a 300-token system prompt would be restored to position 256 and
        the rest fed again by every request; an entry ending at the prefix puts a
        checkpoint right there, and the entries that continue it inherit it."""
        entry, j = self.prompt_cache.lookup(ids)
        if entry is None or entry.checkpoints[j] < len(ids):
            self.prompt_cache.prefill(ids)
