"""``cotune serve``'s OpenAI endpoint against a real uvicorn server on loopback: answers equal
``cotune predict`` (greedy, streamed or not, text, image, audio, both), seeded sampling repeats,
stop strings cut the answer, usage counts, the model list, merged serving, the CLI without the
``serve`` extra. The ``cotune serve`` command itself runs in test_serve_attacks.py (its own process,
stopped by SIGTERM)."""

from __future__ import annotations

import sys

import pytest
import torch

from cotune.cli.main import main
from cotune.testing import tiny
from cotune.testing.serve import (
    MAX_TOKENS, QUESTIONS, audio_part, image_part, predict, serve_run, stream_text, user, write_media,
)

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from cotune.model.stream import AnswerStream  # noqa: E402
from cotune.serve import GenerationRequest, ServeConfig, load_service, parse_chat_request, prepare  # noqa: E402
from cotune.serve.server import BackgroundServer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def run(tiny_root):
    return serve_run(tiny_root)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return write_media(tmp_path_factory.mktemp("serve-media"))


@pytest.fixture(scope="module")
def service(run):
    return load_service(run, ServeConfig(max_tokens=MAX_TOKENS), device="cpu")


@pytest.fixture(scope="module")
def client(service):
    with BackgroundServer(service) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def complete(client, body) -> dict:
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


CASES = [("text", QUESTIONS[0], None, None), ("image-png", QUESTIONS[0], "red.png", None), ("image-jpeg", QUESTIONS[1], "blue.jpg", None),
         ("audio", QUESTIONS[2], None, "tone.wav"), ("image+audio", QUESTIONS[1], "red.png", "tone.flac")]


@pytest.mark.parametrize("case, text, image, audio", CASES, ids=[c[0] for c in CASES])
def test_answers_equal_cotune_predict_streamed_or_not(client, run, media, capsys, case, text, image, audio):
    image, audio = (media / name if name else None for name in (image, audio))
    parts = ([image_part(image)] if image else []) + ([audio_part(audio)] if audio else [])
    body = user(text, *parts)
    expected = predict(capsys, run, text, image, audio)
    answer = complete(client, body)
    assert expected and answer["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert answer["object"] == "chat.completion" and answer["model"] == "tiny-run"
    streamed, chunks = stream_text(client, body)
    assert streamed == expected
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) >= 2  # it did stream
    usage = answer["usage"]
    assert usage["completion_tokens"] <= MAX_TOKENS and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    finish = answer["choices"][0]["finish_reason"]
    assert finish == ("length" if usage["completion_tokens"] == MAX_TOKENS else "stop")
    assert chunks[-1]["choices"][0]["finish_reason"] == finish


def test_usage_counts_the_prompt_as_the_model_sees_it(client, service, media):
    from cotune.data.schema import Message, Sample
    from cotune.data.templates import encode_prompt

    spec = service.spec
    sample = Sample("x", [Message("user", QUESTIONS[0])], {"image": [media / "red.png"]})
    ids = encode_prompt(sample, spec.tokenizer, spec.slots(), spec.template, spec.system_prompt, spec.max_length)
    body = {**user(QUESTIONS[0], image_part(media / "red.png")), "max_tokens": 3, "stream_options": {"include_usage": True}}
    assert complete(client, body)["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 3, "total_tokens": len(ids) + 3}
    _text, chunks = stream_text(client, body)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == len(ids)


def test_seeded_sampling_repeats_and_leaves_the_global_generator_alone(client):
    body = {**user(QUESTIONS[0]), "temperature": 1.5, "top_p": 0.95}
    state = torch.random.get_rng_state()
    first = complete(client, {**body, "seed": 7})["choices"][0]["message"]["content"]
    others = {complete(client, {**body, "seed": s})["choices"][0]["message"]["content"] for s in (1, 2, 3)}
    assert complete(client, {**body, "seed": 7})["choices"][0]["message"]["content"] == first
    assert stream_text(client, {**body, "seed": 7})[0] == first
    assert len(others | {first}) > 1  # sampling does sample
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("temperature", [1e-40, 1e-300])
def test_a_temperature_near_zero_samples_the_greedy_answer(client, temperature):
    """Any temperature in (0, 2] is valid; near 0 the draw is the top token every step (these used
    to overflow the scaled logits to inf and fail generation with a 500)."""
    greedy = complete(client, user(QUESTIONS[0]))["choices"][0]["message"]["content"]
    answer = complete(client, {**user(QUESTIONS[0]), "temperature": temperature, "seed": 3})
    assert answer["choices"][0]["message"]["content"] == greedy


def test_stop_strings_end_the_answer_before_them(client):
    full = complete(client, {**user(QUESTIONS[0]), "max_tokens": 16})["choices"][0]["message"]["content"]
    stop = full[4:7]
    assert len(full) > 8 and stop.strip()
    cut = full[: full.index(stop)].strip()
    answer = complete(client, {**user(QUESTIONS[0]), "max_tokens": 16, "stop": [stop, "never-said"]})
    assert answer["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": cut}, "finish_reason": "stop"}
    assert answer["usage"]["completion_tokens"] < 16
    assert stream_text(client, {**user(QUESTIONS[0]), "max_tokens": 16, "stop": stop})[0] == cut


def test_multi_turn_history_and_system_message_reach_the_prompt(client, media):
    first = complete(client, user(QUESTIONS[0], image_part(media / "red.png")))
    reply = first["choices"][0]["message"]
    turns = [{"role": "system", "content": "answer briefly"},
             {"role": "user", "content": [{"type": "text", "text": QUESTIONS[0]}, image_part(media / "red.png")]},
             reply, {"role": "user", "content": "and the shape"}]
    second = complete(client, {"messages": turns})
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]


def test_models_and_health(client, service):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny-run"]
    entry = models["data"][0]
    trainable = sum(p.numel() for p in service.model.parameters() if p.requires_grad)
    assert entry["trainable_params"] == trainable > 0 and entry["modalities"] == ["text", "image", "audio"]
    assert not entry["merged"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-run" and health["waiting"] == 0
    assert client.get("/").status_code == 404  # no --ui


def test_openai_client_talks_to_the_server(client):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=f"{str(client.base_url).rstrip('/')}/v1", api_key="unused")
    expected = complete(client, user(QUESTIONS[1]))["choices"][0]["message"]["content"]
    answer = api.chat.completions.create(model="tiny-run", messages=[{"role": "user", "content": QUESTIONS[1]}])
    assert answer.choices[0].message.content == expected
    pieces = api.chat.completions.create(model="tiny-run", messages=[{"role": "user", "content": QUESTIONS[1]}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == expected


def test_merged_serving_equals_predict_on_the_merged_directory(run, tmp_path, capsys):
    from cotune.rundir import merge_run

    merge_run(run, tmp_path / "merged")
    service = load_service(run, ServeConfig(), merged=True, device="cpu")
    assert service.merged and service.describe()["merged"]
    service.engine.start()
    try:
        for text in QUESTIONS[:2]:
            request = prepare(parse_chat_request(user(text), service.config, service.name), service.spec, service.config)
            request.max_tokens = MAX_TOKENS
            assert service.engine.run(request, timeout=60).text == predict(capsys, tmp_path / "merged", text)
    finally:
        service.engine.stop()


def test_answer_stream_pieces_join_to_the_final_text_and_hold_back_stops():
    tok = tiny.make_tokenizer()
    text = "the red circle is loud and the blue square é"
    ids = tok(text, add_special_tokens=False).input_ids
    pieces = []
    stream = AnswerStream(tok, stop=["blue sq"], on_text=pieces.append)
    stream.put(torch.tensor([[1, 2]]))  # the prompt: skipped
    for token in ids:
        stream.put(torch.tensor([token]))
        assert "blue" not in "".join(pieces)  # a possible stop string is never released
    stream.end()
    assert stream.stopped and stream.text == "the red circle is loud and the" == "".join(pieces)
    pieces.clear()
    stream = AnswerStream(tok, on_text=pieces.append)
    stream.put(torch.tensor([[1]]))
    for token in [*ids, tok.eos_token_id, *ids]:
        stream.put(torch.tensor([token]))
    stream.end()
    assert stream.text == text == "".join(pieces) and not any("\ufffd" in p for p in pieces) and stream.hit_eos


def test_engine_runs_requests_without_http(service):
    service.engine.start()  # already running under the module's server: start is idempotent
    prompt = service.spec.tokenizer("the answer", add_special_tokens=False).input_ids
    a = service.engine.run(GenerationRequest(prompt, {}, 4), timeout=60)
    b = service.engine.run(GenerationRequest(prompt, {}, 4), timeout=60)
    assert a == b and a.completion_tokens <= 4 and a.prompt_tokens == len(prompt)


def test_cli_without_the_serve_extra_says_how_to_install_it(monkeypatch, capsys, run):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the serve extra were not installed
    assert main(["serve", str(run)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("cotune: error: cotune serve needs FastAPI and uvicorn: pip install 'cotune[serve]'")


def test_serve_config_names_the_bad_flag(tmp_path):
    from cotune.config import ConfigError

    with pytest.raises(ConfigError, match="--max-images: must be >= 0"):
        ServeConfig(max_images=-1)
    with pytest.raises(ConfigError, match="--queue-timeout: must be > 0"):
        ServeConfig(queue_timeout=0)
    with pytest.raises(ConfigError, match="--max-tokens: 300 is above --max-tokens-limit 200"):
        ServeConfig(max_tokens=300, max_tokens_limit=200)
    with pytest.raises(ConfigError, match="--media-root: .* is not a directory"):
        ServeConfig(media_root=tmp_path / "nope")
    assert ServeConfig(media_root=str(tmp_path)).media_root == tmp_path.resolve()
