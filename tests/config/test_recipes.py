"""Every shipped recipe parses and validates, and survives a save/load round trip."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest
import yaml

from cotune.config import CotuneConfig, config_hash, load_config, save_config

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))
# Root sections a recipe may set: the config's own.
ROOT_KEYS = {f.name for f in fields(CotuneConfig)}


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"lavin-7b-scienceqa.yaml", "lavin-13b-scienceqa.yaml", "llava-lora.yaml", "audio-whisper-lora.yaml",
            "lavin-lite-7b-scienceqa.yaml", "lavin-lite-13b-scienceqa.yaml"} <= names
    # The headline feature ships in a recipe.
    assert load_config(RECIPES_DIR / "audio-whisper-lora.yaml").balance.method == "commit"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path):
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= ROOT_KEYS, f"{path.name}: unexpected root keys {sorted(set(raw) - ROOT_KEYS)}"
    assert path.read_text().startswith("#"), f"{path.name}: needs a comment header saying what it reproduces"
    config = load_config(path)
    assert isinstance(config, CotuneConfig)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_round_trip(path, tmp_path):
    config = load_config(path)
    again = load_config(save_config(config, tmp_path / path.name))
    assert again == config
    assert config_hash(again) == config_hash(config)


def test_lavin_recipes_differ_only_in_llm_and_temperature():
    seven = load_config(RECIPES_DIR / "lavin-7b-scienceqa.yaml").model
    thirteen = load_config(RECIPES_DIR / "lavin-13b-scienceqa.yaml").model
    assert (seven.llm.name_or_path, thirteen.llm.name_or_path) == ("huggyllama/llama-7b", "huggyllama/llama-13b")
    assert (seven.llm.adapter.temperature, thirteen.llm.adapter.temperature) == (10.0, 5.0)
    assert thirteen.encoders["image"].adapter.temperature == 5.0
    for model in (seven, thirteen):
        image = model.encoders["image"]
        assert image.layers == (4, 8, 12, 16, 20, 24) and image.reduce == "cls"
        assert image.adapter.type == model.llm.adapter.type == "mm_adapter"
        assert (image.adapter.dim, image.adapter.groups, image.adapter.experts) == (8, 2, 2)
        assert image.connector.type == "lavin-neck" and image.connector.hidden == 128


def test_lavin_recipes_train_as_lavin_did():
    for name in ("lavin-7b-scienceqa.yaml", "lavin-13b-scienceqa.yaml"):
        config = load_config(RECIPES_DIR / name)
        train, data = config.train, config.data
        assert train.betas == (0.9, 0.95) and train.weight_decay == 0.02 and train.lr == pytest.approx(9e-3 * 32 / 256)
        assert (train.warmup_epochs, train.schedule, train.epochs, train.max_grad_norm) == (2, "cosine", 20, None)
        assert data.batch_size * train.grad_accum == 32  # effective batch on one process
        assert (data.template, data.max_length, data.image_transform) == ("lavin", 512, "square")
        assert data.train[0].prompt_format == "QCM-ALE"
        assert config.model.encoders["image"].image_norm == "imagenet"


@pytest.mark.parametrize("size", ["7b", "13b"])
def test_lite_recipes_are_the_full_ones_with_lavin_lites_memory_settings(size):
    """LaVIN-lite (scripts/finetuning_sqa_*_lite.sh): 4-bit LLM, gradient checkpointing, batch 1 x
    accumulation 32; nothing else differs, so the trained parameters are the same."""
    full = load_config(RECIPES_DIR / f"lavin-{size}-scienceqa.yaml")
    lite = load_config(RECIPES_DIR / f"lavin-lite-{size}-scienceqa.yaml")
    quant = lite.model.llm.quantization
    assert (quant.bits, quant.type, quant.double_quant, quant.compute_dtype) == (4, "nf4", True, "bfloat16")
    assert lite.model.encoders["image"].quantization is None
    assert (lite.data.batch_size, lite.train.grad_accum, lite.train.gradient_checkpointing) == (1, 32, True)
    same_llm = replace(lite.model.llm, quantization=None, dtype=full.model.llm.dtype)
    assert replace(lite.model, llm=same_llm) == full.model
    assert replace(lite.data, batch_size=full.data.batch_size) == full.data
    assert replace(lite.train, grad_accum=full.train.grad_accum, gradient_checkpointing=False) == full.train
    assert lite.data.batch_size * lite.train.grad_accum == full.data.batch_size * full.train.grad_accum == 32


@pytest.mark.parametrize("path", sorted((RECIPES_DIR.parent / "configs" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_parse(path):
    from accelerate.commands.config.config_args import load_config_from_file

    assert load_config_from_file(str(path)).num_processes >= 2
