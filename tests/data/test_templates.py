"""Templates: labels derived from the template, answer tokens exactly supervised, bad samples skipped."""

import pytest

from cotune.data.schema import Message, Sample, SkipSample
from cotune.data.templates import IGNORE_INDEX, MediaSlot, encode_sample, resolve_template
from cotune.testing import tiny
from cotune.testing.tiny import CHATML

IMAGE_ID, AUDIO_ID = 301, 302


def tokenizer(chat: bool):
    tok = tiny.make_tokenizer()
    tok.add_tokens(["<image>", "<audio>"], special_tokens=True)
    if chat:
        tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
        tok.chat_template = CHATML
    return tok


def slots(tok, image_tokens=3, audio_tokens=2):
    return {
        "image": MediaSlot("image", "<image>", (tok.convert_tokens_to_ids("<image>"),) * image_tokens),
        "audio": MediaSlot("audio", "<audio>", (tok.convert_tokens_to_ids("<audio>"),) * audio_tokens),
    }


def supervised_text(tok, encoded):
    return tok.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])


def sample(*turns, media=None, sid="s1"):
    roles = ["user", "assistant"] * len(turns)
    return Sample(sid, [Message(r, t) for r, t in zip(roles, turns)], media or {})


def test_lavin_template_supervises_exactly_answer_and_eos():
    tok = tokenizer(chat=False)
    assert resolve_template("auto", tok) == "lavin"
    encoded = encode_sample(sample("what colour is the circle", "red"), tok, slots(tok), "lavin", None, 512)
    assert supervised_text(tok, encoded) == "red" + tok.eos_token
    assert encoded.input_ids[0] == tok.bos_token_id
    assert tok.decode(encoded.input_ids[1:]).startswith("Image: N/A" + "what colour")
    assert encoded.labels[-1] == tok.eos_token_id


def test_lavin_template_places_media_in_the_header():
    tok = tokenizer(chat=False)
    s = sample("<image>\nwhat shape", "a circle", media={"image": ["x.png"]})
    encoded = encode_sample(s, tok, slots(tok), "lavin", None, 512)
    image_id = tok.convert_tokens_to_ids("<image>")
    assert encoded.input_ids.count(image_id) == 3
    prefix = tok("Image: ", add_special_tokens=False).input_ids
    assert encoded.input_ids[1 : 1 + len(prefix)] == prefix
    assert encoded.input_ids[1 + len(prefix) : 4 + len(prefix)] == [image_id] * 3
    assert "<image>" not in tok.decode(encoded.input_ids[4 + len(prefix) :])  # marker moved to the header
    assert supervised_text(tok, encoded) == "a circle" + tok.eos_token


def test_chat_template_supervises_every_assistant_turn():
    tok = tokenizer(chat=True)
    assert resolve_template("auto", tok) == "chat"
    s = sample("<image>\nwhat shape", "a circle", "and the colour", "red", media={"image": ["x.png"]})
    encoded = encode_sample(s, tok, slots(tok, image_tokens=4), "chat", "be brief", 512)
    assert supervised_text(tok, encoded) == "a circle<|im_end|>red<|im_end|>"
    image_id = tok.convert_tokens_to_ids("<image>")
    assert encoded.input_ids.count(image_id) == 4
    assert all(label == IGNORE_INDEX for t, label in zip(encoded.input_ids, encoded.labels) if t == image_id)
    text = tok.decode(encoded.input_ids)
    assert text.startswith("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n<image>")


def test_missing_markers_are_added_before_the_first_user_turn():
    tok = tokenizer(chat=True)
    s = sample("is it loud", "yes", media={"audio": ["a.wav"]})
    encoded = encode_sample(s, tok, slots(tok), "chat", None, 512)
    audio_id = tok.convert_tokens_to_ids("<audio>")
    first = encoded.input_ids.index(audio_id)
    assert encoded.input_ids[first : first + 2] == [audio_id, audio_id]
    assert tok.decode(encoded.input_ids[:first]) == "<|im_start|>user\n"


@pytest.mark.parametrize(
    "case, reason",
    [
        (sample("<image> <image> two", "x", media={"image": ["a.png"]}), "marker_mismatch"),
        (sample("<audio> what", "x"), "marker_mismatch"),
        (sample("q", "   "), "empty_answer"),
        (Sample("s1", [Message("user", "only a question")]), "malformed_record"),
        (sample("q", "a", media={"video": ["v.mp4"]}), "unsupported_media"),
        (sample(("the " * 40).strip(), "red"), "too_long"),
    ],
)
@pytest.mark.parametrize("template", ["chat", "lavin"])
def test_bad_samples_are_skipped_with_a_reason(case, reason, template):
    tok = tokenizer(chat=True)
    with pytest.raises(SkipSample) as skip:
        encode_sample(case, tok, slots(tok), template, None, 32)
    assert skip.value.reason == reason
    assert "s1" in skip.value.detail


def test_template_that_loses_the_answer_is_never_trained_silently():
    tok = tokenizer(chat=True)
    tok.chat_template = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}\n{% endif %}{% endfor %}"
    with pytest.raises(SkipSample) as skip:
        encode_sample(sample("what", "red"), tok, slots(tok), "chat", None, 512)
    assert skip.value.reason == "no_supervised_tokens"


def test_template_whose_prefixes_disagree_is_a_mismatch():
    tok = tokenizer(chat=True)
    # Renders the generation prompt differently from how it renders the assistant turn itself.
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
    )
    with pytest.raises(SkipSample) as skip:
        encode_sample(sample("what", "red"), tok, slots(tok), "chat", None, 512)
    assert skip.value.reason == "template_mismatch"


def test_chat_template_required_when_asked_for():
    with pytest.raises(ValueError, match="no chat template"):
        resolve_template("chat", tokenizer(chat=False))
