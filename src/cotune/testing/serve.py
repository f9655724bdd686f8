"""A saved multimodal run to serve, media files, and OpenAI-style request bodies for tests of ``cotune serve``.

:func:`serve_run` builds (once per root) a tiny LLaMA with MM-Adapters, a CLIP image encoder and a Whisper
audio encoder, all random; :func:`write_media` writes small image and audio files; :func:`user`,
:func:`image_part` and :func:`audio_part` build chat-completion bodies; :func:`predict` is what ``cotune
predict`` answers, the reference a served answer must equal. Nothing here downloads anything.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import torch
from PIL import Image

from cotune.cli.main import main
from cotune.config import load_config
from cotune.testing import tiny

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
    import soundfile  # the audio extra

    directory.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(directory / "red.png")
    Image.new("RGB", (30, 40), (20, 30, 230)).save(directory / "blue.jpg", quality=90)
    t = np.arange(8000) / 16000
    soundfile.write(directory / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    soundfile.write(directory / "tone.flac", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    soundfile.write(directory / "long.wav", np.zeros(3 * 8000), 8000, subtype="PCM_U8")  # 24 kB
    return directory


def image_part(path):
    """A chat-completion content part carrying the PNG or JPEG at ``path`` as a data URL."""
    mime = "image/jpeg" if path.suffix == ".jpg" else "image/png"
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"}}


def audio_part(path):
    """A chat-completion ``input_audio`` part carrying the file at ``path`` (its suffix is the format)."""
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(), "format": path.suffix[1:]}}


def user(text, *parts):
    """A request body of one user message: ``text`` alone, or a text part followed by ``parts``."""
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
    """What ``cotune predict`` answers for ``text`` (and media) on ``run``, greedy on CPU: the reference of a served answer."""
    argv = ["--log-level", "warning", "predict", str(run), "--prompt", text, "--max-new-tokens", str(max_tokens), "--device", "cpu"]
    argv += ["--image", str(image)] * (image is not None) + ["--audio", str(audio)] * (audio is not None)
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)["prediction"]
