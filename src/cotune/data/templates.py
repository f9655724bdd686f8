"""Rendering a Sample into token ids and labels, with label masks derived from the template itself.

Two templates:

* ``chat``: the tokenizer's own chat template. The conversation is rendered once; for every
  assistant turn the template is also rendered up to that turn with and without it, and the text
  between the two renderings (the answer and the template's end-of-turn marker) is supervised.
  The renderings must be prefixes of each other, else the sample is skipped (never silently
  trained with a wrong mask). Tokens are mapped to characters with the tokenizer's offsets.
* ``lavin``: LaVIN's plain layout: BOS, ``Image: `` + media tokens per item (``Image: N/A`` for
  text-only samples), then per turn prompt + answer tokenized as one segment (no separator), EOS
  after each answer. Segments are tokenized separately, as the reference does, and the answer's
  tokens must follow the prompt's unchanged.

Media markers (``<image>``, ``<audio>``) become each encoder's placeholder token repeated as many
times as the encoder yields tokens per item.

For inference, :func:`encode_prompt` renders a conversation that ends with a user turn the same way,
stopping where the answer would start: exactly the ids that precede the answer in training.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cotune.data.schema import MEDIA_MARKERS, Sample, SkipSample

IGNORE_INDEX = -100


@dataclass(frozen=True)
class MediaSlot:
    """How one item of a media kind appears in the token sequence: per encoder of that kind, its
    placeholder id repeated ``tokens`` times (encoders of one kind all see every item)."""

    kind: str
    marker_token: str          # the special token string standing for one item during rendering
    expansion: tuple[int, ...]  # the ids one item expands into


@dataclass
class Encoded:
    """input_ids and labels (IGNORE_INDEX where unsupervised), same length."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def _messages(sample: Sample, system_prompt: str | None) -> list[dict]:
    messages = [{"role": m.role, "content": m.content} for m in sample.messages]
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def _check_markers(sample: Sample, messages: list[dict]) -> dict[str, int]:
    """Marker count per kind; adds missing markers in front of the first user turn."""
    counts = {}
    for kind in sample.kinds:
        marker, n_items = MEDIA_MARKERS[kind], len(sample.media[kind])
        found = sum(m["content"].count(marker) for m in messages)
        if found == 0:
            first_user = next((m for m in messages if m["role"] == "user"), None)
            if first_user is None:
                raise SkipSample("malformed_record", f"{sample.id}: no user turn to attach {kind} to")
            first_user["content"] = f"{marker}\n" * n_items + first_user["content"]
        elif found != n_items:
            raise SkipSample("marker_mismatch", f"{sample.id}: {found} {marker} markers for {n_items} {kind} items")
        counts[kind] = n_items
    for kind, marker in MEDIA_MARKERS.items():
        if kind not in counts and any(marker in m["content"] for m in messages):
            raise SkipSample("marker_mismatch", f"{sample.id}: {marker} in the text but no {kind} given")
    return counts


def _expand(ids: list[int], labels: list[int], slots: dict[str, MediaSlot], marker_ids: dict[int, str]) -> Encoded:
    out_ids, out_labels = [], []
    for token, label in zip(ids, labels):
        kind = marker_ids.get(token)
        if kind is None:
            out_ids.append(token)
            out_labels.append(label)
        else:
            out_ids.extend(slots[kind].expansion)
            out_labels.extend([IGNORE_INDEX] * len(slots[kind].expansion))
    return Encoded(out_ids, out_labels)


def _chat_messages(sample: Sample, slots: dict[str, MediaSlot], system_prompt: str | None) -> list[dict]:
    """The sample's messages for the chat template: system prompt added, media markers placed and
    replaced by the encoders' marker tokens."""
    messages = _messages(sample, system_prompt)
    _check_markers(sample, messages)
    for kind, slot in slots.items():
        for m in messages:
            m["content"] = m["content"].replace(MEDIA_MARKERS[kind], slot.marker_token)
    return messages


def _render_chat(tokenizer, sample_id: str, messages: list[dict], gen: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    except Exception as err:  # templates raise arbitrary errors (e.g. raise_exception on role order)
        raise SkipSample("malformed_record", f"{sample_id}: the chat template rejected it: {err}") from None


def _marker_ids(tokenizer, slots: dict[str, MediaSlot]) -> dict[int, str]:
    return {tokenizer.convert_tokens_to_ids(slot.marker_token): kind for kind, slot in slots.items()}


def encode_chat(sample: Sample, tokenizer, slots: dict[str, MediaSlot], system_prompt: str | None = None) -> Encoded:
    """Tokens and labels through the tokenizer's chat template (see module docstring)."""
    messages = _chat_messages(sample, slots, system_prompt)
    full = _render_chat(tokenizer, sample.id, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render_chat(tokenizer, sample.id, messages[:i], gen=True)
        through = _render_chat(tokenizer, sample.id, messages[: i + 1])
        if not (full.startswith(through) and through.startswith(before)):
            raise SkipSample("template_mismatch", f"{sample.id}: the chat template does not render turn {i} as a prefix")
        spans.append((len(before), len(through.rstrip())))
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for token, (begin, _stop) in zip(encoding["input_ids"], encoding["offset_mapping"])
    ]
    return _expand(list(encoding["input_ids"]), labels, slots, _marker_ids(tokenizer, slots))


def _strip_markers(text: str) -> str:
    for marker in MEDIA_MARKERS.values():
        text = text.replace(f"{marker}\n", "").replace(marker, "")
    return text


def _plain_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _lavin_layout(sample: Sample, tokenizer, slots: dict[str, MediaSlot], system_prompt: str | None) -> tuple[Encoded, str]:
    """The LaVIN rendering of every answered turn, and the prompt text still waiting for an answer
    ("" when the conversation ends with an assistant turn)."""
    messages = _messages(sample, None)
    counts = _check_markers(sample, messages)
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if counts:
        for kind, n_items in counts.items():
            for _ in range(n_items):
                ids += _plain_ids(tokenizer, f"{kind.capitalize()}: ") + list(slots[kind].expansion)
    else:
        first_kind = next(iter(slots), "image")
        ids += _plain_ids(tokenizer, f"{first_kind.capitalize()}: N/A")
    labels = [IGNORE_INDEX] * len(ids)
    system = next((m["content"] for m in messages if m["role"] == "system"), system_prompt)
    turns = [m for m in messages if m["role"] != "system"]
    prompt = f"{system}\n\n" if system else ""
    for message in turns:
        if message["role"] == "user":
            prompt += _strip_markers(message["content"])
            continue
        prompt_ids, joint = _plain_ids(tokenizer, prompt), _plain_ids(tokenizer, prompt + message["content"])
        if joint[: len(prompt_ids)] != prompt_ids:
            raise SkipSample("template_mismatch", f"{sample.id}: the prompt's tokens change when the answer follows it")
        answer = joint[len(prompt_ids):] + [tokenizer.eos_token_id]
        ids += joint + [tokenizer.eos_token_id]
        labels += [IGNORE_INDEX] * len(prompt_ids) + answer
        prompt = ""
    return Encoded(ids, labels), prompt


def encode_lavin(sample: Sample, tokenizer, slots: dict[str, MediaSlot], system_prompt: str | None = None) -> Encoded:
    """Tokens and labels in LaVIN's plain layout (see module docstring)."""
    return _lavin_layout(sample, tokenizer, slots, system_prompt)[0]


def resolve_template(name: str, tokenizer) -> str:
    """``auto`` -> ``chat`` when the tokenizer has a chat template, else ``lavin``."""
    if name == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "lavin"
    if name == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("data.template: 'chat' but the tokenizer has no chat template; use lavin or auto")
    return name


def _check_media(sample: Sample, slots: dict[str, MediaSlot]) -> None:
    missing = [k for k, items in sample.media.items() if items and k not in slots]
    if missing:
        raise SkipSample("unsupported_media", f"{sample.id}: has {', '.join(missing)} but the model has no encoder for it")


def encode_sample(sample: Sample, tokenizer, slots: dict[str, MediaSlot], template: str, system_prompt: str | None, max_length: int) -> Encoded:
    """Renders ``sample`` with the resolved ``template``; raises SkipSample for unusable samples."""
    _check_media(sample, slots)
    if not sample.messages or sample.messages[-1].role != "assistant":
        raise SkipSample("malformed_record", f"{sample.id}: the conversation must end with an assistant turn")
    if any(m.role == "assistant" and not m.content.strip() for m in sample.messages):
        raise SkipSample("empty_answer", f"{sample.id}: an assistant turn is empty")
    encoder = encode_chat if template == "chat" else encode_lavin
    encoded = encoder(sample, tokenizer, slots, system_prompt)
    if encoded.num_supervised == 0:
        raise SkipSample("no_supervised_tokens", f"{sample.id}: no token of the answer is supervised")
    if len(encoded.input_ids) > max_length:
        raise SkipSample("too_long", f"{sample.id}: {len(encoded.input_ids)} tokens > max_length {max_length}")
    return encoded


def encode_prompt(
    sample: Sample, tokenizer, slots: dict[str, MediaSlot], template: str, system_prompt: str | None, max_length: int | None = None,
) -> list[int]:
    """Prompt ids [T] for generating the answer to ``sample``'s last user turn.

    The conversation is rendered as :func:`encode_sample` renders it for training (same template,
    system prompt, marker placement and media expansion) and stops where the answer starts: the
    chat template's generation prompt, or LaVIN's prompt text. A final assistant turn (a reference
    answer) is left out, so for a training sample the result is exactly its ids before the first
    supervised token of the last answer. Earlier assistant turns are kept as history.

    Raises:
        SkipSample: ``unsupported_media``, ``marker_mismatch``, ``malformed_record`` (no user turn
            to answer), ``too_long`` (more than ``max_length`` ids).
    """
    messages = list(sample.messages)
    if messages and messages[-1].role == "assistant":
        messages.pop()
    if not messages or messages[-1].role != "user":
        raise SkipSample("malformed_record", f"{sample.id}: no user turn to answer at the end of the conversation")
    sample = replace(sample, messages=messages)
    _check_media(sample, slots)
    if template == "chat":
        chat = _chat_messages(sample, slots, system_prompt)
        ids = _plain_ids(tokenizer, _render_chat(tokenizer, sample.id, chat, gen=True))
        ids = _expand(ids, [IGNORE_INDEX] * len(ids), slots, _marker_ids(tokenizer, slots)).input_ids
    else:
        answered, pending = _lavin_layout(sample, tokenizer, slots, system_prompt)
        ids = answered.input_ids + _plain_ids(tokenizer, pending)
    if max_length is not None and len(ids) > max_length:
        raise SkipSample("too_long", f"{sample.id}: prompt of {len(ids)} tokens > max_length {max_length}")
    return ids
