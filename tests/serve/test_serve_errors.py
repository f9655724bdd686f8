"""Bad input to ``cotune serve``: every case gets its 4xx with a message naming what is wrong, no
temporary path or outside file leaks, the queue answers 503 instead of hanging, and the server
keeps answering (with the same answer as before) afterwards."""

from __future__ import annotations

import base64
import io
import os
import threading
from dataclasses import replace

import numpy as np
import pytest
import soundfile
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from cotune.serve import GenerationRequest, RequestError, ServeConfig, load_service, parse_chat_request  # noqa: E402
from cotune.serve.server import BackgroundServer  # noqa: E402
from cotune.testing.serve import audio_part, image_part, serve_run, user, write_media  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

LIMITS = dict(max_request_mb=0.25, max_media_mb=0.05, max_image_pixels=200 * 200, max_image_aspect=100, max_images=2, max_audio=1,
              max_audio_seconds=2.0, max_tokens=6, max_tokens_limit=64, queue_timeout=20.0)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = write_media(tmp_path_factory.mktemp("media-root"))
    outside = tmp_path_factory.mktemp("outside")
    Image.new("RGB", (20, 20), (0, 200, 0)).save(outside / "secret.png")
    (root / "link.png").symlink_to(outside / "secret.png")
    Image.new("RGB", (300, 300), (9, 9, 9)).save(root / "big.png")  # 90,000 pixels: small file, too many pixels
    (root / "folder").mkdir()
    (root / "folder" / "red.png").write_bytes((root / "red.png").read_bytes())
    (root / "linked").symlink_to(root / "folder")  # a link to a folder inside the root: still not followed
    return root, outside


@pytest.fixture(scope="module")
def served(tiny_root, media):
    service = load_service(serve_run(tiny_root), ServeConfig(**LIMITS, media_root=media[0]), device="cpu")
    with BackgroundServer(service) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield service, client


@pytest.fixture(scope="module")
def reference(served, media):
    """A good request and the answer it got before any bad request was sent."""
    body = user("what colour", image_part(media[0] / "red.png"))
    return body, served[1].post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]


def data_url(data: bytes, mime="image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


def file_url(path) -> dict:
    return {"type": "image_url", "image_url": {"url": f"file://{path}"}}


def wav_bytes(seconds: float, rate: int = 16000, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(rate * seconds)), rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def audio_part_bytes(data: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def plain_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (9, 9, 9)).save(buffer, "PNG")
    return buffer.getvalue()


def noise_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def cases(media_root, outside):
    red = media_root / "red.png"
    png = red.read_bytes()
    many = user("x", *[image_part(red)] * 3)
    return {
        "not JSON": (b'{"messages": [', 400, "not valid JSON"),
        "not an object": ([1, 2], 400, "must be a JSON object"),
        "unknown field": ({**user("hi"), "temprature": 0}, 400, "temprature: unknown field; valid fields: model, messages"),
        "unsupported field": ({**user("hi"), "frequency_penalty": 0.5}, 400, "frequency_penalty: is not supported"),
        "unknown message field": ({"messages": [{"role": "user", "content": "hi", "colour": 1}]}, 400,
                                  "messages[0]: unknown field 'colour'"),
        "unknown role": ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role: must be one of"),
        "unknown part": (user("hi", {"type": "video_url", "video_url": {}}), 400,
                         "messages[0].content[1].type: must be text, image_url or input_audio"),
        "empty messages": ({"messages": []}, 400, "messages: must be a non-empty list"),
        "no messages": ({"max_tokens": 3}, 400, "messages: must be a non-empty list"),
        "ends with assistant": ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, 400,
                                "the last message must come from the user"),
        "media from the assistant": ({"messages": [{"role": "assistant", "content": [image_part(red)]}, {"role": "user", "content": "hi"}]},
                                     400, "media can only be sent in user messages"),
        "marker in text": (user("look: <image>"), 400, "contains '<image>'"),
        "wrong model": ({**user("hi"), "model": "gpt-4o"}, 404, "'gpt-4o' is not served here; this server serves 'tiny-run'"),
        "max_tokens too big": ({**user("hi"), "max_tokens": 65}, 400, "max_tokens: must be between 1 and 64"),
        "temperature": ({**user("hi"), "temperature": -1}, 400, "temperature: must be between 0 and 2"),
        "n": ({**user("hi"), "n": 2}, 400, "n: only 1 answer per request is supported, got 2"),
        "stop list": ({**user("hi"), "stop": ["a", "b", "c", "d", "e"]}, 400, "stop: must be a non-empty string or a list of at most 4"),
        "text is not an image": (user("x", data_url(b"hello, I am text")), 400,
                                 "messages[0].content[1].image_url.url: not a PNG or JPEG image"),
        "truncated png": (user("x", data_url(png[:60])), 400, "messages[0].content[1].image_url.url: not a readable image"),
        "gif": (user("x", data_url(png, "image/gif")), 400, "image type 'image/gif' is not supported; send PNG or JPEG"),
        "bad base64": (user("x", {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}), 400, "is not valid base64"),
        "remote url": (user("x", {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}), 400,
                       "URL scheme 'https' is not supported"),
        "oversized image": (user("x", data_url(noise_png(160))), 413, "the limit is 52,428 bytes per item"),
        "oversized body": (user("x" * 300_000), 413, "the limit is 262,144 bytes"),
        "too many pixels": (user("x", file_url(media_root / "big.png")), 413, "300x300 pixels; the limit is 40,000 pixels"),
        "too many images": (many, 400, "3 image items; this server accepts at most 2 per request"),
        "audio too long": (user("x", audio_part(media_root / "long.wav")), 400, "audio is 3.0 s long; the limit is 2 s"),
        "audio not audio": (user("x", {"type": "input_audio", "input_audio": {"data": base64.b64encode(png).decode(), "format": "wav"}}),
                            400, "messages[0].content[1].input_audio: not a WAV file"),
        "audio bad format": (user("x", {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "mp3"}}), 400,
                             "input_audio.format: must be wav or flac"),
        "file outside the root": (user("x", file_url(outside / "secret.png")), 403, "the path is outside the server's media root"),
        "file missing outside the root": (user("x", file_url(outside / "nothing.png")), 403, "outside the server's media root"),
        "dot-dot escape": (user("x", file_url(f"{media_root}/../{outside.name}/secret.png")), 403, "outside the server's media root"),
        "symlink escape": (user("x", file_url(media_root / "link.png")), 403,
                           "link.png: goes through the symbolic link 'link.png'; links are not followed under the media root"),
        "missing file": (user("x", file_url(media_root / "nothing.png")), 400, "no such file under the media root: nothing.png"),
        "conversation too long": (user("the " * 600), 400, "tokens > max_length 512"),
        # inputs that used to give a plain-text 500
        "lone surrogate": (b'{"messages": [{"role": "user", "content": "a \\ud800 b"}]}', 400,
                           "the request body holds invalid Unicode: surrogates not allowed"),
        "5,000-digit max_tokens": (b'{"max_tokens": ' + b"9" * 5000 + b', "messages": [{"role": "user", "content": "hi"}]}', 400,
                                   "the request body is not valid JSON: Exceeds the limit (4300 digits)"),
        "nested 100,000 deep": (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400,
                                "holds 100,001 commas and brackets; the limit is 50,000"),
        "nested 5,000 deep": (b'{"messages": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", 400, "nested more than 32 levels deep"),
        "nested 40 deep": ({**user("hi"), "user": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, 400,
                           "nested more than 32 levels deep"),
        "many commas": (b'{"messages": [{"role": "user", "content": "hi"}], "user": [' + b"0," * 50_000 + b'0]}', 400,
                        "holds 50,006 commas and brackets; the limit is 50,000"),
        "file URL with NUL": (user("x", file_url(f"{media_root}/red.png%00.png")), 400, "the path contains a NUL character"),
        "placeholder in text": (user("what is <sound> here"), 400,
                                "messages[0]: contains '<sound>', this model's placeholder for audio inputs"),
        # memory bounds
        "wide image": (user("x", data_url(plain_png(201, 1))), 413, "201x1 pixels, an aspect ratio of 201:1; the limit is 100:1"),
        "tall image": (user("x", data_url(plain_png(1, 150))), 413, "1x150 pixels, an aspect ratio of 150:1; the limit is 100:1"),
        "resized too big": (user("x", data_url(plain_png(50, 1))), 413,
                            "50x1 pixels would be resized to 45,000 pixels for encoder 'image'; the limit is 40,000 pixels"),
        "audio rate": (user("x", audio_part_bytes(wav_bytes(0.05, rate=400_000, subtype="PCM_U8"))), 413,
                       "400,000 Hz x 1 channels; the limit is 384,000 samples per second over all channels"),
        # more bad fields
        "long stop": ({**user("hi"), "stop": "x" * 257}, 400, "stop: a stop string may be at most 256 characters long"),
        "user not a string": ({**user("hi"), "user": {"id": 1}}, 400, "user: must be a string, got {'id': 1}"),
        "file is a folder": (user("x", file_url(media_root / "folder")), 400, "folder is not a regular file"),
        "file through a linked folder": (user("x", file_url(media_root / "linked" / "red.png")), 403,
                                         "linked/red.png: goes through the symbolic link 'linked'"),
    }


NAMES = ("not JSON", "not an object", "unknown field", "unsupported field", "unknown message field", "unknown role",
         "unknown part", "empty messages", "no messages", "ends with assistant", "media from the assistant", "marker in text",
         "wrong model", "max_tokens too big", "temperature", "n", "stop list", "text is not an image", "truncated png", "gif",
         "bad base64", "remote url", "oversized image", "oversized body", "too many pixels", "too many images", "audio too long",
         "audio not audio", "audio bad format", "file outside the root", "file missing outside the root", "dot-dot escape",
         "symlink escape", "missing file", "conversation too long", "lone surrogate", "5,000-digit max_tokens",
         "nested 100,000 deep", "nested 5,000 deep", "nested 40 deep", "many commas", "file URL with NUL", "placeholder in text", "wide image",
         "tall image", "resized too big", "audio rate", "long stop", "user not a string", "file is a folder",
         "file through a linked folder")


@pytest.mark.parametrize("name", NAMES)
def test_bad_request_gets_its_4xx_with_a_message(served, media, reference, name):
    service, client = served
    table = cases(*media)
    assert set(table) == set(NAMES)
    body, status, message = table[name]
    if isinstance(body, bytes):
        response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    else:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"], error["message"]
    assert error["type"] and "cotune-serve-" not in error["message"] and str(media[1]) not in error["message"]


def test_server_answers_the_same_after_all_bad_requests(served, reference):
    """Runs after the parametrised bad requests above (pytest keeps file order)."""
    service, client = served
    body, before = reference
    assert client.get("/health").json()["status"] == "ok"
    assert client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"] == before


def test_file_url_under_the_root_equals_the_same_image_as_data_url(served, media):
    _service, client = served
    red = media[0] / "red.png"
    via_file = client.post("/v1/chat/completions", json=user("what colour", file_url(red))).json()
    via_data = client.post("/v1/chat/completions", json=user("what colour", image_part(red))).json()
    assert via_file["choices"][0]["message"] == via_data["choices"][0]["message"]


def test_file_urls_are_refused_without_a_media_root():
    with pytest.raises(RequestError, match="file:// URLs are disabled on this server") as refused:
        parse_chat_request(user("x", file_url("/etc/passwd")), ServeConfig(), "m")
    assert refused.value.status == 403


def test_wrong_method_and_path(served):
    _service, client = served
    assert client.get("/v1/chat/completions").status_code == 405
    assert client.post("/v1/completions", json={}).json()["error"]["type"] == "not_found_error"


def test_a_request_that_waits_too_long_gets_503_and_is_never_run(served):
    service, client = served
    config = service.config
    service.config = replace(config, queue_timeout=0.3)
    done = service.engine.completed
    try:
        with service.engine.hold():  # the model is busy
            response = client.post("/v1/chat/completions", json=user("hi"))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "waited 0.3 s for the model" in response.json()["error"]["message"]
    finally:
        service.config = config
    assert client.post("/v1/chat/completions", json=user("hi")).status_code == 200
    assert service.engine.completed == done + 1  # the timed-out request was skipped


def test_a_full_queue_refuses_at_once_and_the_waiting_request_is_answered(served):
    service, client = served
    service.engine.max_queue, results = 1, {}

    def first():
        results["first"] = client.post("/v1/chat/completions", json=user("hi"))

    try:
        with service.engine.hold():
            waiting = threading.Thread(target=first)
            waiting.start()
            while service.engine.waiting < 1:
                os.sched_yield()
            refused = client.post("/v1/chat/completions", json=user("hi"))
        waiting.join(30)
    finally:
        service.engine.max_queue = LIMITS.get("max_queue", 64)
    assert refused.status_code == 503 and "1 requests are already waiting" in refused.json()["error"]["message"]
    assert results["first"].status_code == 200


def test_inputs_without_a_routing_row_get_400(tiny_root, media):
    """A model whose routing rows leave out image+audio refuses a request holding both (it used to
    fail inside generation with a 500)."""
    run = serve_run(tiny_root, modality_keys=["text", "image", "audio"])
    service = load_service(run, ServeConfig(max_tokens=3), device="cpu")
    red, tone = media[0] / "red.png", media[0] / "tone.wav"
    with BackgroundServer(service) as url, httpx.Client(base_url=url, timeout=60) as client:
        response = client.post("/v1/chat/completions", json=user("x", image_part(red), audio_part(tone)))
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"] == (
            "messages: the request holds image+audio inputs, which routing.modality_keys ['text', 'image', 'audio'] does not list")
        for parts in ([image_part(red)], [audio_part(tone)], []):
            assert client.post("/v1/chat/completions", json=user("x", *parts)).status_code == 200


def gpt2_run(root):
    """A text-only run on a tiny GPT-2 (a learned table of 256 absolute positions)."""
    from cotune.testing import tiny
    from cotune.config import load_config
    from cotune.model import build_model, save_model

    run = root / "serve" / "tiny-gpt2-run"
    if (run / "manifest.json").exists():
        return run
    config = load_config(data=tiny.model_config(tiny.save_llm(root, "gpt2"), {}, trainable="adapter", adapter={"type": "mm_adapter"}))
    return save_model(build_model(config), config, run)


def test_only_rotary_free_position_tables_limit_prompt_plus_max_tokens():
    from cotune.testing import tiny
    import transformers

    from cotune.serve.engine import position_limit

    assert position_limit(transformers.AutoModelForCausalLM.from_config(tiny.LLM_CONFIGS["gpt2"]())) == 256
    opt = transformers.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                                 max_position_embeddings=64, word_embed_proj_dim=16)
    assert position_limit(transformers.AutoModelForCausalLM.from_config(opt)) == 64  # its table has 2 rows more
    for family in ("llama", "qwen2", "phi"):  # rotary: they run past max_position_embeddings without failing
        assert position_limit(transformers.AutoModelForCausalLM.from_config(tiny.LLM_CONFIGS[family]())) is None


def test_a_model_with_learned_positions_refuses_what_it_cannot_embed_and_batches_what_it_can(tiny_root):
    """GPT-2 fails inside generate past its last position, taking the whole batch with it (a 500 for
    every row). Asked for more than fits: 400 context_length_exceeded. The default max_tokens (300
    here) is lowered to fit. Two requests that each fit but not together run in two batches."""
    service = load_service(gpt2_run(tiny_root), ServeConfig(max_tokens=300, max_tokens_limit=1000), device="cpu")
    assert service.engine.positions == 256
    with BackgroundServer(service) as url, httpx.Client(base_url=url, timeout=120) as client:
        refused = client.post("/v1/chat/completions", json={**user("the a an is"), "max_tokens": 300})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
        assert error["message"].startswith("max_tokens: this model's maximum context length is 256 tokens; the request needs ")
        fitted = client.post("/v1/chat/completions", json=user("the a an is"))
        assert fitted.status_code == 200 and fitted.json()["usage"]["total_tokens"] <= 256
        long_prompt = {**user("the a " * 40), "max_tokens": 100}
        prompt_tokens = client.post("/v1/chat/completions", json={**long_prompt, "max_tokens": 1}).json()["usage"]["prompt_tokens"]
        short = {**user("the"), "max_tokens": 256 - prompt_tokens + 10}  # fits alone, not beside the long prompt
        results, engine, batches = {}, service.engine, service.engine.batches

        def one(name, body):
            results[name] = client.post("/v1/chat/completions", json=body)

        threads = [threading.Thread(target=one, args=item) for item in (("long", long_prompt), ("short", short))]
        with engine.hold():
            for thread in threads:
                thread.start()
            while engine.waiting < 2:
                os.sched_yield()
        for thread in threads:
            thread.join(120)
        assert {name: r.status_code for name, r in results.items()} == {"long": 200, "short": 200}, results["short"].text
        assert engine.batches == batches + 2


def test_shutdown_refuses_at_once_a_request_held_back_from_the_running_batch(tiny_root):
    """Two requests that do not fit one batch of the GPT-2 run: the long one runs, the short one is
    held back for the next batch. The server closes as the batch starts (from the long request's
    "start" event, so nothing depends on timing): the held request gets the shutdown error at once,
    never starting, and the running one gets it at its next token (no grace)."""
    from cotune.serve.engine import SHUTTING_DOWN

    service = load_service(gpt2_run(tiny_root), ServeConfig(max_tokens_limit=1000), device="cpu")
    engine, tokenizer = service.engine, service.spec.tokenizer
    long_ids, short_ids = tokenizer("the a " * 40).input_ids, tokenizer("the").input_ids
    events, ended = [], threading.Event()

    def long_sink(event):
        events.append(("long", *event))
        if event[0] == "start":
            engine.close(0)
        if event[0] in ("done", "error"):
            ended.set()

    engine.start()
    try:
        with engine.hold():
            engine.submit(GenerationRequest(long_ids, {}, 256 - len(long_ids)), long_sink)
            engine.submit(GenerationRequest(short_ids, {}, 256 - len(long_ids) + 10), lambda event: events.append(("short", *event)))
        assert ended.wait(60), events
    finally:
        engine.stop(5)
    # in this order: the held request is refused by close itself, before the running one's next token
    assert events == [("long", "start", None), ("short", "error", SHUTTING_DOWN), ("long", "error", SHUTTING_DOWN)], events
    assert engine.waiting == 0 and engine.batches == 1
