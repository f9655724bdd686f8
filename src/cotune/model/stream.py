"""The answer as it is generated: decoded text, stop strings, and the pieces safe to show.

:class:`AnswerStream` is a transformers streamer (``generate(..., streamer=...)``), used by
``cotune chat`` (pieces written to the terminal) and ``cotune serve`` (pieces sent as events). It
re-decodes the answer from its first token at every step, so multi-token characters come out whole. It also ends the answer at the first stop string (OpenAI semantics:
the stop string is not part of the answer) and only releases text that cannot change any more:
not an incomplete character, not the start of a stop string, not trailing whitespace. The pieces
it releases therefore always join to the final answer, which equals ``cotune predict``'s decoding
(up to EOS, special tokens dropped, stripped). :class:`StopWhenDone` ends generation once a stop
string was seen or the request was cancelled. Nothing here has parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer


class AnswerStream(BaseStreamer):
    """Collects generated ids; calls ``on_text(piece)`` with each new piece of settled text."""

    def __init__(self, tokenizer, stop: Sequence[str] = (), on_text: Callable[[str], None] | None = None) -> None:
        self.tokenizer, self.stop, self.on_text = tokenizer, tuple(stop), on_text
        self.ids: list[int] = []
        self.sent = ""
        self.text = ""
        self.stopped = False  # a stop string or EOS was generated
        self._seen_prompt = False

    def put(self, value) -> None:
        if not self._seen_prompt:  # generate pushes the prompt (empty with input embeddings) first
            self._seen_prompt = True
            return
        if self.stopped:
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        self._update(final=False)

    def end(self) -> None:
        self._update(final=True)

    @property
    def hit_eos(self) -> bool:
        return self.tokenizer.eos_token_id in self.ids

    def _update(self, final: bool) -> None:
        ids = self.ids
        eos = self.tokenizer.eos_token_id
        if eos in ids:
            ids, self.stopped = ids[: ids.index(eos)], True
        text = self.tokenizer.decode(ids, skip_special_tokens=True).lstrip()
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, self.stopped = text[:cut], True
        self.text = text.rstrip() if (final or self.stopped) else text
        settled = self.text if (final or self.stopped) else _settled(text, self.stop)
        if settled.startswith(self.sent) and len(settled) > len(self.sent):
            piece, self.sent = settled[len(self.sent):], settled
            if self.on_text is not None:
                self.on_text(piece)


def _settled(text: str, stops: Sequence[str]) -> str:
    """The part of unfinished ``text`` that later tokens cannot change or cut."""
    text = text.rstrip("\ufffd")  # an incomplete multi-byte character
    for stop in stops:  # a suffix that may grow into a stop string
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                text = text[:-n]
                break
    return text.rstrip()


class StopWhenDone(StoppingCriteria):
    """Ends generation when ``stream`` has seen a stop string or ``cancelled()`` turns true."""

    def __init__(self, stream: AnswerStream, cancelled: Callable[[], bool]) -> None:
        self.stream, self.cancelled = stream, cancelled

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = self.stream.stopped or self.cancelled()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)
