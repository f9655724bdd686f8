"""The model worker: one thread owns the model and runs queued generations one at a time.

HTTP handlers never touch the model. They :meth:`Engine.submit` a
:class:`~cotune.serve.prepare.GenerationRequest` with a *sink*, a callable the worker feeds with
events: ``("start", None)`` when the request reaches the model, ``("text", piece)`` for each settled
piece of the answer, then ``("done", Answer)`` or ``("error", message)``. A full queue refuses at
once (:class:`EngineBusy`); a request that waited too long is cancelled by its handler
(:meth:`Job.cancel`) and skipped, or stopped at its next token if it had just started.

Sampling is seeded per request inside the worker (``torch.random.fork_rng``), so the same seed
gives the same answer whatever ran before, and the process's global generator is left as it was.
Temperature 0 is greedy decoding, as ``cotune predict``. Nothing here has parameters; the model is
used in eval mode and never changed.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import StoppingCriteriaList

from cotune.model.generate import generate
from cotune.serve.prepare import GenerationRequest
from cotune.model.stream import AnswerStream, StopWhenDone

log = logging.getLogger(__name__)

Sink = Callable[[tuple[str, object]], None]


class EngineBusy(Exception):
    """The queue is full (or the engine stopped); the message says so."""


@dataclass
class Answer:
    """A finished generation: the answer text, token counts and why it ended ("stop" for EOS or a
    stop string, "length" at max_tokens)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class Job:
    """One submitted request: queued, then running, then done; or cancelled before or while running."""

    def __init__(self, request: GenerationRequest, sink: Sink) -> None:
        self.request, self.sink = request, sink
        self.submitted = time.monotonic()
        self.started: float | None = None
        self._lock = threading.Lock()
        self._cancelled = False

    def cancel(self) -> None:
        """Skips the job if it has not started; stops it at its next token otherwise."""
        with self._lock:
            self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def _start(self) -> bool:
        with self._lock:
            if self._cancelled:
                return False
            self.started = time.monotonic()
            return True


class Engine:
    """Owns ``model`` in a worker thread; ``max_queue`` requests may wait for it."""

    def __init__(self, model, tokenizer, max_queue: int = 64) -> None:
        self.model, self.tokenizer, self.max_queue = model, tokenizer, max_queue
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._model_lock = threading.Lock()  # held while a job runs, and by hold()
        self._thread: threading.Thread | None = None
        self._count_lock = threading.Lock()
        self._waiting = 0  # submitted, not yet started or skipped
        self.completed = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="cotune-serve-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finishes the running job, drops the waiting ones (their sinks get an error) and ends the worker."""
        if self._thread is None:
            return
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                with self._count_lock:
                    self._waiting -= 1
                job.cancel()
                _send(job, ("error", "the server is shutting down"))
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    @property
    def waiting(self) -> int:
        """Jobs submitted and not yet started (the running one not counted)."""
        return self._waiting

    @property
    def busy(self) -> bool:
        return self._model_lock.locked()

    def submit(self, request: GenerationRequest, sink: Sink) -> Job:
        """Queues ``request``; raises EngineBusy when ``max_queue`` jobs are already waiting."""
        if self._thread is None:
            raise EngineBusy("the model worker is not running")
        with self._count_lock:
            if self._waiting >= self.max_queue:
                raise EngineBusy(f"{self._waiting} requests are already waiting for the model; try again later")
            self._waiting += 1
        job = Job(request, sink)
        self._queue.put(job)
        return job

    def run(self, request: GenerationRequest, timeout: float | None = None) -> Answer:
        """Submits ``request`` and waits for its answer (a blocking convenience for Python callers)."""
        done, box = threading.Event(), {}

        def sink(event):
            if event[0] in ("done", "error"):
                box["event"] = event
                done.set()

        job = self.submit(request, sink)
        if not done.wait(timeout):
            job.cancel()
            raise TimeoutError(f"no answer within {timeout} s")
        kind, value = box["event"]
        if kind == "error":
            raise RuntimeError(value)
        return value

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Keeps the worker from starting new jobs while inside (maintenance; tests of queue timeouts)."""
        with self._model_lock:
            yield

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._model_lock:
                with self._count_lock:
                    self._waiting -= 1
                if not job._start():
                    continue
                _send(job, ("start", None))
                try:
                    answer = self._generate(job)
                except Exception as err:  # noqa: BLE001 - one bad request must not end the worker
                    log.exception("generation failed")
                    _send(job, ("error", f"generation failed: {type(err).__name__}: {err}"))
                    continue
                self.completed += 1
                _send(job, ("done", answer))

    def _generate(self, job: Job) -> Answer:
        request = job.request
        stream = AnswerStream(self.tokenizer, request.stop, lambda piece: _send(job, ("text", piece)))
        settings = {"do_sample": False}
        if request.temperature > 0:
            settings = {"do_sample": True, "temperature": request.temperature, "top_p": request.top_p, "top_k": 0}
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        device = self.model.llm.get_input_embeddings().weight.device
        devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            generate(self.model, torch.tensor([request.prompt_ids]), media=request.media or None,
                     max_new_tokens=request.max_tokens, streamer=stream,
                     stopping_criteria=StoppingCriteriaList([StopWhenDone(stream, lambda: job.cancelled)]), **settings)
        finish = "stop" if stream.stopped else "length"
        return Answer(stream.text, len(request.prompt_ids), len(stream.ids), finish)


def _send(job: Job, event: tuple[str, object]) -> None:
    try:
        job.sink(event)
    except Exception:  # noqa: BLE001 - a handler that went away must not stop the worker
        log.debug("dropped an event for a request that is gone", exc_info=True)
