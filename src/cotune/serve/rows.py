"""What the serving worker keeps per request: the job a handler submitted, its answer, and the row
it occupies in a generation batch (answer stream, token count, its own sampling generator).

Events reach the request's handler through its *sink* (:func:`send`); a handler that went away
never stops the worker. Nothing here has parameters.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from cotune.model.stream import AnswerStream
from cotune.serve.prepare import GenerationRequest

log = logging.getLogger(__name__)

Sink = Callable[[tuple[str, object]], None]


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

    def start(self) -> bool:
        """Marks the job started; False (and nothing changes) if it was cancelled first."""
        with self._lock:
            if self._cancelled:
                return False
            self.started = time.monotonic()
            return True


class Row:
    """One job inside a batch: its answer stream, tokens so far, sampling generator, state."""

    def __init__(self, job: Job, tokenizer, device: torch.device, stop_ids: Sequence[int] | None = None) -> None:
        self.job, self.request = job, job.request
        self.stream = AnswerStream(tokenizer, self.request.stop, lambda piece: send(job, ("text", piece)), stop_ids)
        self.stream.put(torch.empty(1, 0, dtype=torch.long))  # the (empty) prompt, as generate would push it
        self.count = 0
        self.done = False
        self.generator = None
        if self.request.temperature > 0:
            seed = self.request.seed if self.request.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)


class RowSampler(LogitsProcessor):
    """Per row with temperature > 0: temperature, then top-p (as transformers' warpers), then a
    draw from the row's generator; the row's scores become 0 at the drawn token and -inf elsewhere,
    so the greedy step of generate picks it. Greedy rows pass unchanged."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for i, row in enumerate(self.rows):
            if row.generator is None or row.done:
                continue
            # A tiny temperature (1e-40 is a valid request) would overflow every logit to +-inf and
            # softmax would give NaN, which multinomial refuses: the top logit is shifted to 0 first
            # (no probability changes) so the others go to -inf, and the temperature is kept at least
            # the dtype's smallest normal number so the top one stays 0 (0 / 0 is NaN). Both leave
            # the draw one-hot at the top token, the limit of sampling as the temperature goes to 0.
            logits = scores[i : i + 1]
            temperature = max(row.request.temperature, torch.finfo(logits.dtype).tiny)
            logits = (logits - logits.max()) / temperature
            if row.request.top_p < 1.0:
                ordered, order = torch.sort(logits, descending=False)
                outside = ordered.softmax(dim=-1).cumsum(dim=-1) <= (1 - row.request.top_p)
                outside[..., -1:] = False  # keep at least one token
                logits = logits.masked_fill(outside.scatter(1, order, outside), -float("inf"))
            token = torch.multinomial(logits.softmax(dim=-1), 1, generator=row.generator)[0, 0]
            scores[i] = -float("inf")
            scores[i, token] = 0.0
        return scores


def send(job: Job, event: tuple[str, object]) -> None:
    try:
        job.sink(event)
    except Exception:  # noqa: BLE001 - a handler that went away must not stop the worker
        log.debug("dropped an event for a request that is gone", exc_info=True)
