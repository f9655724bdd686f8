"""``cotune serve``'s OpenAI endpoint against a real uvicorn server on loopback: answers equal
``cotune predict`` (greedy, streamed or not, text, image, audio, both), seeded sampling repeats,
stop strings cut the answer, usage counts, the model list, merged serving, the CLI without the
``serve`` extra. The ``cotune serve`` command itself runs in test_serve_attacks.py (its own process,
stopped by SIGTERM)."""

from __future__ import annotations

import base64
import json
import sys

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

import tiny
from cotune.cli.main import main

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from cotune.config import load_config  # noqa: E402
from cotune.model.stream import AnswerStream  # noqa: E402
from cotune.serve import GenerationRequest, ServeConfig, load_service, parse_chat_request, prepare  # noqa: E402
from cotune.serve.server import BackgroundServer  # noqa: E402

MAX_TOKENS = 10
QUESTIONS = ["what colour is the shape", "is it a circle", "what is the sound"]


def serve_run(root, modality_keys=None, whisper_window=False):
    """``root/serve/tiny-run``, a saved model directory (built once per session root): tiny LLaMA with
    MM-Adapters + CLIP image encoder + Whisper audio encoder (placeholder ``<sound>``), random
    adapter weights. ``modality_keys``: routing rows other than every combination (another directory).
    ``whisper_window``: the audio encoder takes Whisper's own 30 s window (16 kHz, hop 160, 1,500
    positions) instead of the tiny one's 1 s (another directory)."""
    from cotune.model import build_model, save_model

    name = "tiny-run" + (f"-{'-'.join(modality_keys)}" if modality_keys is not None else "") + ("-30s" if whisper_window else "")
    run = root / "serve" / name
    if (run / "manifest.json").exists():
        return run
    audio = tiny.save_encoder(root, "whisper") if not whisper_window else save_whisper_30s(root)
    encoders = {
        "image": {"type": "clip", "name_or_path": str(tiny.save_encoder(root, "clip")), "layers": [1, 2, 3], "reduce": "cls",
                  "trainable": "adapter", "adapter": {"type": "mm_adapter"}, "connector": {"type": "lavin-neck", "hidden": 16}},
        "audio": {"type": "whisper", "name_or_path": str(audio), "layers": [-1], "reduce": "windows",
                  "window": 100 if whisper_window else 4, "trainable": "adapter", "adapter": {"type": "rep_adapter"},
                  "connector": {"type": "linear"},
                  "placeholder": "<sound>"},  # a placeholder that is not the <audio> marker: text must not form it
    }
    raw = tiny.model_config(tiny.save_llm(root), encoders, trainable="adapter", adapter={"type": "mm_adapter"})
    if modality_keys is not None:
        raw["model"]["routing"] = {"modality_keys": list(modality_keys)}
    config = load_config(data=raw)
    model = build_model(config)
    tiny.randomise_trainables(model)
    return save_model(model, config, run)


def save_whisper_30s(root):
    """A tiny random Whisper encoder with Whisper's 30 s input window (3,000 mel frames), under ``root``."""
    import transformers

    path = root / "enc-whisper-30s"
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        transformers.WhisperModel(transformers.WhisperConfig(
            d_model=24, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=48, decoder_ffn_dim=48, num_mel_bins=8, max_source_positions=1500, vocab_size=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        )).save_pretrained(path)
        transformers.WhisperFeatureExtractor(feature_size=8).save_pretrained(path)  # 16 kHz, hop 160, 30 s
    return path


def write_media(directory):
    """red.png, blue.jpg, tone.wav (0.5 s), long.wav (3 s), tone.flac under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(directory / "red.png")
    Image.new("RGB", (30, 40), (20, 30, 230)).save(directory / "blue.jpg", quality=90)
    t = np.arange(8000) / 16000
    soundfile.write(directory / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    soundfile.write(directory / "tone.flac", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    soundfile.write(directory / "long.wav", np.zeros(3 * 8000), 8000, subtype="PCM_U8")  # 24 kB
    return directory


def image_part(path):
    mime = "image/jpeg" if path.suffix == ".jpg" else "image/png"
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"}}


def audio_part(path):
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(), "format": path.suffix[1:]}}


def user(text, *parts):
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": text}, *parts] if parts else text}]}


def stream_text(client, body) -> tuple[str, list[dict]]:
    """(the joined content deltas, every chunk) of a streamed request; checks the SSE framing."""
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and len({c["id"] for c in chunks}) == 1 for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]), chunks


def predict(capsys, run, text, image=None, audio=None, max_tokens=MAX_TOKENS) -> str:
    argv = ["--log-level", "warning", "predict", str(run), "--prompt", text, "--max-new-tokens", str(max_tokens), "--device", "cpu"]
    argv += ["--image", str(image)] * (image is not None) + ["--audio", str(audio)] * (audio is not None)
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)["prediction"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread while a module of serving tests runs (the server, its clients and other work
    share 2 cores); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
