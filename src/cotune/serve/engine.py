"""The model worker: one thread owns the model and generates for waiting requests in batches.

HTTP handlers never touch the model. They :meth:`Engine.submit` a
:class:`~cotune.serve.prepare.GenerationRequest` with a *sink*, a callable the worker feeds with
events: ``("start", None)`` when the request reaches the model, ``("text", piece)`` for each settled
piece of the answer, then ``("done", Answer)`` or ``("error", message)`` (:data:`SHUTTING_DOWN`
when the server stops before answering). A full queue refuses at once (:class:`EngineBusy`); a
request that waited too long is cancelled by its handler (:meth:`Job.cancel`) and skipped, or
stopped at its next token if it had just started.

**Dynamic batching.** Whenever the model is free, the worker takes every waiting request, up to
``max_batch``, and generates for all of them in one :func:`cotune.model.generate.generate` call:
prompts left-padded, media stacked per encoder in row order. Routing weights depend only on a row's
modality row (text, image, audio, image+audio) in eval mode: they are computed once per modality
row and cached for the server's life, then held for the prefill and every step. Each row stops on
its own (EOS, its stop strings, its ``max_tokens``, its client leaving) and is answered at once;
the call ends when every row has. Requests arriving meanwhile wait for the next batch. When the
queue is empty but requests are still being read and prepared (:meth:`Engine.expecting`), the
worker waits for them up to a quarter of the previous batch's duration (0.5 s at most), so that
clients answered by one batch are not split across the next two; a lone client never waits.

A model with a learned table of absolute positions (GPT-2, OPT; :func:`position_limit`) cannot embed
past its end: a request whose prompt plus ``max_tokens`` exceed it is refused at submit
(:class:`ContextTooLong`), and a request joins a batch only if the batch's padded width plus its
longest ``max_tokens`` still fit (every row is fed until the last ends); one that does not waits,
first in line, for the next batch.

Greedy rows give the answer they give alone (``cotune predict`` batches with left padding the same
way); padding only changes which floating-point sums the kernels form, and the tests check the
answers are equal.

Sampling is per row: temperature and top-p are applied to the row's logits and a token drawn with
the row's own generator, seeded from the request's ``seed`` (random when none), so the same seed
gives the same answer whatever else is in the batch or ran before, and the process's global
generator is never used. Temperature 0 is greedy decoding, as ``cotune predict``. Nothing here has
parameters; the model is used in eval mode and never changed.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from cotune.model.generate import generate, left_pad
from cotune.serve.prepare import GenerationRequest
from cotune.serve.rows import Answer, Job, Row, RowSampler, Sink, send

log = logging.getLogger(__name__)

#: The error every request the server cannot answer any more gets when it stops.
SHUTTING_DOWN = "the server is shutting down"


class EngineBusy(Exception):
    """The queue is full (or the engine stopped); the message says so."""


class ShuttingDown(EngineBusy):
    """The engine is stopping and takes no new requests."""


class Unroutable(ValueError):
    """The request's inputs form a modality combination the model has no routing row for."""


class ContextTooLong(ValueError):
    """The request's prompt plus its ``max_tokens`` need more positions than the model can embed."""


#: Last names of the modules that hold a table of learned absolute positions (GPT-2 and GPT-Neo's
#: ``wpe``, OPT and BioGPT's ``embed_positions``).
POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")


def position_limit(llm) -> int | None:
    """The most positions ``llm`` can embed when it learns a table of absolute positions, from its
    config (``n_positions`` / ``max_position_embeddings``; OPT's table holds 2 more rows than it
    uses); None for rotary and ALiBi models, which run past their trained length without failing.
    Indexing such a table past its end raises inside ``generate``, which would fail every row of
    the batch: the engine refuses those requests before they are batched."""
    config = llm.config.get_text_config() if hasattr(llm.config, "get_text_config") else llm.config
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit < 1:
        return None
    tokens = llm.get_input_embeddings()
    for name, module in llm.named_modules():
        if isinstance(module, torch.nn.Embedding) and module is not tokens and name.rsplit(".", 1)[-1] in POSITION_TABLES:
            return limit
    return None


#: Longest the worker waits for requests still being prepared before it starts a batch.
MAX_GATHER_SECONDS = 0.5


class _RowsDone(StoppingCriteria):
    """After each step: feeds every running row its new token, answers the rows that finished, and
    tells generate which rows are done (per row: EOS or a stop string, its max_tokens, its client
    gone, or the server's shutdown deadline passed)."""

    def __init__(self, engine: "Engine", rows: list[Row]) -> None:
        self.engine, self.rows = engine, rows

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tokens = input_ids[:, -1].tolist()
        aborting = self.engine._past_deadline()
        for row, token in zip(self.rows, tokens):
            if row.done:
                continue
            if aborting:
                self.engine._end_row(row, error=SHUTTING_DOWN)
                continue
            if row.job.cancelled:
                self.engine._end_row(row, cancelled=True)
                continue
            row.count += 1
            row.stream.put(torch.tensor([token]))
            if row.stream.stopped or row.count >= row.request.max_tokens:
                self.engine._end_row(row)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


class Engine:
    """Owns ``model`` in a worker thread; ``max_queue`` requests may wait for it, and up to
    ``max_batch`` are generated together. ``stop_ids`` end an answer (default: EOS; the service
    passes the template's, :func:`cotune.data.turn_end.stop_ids`)."""

    def __init__(self, model, tokenizer, max_queue: int = 64, max_batch: int = 8, stop_ids: Sequence[int] | None = None) -> None:
        self.model, self.tokenizer, self.max_queue, self.max_batch = model, tokenizer, max_queue, max_batch
        self.stop_ids = stop_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._held: list[Job] = []  # taken from the queue, left out of a batch they did not fit (under _count_lock)
        self._model_lock = threading.Lock()  # held while a batch runs, and by hold()
        self._thread: threading.Thread | None = None
        self._count_lock = threading.Lock()
        self._waiting = 0  # submitted, not yet started or skipped
        self._closing = False
        self._deadline: float | None = None
        self._rows: list[Row] = []
        self._expected = 0  # requests being read or prepared that will be submitted
        self._last_batch_seconds = 0.0
        self._routing: dict[int, torch.Tensor] = {}  # modality row -> routing weights [L, 1, E]
        self.completed = 0  # requests answered
        self.cancelled = 0  # requests stopped while generating because their client left
        self.batches = 0  # generate calls
        self.largest_batch = 0
        self.routings_computed = 0  # compute_routing calls: one per modality row served, ever
        self.positions = position_limit(model.llm)  # None: no limit on prompt + max_tokens

    def start(self) -> None:
        if self._thread is None:
            self._closing, self._deadline = False, None
            self._thread = threading.Thread(target=self._work, name="cotune-serve-engine", daemon=True)
            self._thread.start()

    def close(self, grace: float) -> None:
        """Begins stopping, without waiting: new requests are refused (:class:`ShuttingDown`),
        waiting ones get :data:`SHUTTING_DOWN` at once, and the running batch may go on for
        ``grace`` seconds before its unfinished rows get it too. Idempotent (the first deadline holds)."""
        with self._count_lock:
            first = not self._closing
            self._closing = True
        if first:
            self._deadline = time.monotonic() + grace
            self._drop_waiting()
            self._drop_held()
            self._queue.put(None)

    def stop(self, timeout: float = 30.0) -> None:
        """Closes (running rows get ``timeout`` seconds to finish) and waits for the worker to end."""
        if self._thread is None:
            return
        self.close(timeout)
        self._thread.join(timeout + 5)
        self._drop_waiting()
        self._drop_held()
        self._thread = None

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def waiting(self) -> int:
        """Jobs submitted and not yet started (the running ones not counted)."""
        return self._waiting

    @property
    def running(self) -> int:
        """Rows of the running batch that are still generating."""
        return sum(not row.done for row in list(self._rows))

    @property
    def busy(self) -> bool:
        return self._model_lock.locked()

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Marks a request being prepared for :meth:`submit` (the worker may wait for it to join a batch)."""
        with self._count_lock:
            self._expected += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._expected -= 1

    def submit(self, request: GenerationRequest, sink: Sink) -> Job:
        """Queues ``request``; raises EngineBusy when ``max_queue`` jobs are already waiting,
        ShuttingDown once the engine is closing, Unroutable for inputs the model cannot route,
        ContextTooLong when the prompt plus ``max_tokens`` exceed :attr:`positions`."""
        if self._thread is None:
            raise EngineBusy("the model worker is not running")
        prompt, total = len(request.prompt_ids), len(request.prompt_ids) + request.max_tokens
        if self.positions is not None and total > self.positions:
            raise ContextTooLong(f"this model's maximum context length is {self.positions} tokens; the request needs {total} "
                                 f"({prompt} in the messages, {request.max_tokens} in the answer): lower max_tokens or "
                                 "shorten the messages")
        if request.modality_row is None and self.model.routing_state is not None:
            request.modality_row = self._modality_row(request.prompt_ids)
        with self._count_lock:
            if self._closing:
                raise ShuttingDown(SHUTTING_DOWN)
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
        """Keeps the worker from starting new batches while inside (maintenance; tests of queue
        timeouts and of batching: requests submitted meanwhile form the next batch)."""
        with self._model_lock:
            yield

    # ------------------------------------------------------------------ worker
    def _drop_waiting(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._refuse(job)

    def _refuse(self, job: Job) -> None:
        """A waiting job the server will not run: it gets :data:`SHUTTING_DOWN`."""
        with self._count_lock:
            self._waiting -= 1
        job.cancel()
        send(job, ("error", SHUTTING_DOWN))

    def _drop_held(self) -> None:
        """Refuses the jobs held back from earlier batches."""
        with self._count_lock:
            held, self._held = self._held, []
        for job in held:
            self._refuse(job)

    def _pop_held(self) -> Job | None:
        with self._count_lock:
            return self._held.pop(0) if self._held else None

    def _fits(self, width: int, steps: int, job: Job) -> bool:
        """Whether ``job`` can join a batch of prompts ``width`` tokens wide (left-padded) that runs
        up to ``steps`` steps: every row is fed until the last one ends, so with a table of absolute
        positions the padded width plus the longest ``max_tokens`` must fit it."""
        if self.positions is None:
            return True
        request = job.request
        return max(width, len(request.prompt_ids)) + max(steps, request.max_tokens) <= self.positions

    def _work(self) -> None:
        while True:
            first = self._pop_held() or self._queue.get()
            if first is None:
                self._drop_held()
                return
            with self._model_lock:  # counted as waiting until the model is free (hold() keeps it so)
                with self._count_lock:
                    self._waiting -= 1
                jobs, passed, stop = [first], [], False
                width, steps = len(first.request.prompt_ids), first.request.max_tokens
                gather_until = time.monotonic() + min(self._last_batch_seconds / 4, MAX_GATHER_SECONDS)
                while len(jobs) < self.max_batch:
                    job = self._pop_held()
                    if job is None:
                        try:
                            job = self._queue.get_nowait()
                        except queue.Empty:
                            left = gather_until - time.monotonic()
                            if self._expected <= 0 or left <= 0:
                                break
                            try:  # more requests are being prepared: wait a little for them
                                job = self._queue.get(timeout=left)
                            except queue.Empty:
                                break
                    if job is None:
                        stop = True
                        break
                    if not self._fits(width, steps, job):
                        passed.append(job)  # still waiting: first in line for the next batch
                        continue
                    with self._count_lock:
                        self._waiting -= 1
                    jobs.append(job)
                    width, steps = max(width, len(job.request.prompt_ids)), max(steps, job.request.max_tokens)
                with self._count_lock:
                    self._held[:0] = passed
                if self._closing:
                    for job in jobs:
                        job.cancel()
                        send(job, ("error", SHUTTING_DOWN))
                    self._drop_held()
                    return
                started = [job for job in jobs if job.start()]
                if started:
                    self._run_batch(started)
            if stop:
                self._drop_held()
                return

    def _modality_row(self, prompt_ids: list[int]) -> int:
        from cotune.model.splice import SpliceError

        try:
            return int(self.model.modality_index(torch.tensor([prompt_ids]))[0])
        except SpliceError as err:
            raise Unroutable(str(err).replace("a sample holds", "the request holds", 1)) from None

    def _routing_of(self, rows: list[Row]) -> torch.Tensor | None:
        """Routing weights [L, B, E] of the rows, from the cache (computed once per modality row)."""
        if self.model.routing_state is None:
            return None
        device = self.model.llm.get_input_embeddings().weight.device
        for row in rows:
            index = row.request.modality_row
            if index not in self._routing:
                with torch.no_grad():
                    self._routing[index] = self.model.compute_routing(torch.tensor([index], device=device))
                self.routings_computed += 1
        return torch.cat([self._routing[row.request.modality_row] for row in rows], dim=1)

    def _run_batch(self, jobs: list[Job]) -> None:
        device = self.model.llm.get_input_embeddings().weight.device
        started = time.monotonic()
        rows = [Row(job, self.tokenizer, device, self.stop_ids) for job in jobs]
        self._rows = rows
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(rows))
        for row in rows:
            send(row.job, ("start", None))
        try:
            ids, mask = left_pad([row.request.prompt_ids for row in rows], self.pad_id)
            media: dict[str, list[torch.Tensor]] = {}
            for row in rows:
                for name, tensor in row.request.media.items():
                    media.setdefault(name, []).append(tensor)
            stacked = {name: torch.cat(tensors) for name, tensors in media.items()}
            processors = LogitsProcessorList([RowSampler(rows)] if any(row.generator is not None for row in rows) else [])
            generate(self.model, ids, mask, media=stacked or None, max_new_tokens=max(row.request.max_tokens for row in rows),
                     routing=self._routing_of(rows), do_sample=False, logits_processor=processors,
                     stopping_criteria=StoppingCriteriaList([_RowsDone(self, rows)]))
        except Exception as err:  # noqa: BLE001 - one bad batch must not end the worker
            log.exception("generation failed")
            for row in rows:
                if not row.done:
                    self._end_row(row, error=f"generation failed: {type(err).__name__}: {err}")
        for row in rows:  # generate ended without a step that finished them (cannot happen; defensive)
            if not row.done:
                self._end_row(row)
        self._rows = []
        self._last_batch_seconds = time.monotonic() - started

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def _end_row(self, row: Row, error: str | None = None, cancelled: bool = False) -> None:
        row.done = True
        if cancelled:
            self.cancelled += 1
            return
        if error is not None:
            send(row.job, ("error", error))
            return
        row.stream.end()
        finish = "stop" if row.stream.stopped else "length"
        self.completed += 1
        send(row.job, ("done", Answer(row.stream.text, len(row.request.prompt_ids), len(row.stream.ids), finish)))
