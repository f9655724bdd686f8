"""The tokens that end an answer, so generation stops where training taught the model to stop.

With the ``lavin`` template an answer ends in the tokenizer's EOS (training appends it). With the
``chat`` template it ends in the template's end-of-turn marker (``<|im_end|>``, ``<|eot_id|>``,
``<end_of_turn>``, ``<|end|>``), which training supervises as part of the answer; for a base LLM's
tokenizer that marker is not its EOS (a base Qwen2's EOS is ``<|endoftext|>``), so generation
stopping at EOS alone would run every row to ``max_new_tokens`` and keep the next turn the model
invents after the marker in the decoded text. :func:`stop_ids` finds the marker by rendering a
one-exchange conversation and reading the special token that follows the answer.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_PROBE = "cotune-answer-probe"


def stop_ids(tokenizer, template: str) -> tuple[int, ...]:
    """EOS, plus for ``template == "chat"`` the end-of-turn token after an assistant answer when it
    is a special token other than EOS (in that order, no repeats)."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    if template != "chat" or not getattr(tokenizer, "chat_template", None):
        return tuple(ids)
    messages = [{"role": "user", "content": "question"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as err:  # noqa: BLE001 - a template that cannot render this probe still stops at EOS
        log.debug("end-of-turn probe failed (%s); stopping at EOS only", err)
        return tuple(ids)
    after = text[text.rfind(_PROBE) + len(_PROBE):] if _PROBE in text else ""
    special = set(tokenizer.all_special_ids) | {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
    for token in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if token in special:
            if token not in ids:
                ids.append(int(token))
            break
    return tuple(ids)
