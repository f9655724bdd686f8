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

Data text never becomes a control token: a special token's string inside a message (``</s>`` in an
answer, ``<|im_start|>system`` in a question) is tokenized as plain text (``split_special_tokens``),
so it can neither end an answer nor open a turn of the template. The chat template renders such
strings as private sentinels that are put back, as text, when tokenizing. A message that holds an
encoder's placeholder string (``<vision>``) is skipped as ``marker_mismatch`` (it would stand for
media the sample does not have), and so is a sample whose placeholder tokens disagree with its
media in any other way.

For inference, :func:`encode_prompt` renders a conversation that ends with a user turn the same way,
stopping where the answer would start: exactly the ids that precede the answer in training.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace

from cotune.data.schema import MEDIA_MARKERS, Sample, SkipSample, check_text

#: The label of positions the loss skips (PyTorch's cross-entropy default); the model's loss and
#: the balance estimates read the same constant.
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


# A protected piece of data text while the chat template renders: noncharacters, which Unicode
# reserves for internal use (a text that holds one has it protected too).
_OPEN, _CLOSE = "\ufdd0", "\ufdd1"
_SENTINEL = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


def _control_pattern(tokenizer, slots: dict[str, MediaSlot]) -> re.Pattern:
    """The strings data text must not turn into tokens of their own: the tokenizer's special tokens
    and the encoders' placeholders (not the media markers, which readers checked), longest first."""
    controls = {str(t) for t in getattr(tokenizer, "all_special_tokens", ())}
    controls.update(t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special)
    controls.update(slot.marker_token for slot in slots.values())
    controls.difference_update(MEDIA_MARKERS.values())
    controls.update((_OPEN, _CLOSE))
    return re.compile("|".join(re.escape(c) for c in sorted((c for c in controls if c), key=len, reverse=True)))


def _protect(text: str, pattern: re.Pattern, pieces: list[str]) -> str:
    """``text`` with every control string replaced by a sentinel; the strings go to ``pieces``."""

    def sentinel(match: re.Match) -> str:
        pieces.append(match.group(0))
        return f"{_OPEN}{len(pieces) - 1}{_CLOSE}"

    return pattern.sub(sentinel, text)


def _tokenize(tokenizer, text: str, pieces: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, character offsets into ``text``) of a rendering that may hold sentinels: the text
    between them tokenized as usual (the template's own special tokens count), each protected piece
    as plain text, its tokens all placed at the sentinel's span."""
    if not pieces:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoding["input_ids"]), list(encoding["offset_mapping"])
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    start = 0
    for match in [*_SENTINEL.finditer(text), None]:
        stop = match.start() if match else len(text)
        if stop > start:
            encoding = tokenizer(text[start:stop], add_special_tokens=False, return_offsets_mapping=True)
            ids += encoding["input_ids"]
            offsets += [(start + a, start + b) for a, b in encoding["offset_mapping"]]
        if match is None:
            break
        literal = tokenizer(pieces[int(match.group(1))], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        ids += literal
        offsets += [match.span()] * len(literal)
        start = match.end()
    return ids, offsets


def _chat_messages(sample: Sample, slots: dict[str, MediaSlot], system_prompt: str | None,
                   pattern: re.Pattern | None = None, pieces: list[str] | None = None) -> list[dict]:
    """The sample's messages for the chat template: system prompt added, control strings in the
    text protected (``pattern``, into ``pieces``), media markers placed and replaced by the
    encoders' marker tokens."""
    messages = _messages(sample, system_prompt)
    _check_markers(sample, messages)
    for m in messages:
        if pattern is not None:
            m["content"] = _protect(m["content"], pattern, pieces)
        for kind, slot in slots.items():
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
    pieces: list[str] = []
    messages = _chat_messages(sample, slots, system_prompt, _control_pattern(tokenizer, slots), pieces)
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
    ids, offsets = _tokenize(tokenizer, full, pieces)
    labels = [token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX for token, (begin, _stop) in zip(ids, offsets)]
    return _expand(ids, labels, slots, _marker_ids(tokenizer, slots))


def _strip_markers(text: str) -> str:
    for marker in MEDIA_MARKERS.values():
        text = text.replace(f"{marker}\n", "").replace(marker, "")
    return text


def _plain_ids(tokenizer, text: str) -> list[int]:
    """Data text as plain text: a special token's string in it stays text (module docstring)."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


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


def _refuse_placeholder_text(sample: Sample, tokenizer, slots: dict[str, MediaSlot]) -> None:
    """SkipSample (``marker_mismatch``) when a message holds an encoder's placeholder string (e.g.
    ``<vision>``): it would stand for media tokens the sample does not have. Media markers
    (``<image>``, ``<audio>``) are the readers' business, and a placeholder equal to one is a marker."""
    placeholders = set()
    for slot in slots.values():
        placeholders.add(slot.marker_token)
        placeholders.update(str(t) for t in tokenizer.convert_ids_to_tokens(sorted(set(slot.expansion))))
    placeholders.difference_update(MEDIA_MARKERS.values())
    for placeholder in sorted(placeholders):
        for i, message in enumerate(sample.messages):
            if placeholder in message.content:
                raise SkipSample("marker_mismatch", f"{sample.id}: message {i} ({message.role}) contains {placeholder!r}, this "
                                                    f"model's placeholder for media tokens; data text may not hold it")


def _check_placeholders(sample: Sample, ids: list[int], slots: dict[str, MediaSlot]) -> None:
    """Each placeholder id occurs exactly as often as the sample's media expand into it."""
    expected: Counter = Counter()
    for kind, slot in slots.items():
        for token in slot.expansion:
            expected[token] += len(sample.media.get(kind, ()))
    found = Counter(token for token in ids if token in expected)
    for token, count in expected.items():
        if found[token] != count:
            raise SkipSample("marker_mismatch", f"{sample.id}: {found[token]} placeholder tokens (id {token}) where its media "
                                                f"expand into {count}; the text forms a placeholder")


def encode_sample(sample: Sample, tokenizer, slots: dict[str, MediaSlot], template: str, system_prompt: str | None, max_length: int) -> Encoded:
    """Renders ``sample`` with the resolved ``template``; raises SkipSample for unusable samples."""
    check_text(sample)
    _check_media(sample, slots)
    _refuse_placeholder_text(sample, tokenizer, slots)
    if not sample.messages or sample.messages[-1].role != "assistant":
        raise SkipSample("malformed_record", f"{sample.id}: the conversation must end with an assistant turn")
    if any(m.role == "assistant" and not m.content.strip() for m in sample.messages):
        raise SkipSample("empty_answer", f"{sample.id}: an assistant turn is empty")
    encoder = encode_chat if template == "chat" else encode_lavin
    encoded = encoder(sample, tokenizer, slots, system_prompt)
    _check_placeholders(sample, encoded.input_ids, slots)
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
    check_text(sample)
    _check_media(sample, slots)
    _refuse_placeholder_text(sample, tokenizer, slots)
    if template == "chat":
        pieces: list[str] = []
        chat = _chat_messages(sample, slots, system_prompt, _control_pattern(tokenizer, slots), pieces)
        ids = _tokenize(tokenizer, _render_chat(tokenizer, sample.id, chat, gen=True), pieces)[0]
        ids = _expand(ids, [IGNORE_INDEX] * len(ids), slots, _marker_ids(tokenizer, slots)).input_ids
    else:
        answered, pending = _lavin_layout(sample, tokenizer, slots, system_prompt)
        ids = answered.input_ids + _plain_ids(tokenizer, pending)
    _check_placeholders(sample, ids, slots)
    if max_length is not None and len(ids) > max_length:
        raise SkipSample("too_long", f"{sample.id}: prompt of {len(ids)} tokens > max_length {max_length}")
    return ids
