"""What the data pipeline needs from the model: tokenizer, placeholders, tokens per item, processors.

The model layer builds it (:mod:`cotune.model.data_spec`): from a live model or from a config
alone; the data pipeline only reads it and never builds a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from cotune.data.media import MediaPreprocessor
from cotune.data.templates import MediaSlot


@dataclass
class EncoderInput:
    """One encoder as seen by the data: its media kind, placeholder token and id, LLM tokens per
    item, and the preprocessor that turns a file into the encoder's input tensor."""

    name: str
    kind: str
    placeholder: str
    placeholder_id: int
    tokens: int
    preprocess: MediaPreprocessor


@dataclass
class DataSpec:
    tokenizer: object
    encoders: list[EncoderInput]
    template: str
    system_prompt: str | None
    max_length: int

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token to pad batches with")
        return pad

    def slots(self) -> dict[str, MediaSlot]:
        """Per media kind: the marker token used while rendering and the ids one item expands to."""
        slots = {}
        for kind in dict.fromkeys(e.kind for e in self.encoders):
            encoders = [e for e in self.encoders if e.kind == kind]
            expansion = tuple(i for e in encoders for i in [e.placeholder_id] * e.tokens)
            slots[kind] = MediaSlot(kind, encoders[0].placeholder, expansion)
        return slots
