"""Encoders: wrappers read the right hidden states, audio paths train, several encoders at once."""

import pytest
import torch
import transformers
from safetensors.torch import save_file

from cotune.backbones import LoadError
from cotune.config import load_config
from cotune.encoders import ENCODERS, MobileNetV2, reduce_tokens
from cotune.model import build_model
from cotune.testing import tiny

HF_KINDS = ["clip", "siglip", "vit", "dinov2", "whisper", "wav2vec2", "hubert"]


@pytest.mark.parametrize("kind", HF_KINDS)
def test_encoder_wrapper_returns_the_models_hidden_states(tiny_root, kind):
    path = tiny.save_encoder(tiny_root, kind)
    cfg = load_config(data=tiny.model_config(tiny.save_llm(tiny_root), {"x": {"type": kind, "name_or_path": str(path), "reduce": "all"}}))
    encoder = ENCODERS.get(kind)(cfg.model.encoders["x"])
    reference = transformers.AutoModel.from_pretrained(path)
    if kind == "whisper":
        reference = reference.encoder
    inputs = tiny.media_input(kind, 2, torch.Generator().manual_seed(0))
    name = {"whisper": "input_features", "wav2vec2": "input_values", "hubert": "input_values"}.get(kind, "pixel_values")
    with torch.no_grad():
        expected = reference(**{name: inputs}, output_hidden_states=True).hidden_states
        got = encoder.hidden_states(inputs)
    assert len(got) == encoder.num_blocks + 1 == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    if encoder.num_tokens() is not None:
        assert got[-1].shape[1] == encoder.num_tokens()


@pytest.mark.parametrize("kind, router", [("whisper", "mean"), ("wav2vec2", "per_token"), ("hubert", "constant")])
def test_audio_encoders_run_forward_and_backward(tiny_root, kind, router):
    model = tiny.build(
        tiny_root, "qwen2",
        {"audio": {"kind": kind, "layers": [-1], "reduce": "all", "trainable": "adapter",
                   "adapter": {"type": "mm_adapter", "router": router}, "connector": {"type": "audio-pool", "stride": 4}}},
        trainable="adapter", adapter={"type": "mm_adapter"},
    )
    inputs = tiny.media_input(kind, 1)
    frames = model.encoders["audio"].hidden_states(inputs)[-1].shape[1]
    n_tokens = frames // 4
    if model.num_media_tokens("audio") is not None:
        assert model.num_media_tokens("audio") == n_tokens
    ids, mask = tiny.pad_batch([tiny.encode(model, "is the sound loud", {"audio": n_tokens}), tiny.encode(model, "yes no")])
    model.train()
    tiny.randomise_trainables(model)
    out = model(ids, mask, labels=ids.masked_fill(mask == 0, -100), media={"audio": inputs})
    out.loss.backward()
    adapter_grads = [p.grad for a in model.adapter_modules["encoder.audio"] for p in a.parameters()]
    assert adapter_grads and all(g is not None and torch.count_nonzero(g) > 0 for g in adapter_grads)


def test_image_and_audio_encoders_feed_one_llm(tiny_root):
    model = tiny.build(
        tiny_root, "llama",
        {
            "image": {"kind": "siglip", "reduce": "mean", "layers": [-1, -2], "trainable": "adapter",
                      "adapter": {"type": "mm_adapter", "router": "mean"}, "connector": {"type": "lavin-neck"}},
            "audio": {"kind": "whisper", "reduce": "windows", "window": 4, "trainable": "adapter",
                      "adapter": {"type": "rep_adapter"}, "connector": {"type": "linear"}},
        },
        trainable="adapter", adapter={"type": "mm_adapter"},
    )
    assert model.modality_keys == ["text", "image", "audio", "audio+image"]
    assert model.modality_embedding.weight.shape == (4, 32)
    n_img, n_aud = model.num_media_tokens("image"), model.num_media_tokens("audio")
    assert (n_img, n_aud) == (2, 4)
    rows = [
        tiny.encode(model, "the answer"),
        tiny.encode(model, "what shape", {"image": n_img}),
        tiny.encode(model, "is it loud", {"audio": n_aud}),
        tiny.encode(model, "both", {"image": n_img, "audio": n_aud}),
    ]
    ids, mask = tiny.pad_batch(rows)
    media = {"image": tiny.media_input("siglip", 2), "audio": tiny.media_input("whisper", 2)}
    tiny.randomise_trainables(model)
    with torch.no_grad():
        out = model(ids, mask, media=media)
    assert out.modality_index.tolist() == [0, 1, 2, 3]
    weights = out.routing_weights
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(weights[i], weights[j], atol=1e-4)
    # The audio+image sample alone gives the same logits as inside the mixed batch.
    alone = model(rows[3], media={"image": media["image"][1:], "audio": media["audio"][1:]})
    torch.testing.assert_close(alone.logits[0], out.logits[3, : rows[3].shape[1]], atol=1e-5, rtol=1e-5)


def test_reduce_tokens_shapes_and_values():
    hidden = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)
    assert torch.equal(reduce_tokens(hidden, "cls", 1, 1), hidden[:, :1])
    assert torch.equal(reduce_tokens(hidden, "patches", 1, 1), hidden[:, 1:])
    assert torch.equal(reduce_tokens(hidden, "all", 1, 1), hidden)
    torch.testing.assert_close(reduce_tokens(hidden, "mean", 1, 1), hidden[:, 1:].mean(1, keepdim=True))
    windows = reduce_tokens(hidden, "windows", 0, 3)  # 7 tokens -> 3 + 3 + 1
    assert windows.shape == (2, 3, 3)
    torch.testing.assert_close(windows[:, 0], hidden[:, :3].mean(1))
    torch.testing.assert_close(windows[:, 2], hidden[:, 6])


def test_cls_reduction_without_cls_token_is_a_config_error(tiny_root):
    from cotune.config import ConfigError

    with pytest.raises(ConfigError, match="model.encoders.image.reduce: 'cls' needs a"):
        tiny.build(tiny_root, "llama", {"image": {"kind": "siglip", "reduce": "cls"}})
    with pytest.raises(ConfigError, match="out of range"):
        tiny.build(tiny_root, "llama", {"image": {"kind": "clip", "layers": [7]}})


def test_missing_backbone_weights_are_an_error_not_random_init(tiny_root, tmp_path):
    source = tiny.save_llm(tiny_root, "llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(source)
    state = {k: v for k, v in model.state_dict().items() if "layers.1.mlp" not in k}
    broken = tmp_path / "broken"
    model.config.save_pretrained(broken)
    save_file({k: v.contiguous() for k, v in state.items()}, broken / "model.safetensors")
    tiny.make_tokenizer().save_pretrained(broken)
    cfg = load_config(data=tiny.model_config(broken))
    with pytest.raises(LoadError, match=r"missing, e\.g\. .*layers\.1\.mlp"):
        build_model(cfg)


def test_mobilenet_v2_loads_torchvision_names_and_adapts_channels(tiny_root, tmp_path):
    torch.manual_seed(0)
    net = MobileNetV2(width_mult=0.35)
    net.eval()
    path = tmp_path / "mobilenet"
    path.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path / "model.safetensors")
    (path / "config.json").write_text('{"width_mult": 0.35, "image_size": 64}')
    assert "features.1.conv.0.0.weight" in net.state_dict() and "classifier.1.weight" in net.state_dict()

    cfg = load_config(data=tiny.model_config(tiny.save_llm(tiny_root), {"image": {
        "type": "mobilenet-v2", "name_or_path": str(path), "layers": [-1], "reduce": "patches",
        "trainable": "adapter", "adapter": {"type": "mm_adapter", "dim": 4}, "connector": {"type": "linear"},
    }}, trainable="adapter", adapter={"type": "mm_adapter"}))
    model = build_model(cfg)
    encoder = model.encoders["image"]
    assert encoder.num_blocks == 18 and encoder.num_tokens() == 4  # 64 px / 32
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        hidden = encoder.hidden_states(pixels)
        assert torch.equal(hidden[-1], net.features(pixels).flatten(2).transpose(1, 2))  # zero-init adapters
    ids, mask = tiny.pad_batch([tiny.encode(model, "what shape", {"image": 4}), tiny.encode(model, "the")])
    model.train()
    tiny.randomise_trainables(model, std=0.05)
    running = {n: b.clone() for n, b in model.named_buffers()}
    out = model(ids, mask, labels=ids.masked_fill(mask == 0, -100), media={"image": pixels})
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    for name, b in model.named_buffers():  # frozen batch norms stay in eval mode
        assert torch.equal(b, running[name]), name
