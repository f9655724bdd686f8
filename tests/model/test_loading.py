"""Loading: saved model directories, hub ids offline, trust_remote_code, processors, parallel blocks."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cotune.backbones import LoadError
from cotune.config import load_config
from cotune.model import build_model, save_model
from cotune.rundir import RunDir
from cotune.testing import tiny


def test_save_and_load_model_directory(tiny_root, tmp_path):
    config = load_config(data=tiny.model_config(tiny.save_llm(tiny_root), {"image": {
        "type": "clip", "name_or_path": str(tiny.save_encoder(tiny_root, "clip")), "layers": [1, 3], "reduce": "cls",
        "trainable": "adapter", "adapter": {"type": "mm_adapter"}, "connector": {"type": "lavin-neck"},
    }}, trainable="adapter", adapter={"type": "mm_adapter"}))
    model = build_model(config)
    tiny.randomise_trainables(model)
    save_model(model, config, tmp_path / "saved")
    manifest = json.loads((tmp_path / "saved" / "manifest.json").read_text())
    assert manifest["trainable_params"] == sum(v.numel() for v in model.trainable_state_dict().values())
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.yaml", "manifest.json", "trainable.safetensors"]

    loaded, loaded_config = RunDir(tmp_path / "saved").load()
    assert loaded_config == config
    ids = tiny.encode(model, "what shape", {"image": 2})
    pixels = torch.randn(1, 3, 30, 30)
    with torch.no_grad():
        assert torch.equal(loaded(ids, media={"image": pixels}).logits, model(ids, media={"image": pixels}).logits)
    with pytest.raises(FileNotFoundError, match="trainable.safetensors is missing"):
        (tmp_path / "saved" / "trainable.safetensors").unlink()
        RunDir(tmp_path / "saved").load()


def _fake_hub(cache: Path, repo: str, source: Path) -> None:
    """Lays ``source``'s files out as the hub cache would hold ``repo`` (one snapshot)."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(source, folder / "snapshots" / revision)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)


def test_backbones_load_by_hub_id_offline(tiny_root, tmp_path):
    cache = tmp_path / "hub"
    _fake_hub(cache, "tiny-org/llama", tiny.save_llm(tiny_root))
    _fake_hub(cache, "tiny-org/clip", tiny.save_encoder(tiny_root, "clip"))
    script = textwrap.dedent("""
        import json
        from cotune.config import load_config
        from cotune.model import build_model
        cfg = load_config(data={"model": {"llm": {"name_or_path": "tiny-org/llama"},
            "encoders": {"image": {"type": "clip", "name_or_path": "tiny-org/clip"}}}})
        model = build_model(cfg)
        print(json.dumps({"processor": type(model.encoders["image"].processor).__name__,
                          "tokens": model.num_media_tokens("image"), "placeholder": model.placeholder_ids["image"]}))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["processor"].startswith("CLIPImageProcessor")
    assert result["tokens"] == 25 and result["placeholder"] == tiny.TOKENIZER_SIZE


REMOTE_CONFIG = '''
from transformers import LlamaConfig
class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny-remote"
'''
REMOTE_MODEL = '''
from transformers import LlamaForCausalLM
from .configuration_remote import TinyRemoteConfig
class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig
'''


def test_remote_code_runs_only_when_the_config_allows_it(tiny_root, tmp_path):
    path = tmp_path / "remote"
    shutil.copytree(tiny.save_llm(tiny_root), path)
    (path / "configuration_remote.py").write_text(REMOTE_CONFIG)
    (path / "modeling_remote.py").write_text(REMOTE_MODEL)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="tiny-remote", architectures=["TinyRemoteForCausalLM"], auto_map={
        "AutoConfig": "configuration_remote.TinyRemoteConfig",
        "AutoModelForCausalLM": "modeling_remote.TinyRemoteForCausalLM",
    })
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match="trust_remote_code"):
        build_model(load_config(data=tiny.model_config(path)))
    model = build_model(load_config(data=tiny.model_config(path, trust_remote_code=True)))
    assert type(model.llm).__name__ == "TinyRemoteForCausalLM"


def test_processors_load_with_encoders_and_imagenet_normalisation(tiny_root):
    model = tiny.build(tiny_root, "llama", {
        "image": {"kind": "clip", "image_norm": "imagenet"},
        "audio": {"kind": "whisper"},
    })
    image_processor = model.encoders["image"].processor
    assert list(image_processor.image_mean) == [0.485, 0.456, 0.406]
    assert list(image_processor.image_std) == [0.229, 0.224, 0.225]
    assert type(model.encoders["audio"].processor).__name__ == "WhisperFeatureExtractor"
    from PIL import Image

    pixels = image_processor(images=Image.new("RGB", (40, 50), "red"), return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 30, 30)


def test_parallel_block_adapter_touches_attention_only(tiny_root):
    """Phi's single norm feeds attention and MLP; the adapter must change the attention input only."""
    model = tiny.build(tiny_root, "phi", trainable="adapter", adapter={"type": "rep_adapter"})
    tiny.randomise_trainables(model)
    layer = model.llm.model.layers[0]
    seen = {}
    layer.input_layernorm.register_forward_hook(lambda m, i, o: seen.__setitem__("norm", o))
    layer.mlp.register_forward_pre_hook(lambda m, args: seen.__setitem__("mlp", args[0]))
    layer.self_attn.module.register_forward_pre_hook(
        lambda m, args, kwargs: seen.__setitem__("attn", kwargs.get("hidden_states", args[0] if args else None)),
        with_kwargs=True,
    )
    with torch.no_grad():
        model(tiny.encode(model, "the answer is yes"))
    assert torch.equal(seen["mlp"], seen["norm"])
    assert not torch.allclose(seen["attn"], seen["norm"])
    torch.testing.assert_close(seen["attn"], layer.self_attn.adapter(seen["norm"]))
