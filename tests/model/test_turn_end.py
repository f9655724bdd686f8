"""Generation stops each answer where training ends it: EOS for LaVIN's layout, the chat template's
end-of-turn token (``<|im_end|>``) when the tokenizer's EOS is another token, as a base LLM's is."""

from __future__ import annotations

import io
import shutil

import pytest
import torch

from cotune.cli.chat import ChatSession
from cotune.config import load_config
from cotune.data.report import DatasetReport
from cotune.data.schema import Message, Sample
from cotune.data.templates import encode_prompt
from cotune.data.turn_end import stop_ids
from cotune.eval.generation import decode, predict_samples
from cotune.model import build_model
from cotune.model.data_spec import data_spec_from_model
from cotune.model.generate import generate
from cotune.model.stream import AnswerStream
from cotune.serve.engine import Engine
from cotune.serve.prepare import GenerationRequest
from cotune.testing import tiny
from cotune.testing.tiny import CHATML


def chat_tokenizer():
    tok = tiny.make_tokenizer()
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tok.chat_template = CHATML
    return tok


def test_stop_ids_add_the_end_of_turn_token_only_where_it_is_not_eos():
    tok = chat_tokenizer()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_ids(tok, "chat") == (tok.eos_token_id, im_end)
    assert stop_ids(tok, "lavin") == (tok.eos_token_id,)  # LaVIN's layout ends answers in EOS
    llama3 = chat_tokenizer()
    llama3.chat_template = "{% for m in messages %}{{ m['content'] }}</s>{% endfor %}"  # the turn ends in EOS itself
    assert stop_ids(llama3, "chat") == (llama3.eos_token_id,)
    plain = chat_tokenizer()
    plain.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"  # no special marker
    assert stop_ids(plain, "chat") == (plain.eos_token_id,)


def test_decode_cuts_at_the_first_stop():
    tok = chat_tokenizer()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    answer = tok("red circle", add_special_tokens=False)["input_ids"]
    tail = tok("user: more", add_special_tokens=False)["input_ids"]
    row = torch.tensor(answer + [im_end] + tail + [tok.eos_token_id])
    assert decode(tok, row, stop_ids(tok, "chat")) == "red circle"
    assert decode(tok, row) == tok.decode(answer + [im_end] + tail, skip_special_tokens=True).strip()  # EOS only: the invented turn stays
    # The streamed answer of serve and chat ends at the same place.
    stream = AnswerStream(tok, stop_ids=stop_ids(tok, "chat"))
    stream.put(torch.empty(1, 0, dtype=torch.long))
    for token in row.tolist():
        stream.put(torch.tensor([token]))
    stream.end()
    assert stream.text == "red circle" and stream.stopped and stream.hit_eos


@pytest.fixture(scope="module")
def eot_model(tiny_root, tmp_path_factory):
    """A tiny text-only LLaMA whose tokenizer has a ChatML template and an EOS (</s>) that is not
    <|im_end|>, its LM head set so that <|im_end|> is the greedy first answer token: that row along
    the question's last hidden state, every lower id against it (ties go to the lowest id)."""
    path = tmp_path_factory.mktemp("chat-llm") / "llm"
    shutil.copytree(tiny.save_llm(tiny_root), path)
    chat_tokenizer().save_pretrained(path)
    config = load_config(data=tiny.model_config(path))
    model = build_model(config)
    spec = data_spec_from_model(model, config.data)
    sample = Sample("q", [Message("user", "what colour is the shape?")])
    seen = []
    handle = model.llm.lm_head.register_forward_pre_hook(lambda _module, args: seen.append(args[0][0, -1].detach().clone()))
    try:
        next(predict_samples(model, spec, [sample], max_new_tokens=1))
    finally:
        handle.remove()
    im_end = spec.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        model.llm.lm_head.weight[:im_end] = -seen[0]
        model.llm.lm_head.weight[im_end:] = seen[0]
    return model, spec, sample


def test_generation_stops_at_the_end_of_turn_token(eot_model):
    model, spec, sample = eot_model
    assert spec.template == "chat"
    im_end = spec.tokenizer.convert_tokens_to_ids("<|im_end|>")
    report = DatasetReport("t")
    [prediction] = list(predict_samples(model, spec, [sample], max_new_tokens=12, report=report))
    assert prediction.text == "" and report.skipped == {}
    # The row ended at <|im_end|>: generating again with EOS as the only stop runs all 12 tokens.
    ids = torch.tensor([prediction.prompt_ids])
    with_stop = generate(model, ids, max_new_tokens=12, do_sample=False, eos_token_id=list(stop_ids(spec.tokenizer, "chat")))
    eos_only = generate(model, ids, max_new_tokens=12, do_sample=False)
    assert with_stop.shape[1] == 1 and with_stop[0, 0] == im_end
    assert eos_only.shape[1] == 12


def test_serve_and_chat_end_answers_at_the_end_of_turn_token(eot_model):
    model, spec, sample = eot_model
    prompt = encode_prompt(sample, spec.tokenizer, spec.slots(), spec.template, spec.system_prompt, spec.max_length)
    engine = Engine(model, spec.tokenizer, stop_ids=stop_ids(spec.tokenizer, spec.template))
    engine.start()
    try:
        answer = engine.run(GenerationRequest(prompt, {}, max_tokens=12), timeout=60)
    finally:
        engine.stop()
    assert (answer.text, answer.completion_tokens, answer.finish_reason) == ("", 1, "stop")
    out = io.StringIO()
    session = ChatSession(model, spec, out, max_new_tokens=12)
    assert session.reply("what colour is the shape?") == "" and out.getvalue() == "\n"
