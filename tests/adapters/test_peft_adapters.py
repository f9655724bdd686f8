"""A LoRA run's adapters load with PEFT onto the plain base models, and every run says in a model
card (README.md) what it is."""

import json

import peft
import torch
import transformers
import yaml

from cotune import load
from cotune.config import CotuneConfig, load_config
from cotune.export.peft_adapters import write_peft_adapters
from cotune.testing import corpus
from cotune.testing import tiny
from cotune.train import Trainer

def lora_run(tiny_root, tmp_path):
    """Two training steps of a tiny LLaVA-style run with LoRA in the LLM and in CLIP."""
    Trainer(load_config(data=corpus.llava_lora_config(tiny_root, tmp_path / "data", max_steps=2)), tmp_path / "run").run()
    return tmp_path / "run"


def test_a_lora_run_writes_peft_folders_that_reproduce_it_and_a_model_card(tiny_root, tmp_path):
    run = lora_run(tiny_root, tmp_path)
    model = load(run)
    llm_folder, clip_folder = run / "model" / "peft" / "llm", run / "model" / "peft" / "encoder.image"
    config = json.loads((llm_folder / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["r"] == 4 and config["base_model_name_or_path"] == str(tiny.save_llm(tiny_root))

    ids = tiny.encode(model, "what colour is the circle")
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny.save_llm(tiny_root)).eval()
    with torch.no_grad():
        bare = base(ids).logits
        adapted = peft.PeftModel.from_pretrained(base, llm_folder).eval()
        ours, theirs = model(ids).logits, adapted(input_ids=ids).logits
    assert (ours - theirs).abs().max() <= 1e-5
    assert (ours - bare).abs().max() > 1e-4  # two steps moved the LoRA weights off zero
    # the tower's folder: PEFT on the plain CLIPVisionModel gives cotune's hidden states
    pixels = tiny.media_input("clip", 2, torch.Generator().manual_seed(0))
    clip = transformers.CLIPVisionModel.from_pretrained(tiny.save_encoder(tiny_root, "clip")).eval()
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(clip, clip_folder).eval()(pixel_values=pixels, output_hidden_states=True).hidden_states
        ours = model.encoders["image"].hidden_states(pixels)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, theirs))

    card = (run / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "cotune" and str(tiny.save_llm(tiny_root)) in front["base_model"]
    counts = json.loads((run / "model" / "manifest.json").read_text())["components"]
    assert f"| llm | {counts['llm']['total']:,} | {counts['llm']['trainable']:,} |" in card
    report = json.loads((run / "data_report.json").read_text())["datasets"]
    for name, numbers in report.items():
        assert f"| {name} |" in card and f"| {numbers['total']} | {numbers['kept']} |" in card
    assert "training loss at step 2" in card and "0.1.0" in card and "model/peft/llm" in card


def test_peft_targets_only_the_layers_cotune_adapted(tiny_root, tmp_path):
    """PEFT matches a list of names by suffix (LLaVA's CLIP got LoRA that way); the folder's pattern
    full-matches cotune's own layers, so PEFT adapts exactly those and no others."""
    model = tiny.build(tiny_root, "llama", trainable="lora", adapter={"type": "lora", "target_modules": ["q_proj", "v_proj"]})
    folders = write_peft_adapters(model, CotuneConfig(model=model.config), tmp_path / "peft")
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny.save_llm(tiny_root))
    adapted = peft.PeftModel.from_pretrained(base, folders["llm"])
    from peft.tuners.lora import LoraLayer

    theirs = sorted(n.removeprefix("base_model.model.") for n, m in adapted.named_modules() if isinstance(m, LoraLayer))
    ours = sorted(n.removeprefix("llm.") for n, m in model.named_modules() if isinstance(m, LoraLayer))
    assert theirs == ours and len(ours) == 4
