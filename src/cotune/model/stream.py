"""The answer as it is generated: decoded text, stop strings, and the pieces safe to show.

:class:`AnswerStream` is a transformers streamer (``generate(..., streamer=...)``), used by
``cotune chat`` (pieces written to the terminal) and ``cotune serve`` (pieces sent as events). It
re-decodes the answer from its first token at every step, so multi-token characters come out whole. It also ends the answer at the first stop string (OpenAI semantics:
the stop string is not part of the answer) and only releases text that cannot change any more:
not an incomplete character, not the start of a stop string, not trailing whitespace. The pieces
it releases therefore always join to the final answer, which equals ``cotune predict``'s decoding
(up to the first stop id, special tokens dropped, stripped). The stop ids default to EOS; callers
pass the template's (:func:`cotune.data.turn_end.stop_ids`: EOS and the chat template's end-of-turn
token), so an answer ends where training ended it. :class:`StopWhenDone` ends generation once a stop
string was seen or the request was cancelled. Nothing here has parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer


class AnswerStream(BaseStreamer):
    """Collects generated ids; calls ``on_text(piece)`` with each new piece of settled text."""

    def __init__(self, tokenizer, stop: Sequence[str] = (), on_text: Callable[[str], None] | None = None,
                 stop_ids: Sequence[int] | None = None) -> None:
        self.tokenizer, self.stop, self.on_text = tokenizer, tuple(stop), on_text
        self.stop_ids = tuple(stop_ids) if stop_ids is not None else (tokenizer.eos_token_id,)
        self.ids: list[int] = []
        self.sent = ""
        self.text = ""
        self.stopped = False  # a stop string or a stop id (EOS, end of turn) was generated
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
        """Whether a stop id (EOS or the template's end of turn) ended the answer."""
        return any(stop in self.ids for stop in self.stop_ids)

    def _update(self, final: bool) -> None:
        ids = self.ids
        end = min((ids.index(stop) for stop in self.stop_ids if stop in ids), default=None)
        if end is not None:
            ids, self.stopped = ids[:end], True
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
