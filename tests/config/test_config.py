"""Configuration: validation names the key, overrides, YAML round trip."""

import pytest

from cotune.config import ConfigError, config_hash, dump_yaml, load_config, save_config
from cotune.model.build import check_component_names

BASE = {"model": {"llm": {"name_or_path": "some/llm"}, "encoders": {"image": {"type": "clip", "name_or_path": "some/clip"}}}}


def test_unknown_key_names_dotted_key_and_valid_keys():
    with pytest.raises(ConfigError, match=r"model\.llm\.nme_or_path: unknown key; valid keys here: .*name_or_path"):
        load_config(data={"model": {"llm": {"nme_or_path": "x"}}})


def test_unknown_component_lists_choices_and_close_match():
    config = load_config(data=BASE, overrides=["model.encoders.image.type=clipp"])  # plain data: names unchecked
    with pytest.raises(ConfigError) as err:
        check_component_names(config)
    message = str(err.value)
    assert message.startswith("model.encoders.image.type:")
    assert "did you mean 'clip'" in message and "siglip" in message and "whisper" in message


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.encoders.image.connector.type=mlp3x", "model.encoders.image.connector.type"),
        ("model.llm.adapter.type=prefix", "model.llm.adapter.type"),
        ("model.llm.dtype=int8", "model.llm.dtype"),
        ("model.encoders.image.reduce=max", "model.encoders.image.reduce"),
        ("model.llm.adapter.dim=zero", "model.llm.adapter.dim"),
        ("model.llm.adapter.groups=3", "model.llm.adapter.groups"),
        ("model.routing.mode=sideways", "model.routing.mode"),
        ("model.encoders.image.trainable=adapter", "model.encoders.image.trainable"),
        ("model.llm.trainable=full", None),  # valid: float32 default
    ],
)
def test_bad_values_name_their_key(override, key):
    if key is None:
        load_config(data=BASE, overrides=[override])
        return
    with pytest.raises(ConfigError) as err:
        check_component_names(load_config(data=BASE, overrides=[override]))  # values fail in load_config, names here
    assert str(err.value).startswith(key), str(err.value)


@pytest.mark.parametrize(
    "dataset, key, fragment",
    [
        ({"kind": "jsonl"}, None, None),
        ({"kind": "jsonll"}, "data.eval[1].kind", "did you mean 'jsonl'"),
        ({"kind": "scienceqa", "prompt_format": "CQM-A"}, None, None),
        ({"kind": "scienceqa", "prompt_format": "QCM-X"}, "data.eval[1].prompt_format", "'QCM-A'"),
    ],
)
def test_reader_names_are_checked_with_the_components(dataset, key, fragment):
    data = {"eval": [{"kind": "jsonl", "path": "a", "name": "a"}, {"path": "b", **dataset}]}
    config = load_config(data={**BASE, "data": data})
    if key is None:
        check_component_names(config)
        return
    with pytest.raises(ConfigError) as err:
        check_component_names(config)
    assert str(err.value).startswith(f"{key}:") and fragment in str(err.value), str(err.value)


def test_full_training_requires_float32():
    with pytest.raises(ConfigError, match=r"model\.llm\.dtype: trainable 'full'"):
        load_config(data=BASE, overrides=["model.llm.trainable=full", "model.llm.dtype=bfloat16"])


def test_lora_trainability_derives_adapter_type():
    cfg = load_config(data=BASE, overrides=["model.llm.trainable=lora"])
    assert cfg.model.llm.adapter.type == "lora"
    with pytest.raises(ConfigError, match="trainable: 'lora'"):
        load_config(data=BASE, overrides=["model.llm.trainable=lora", "model.llm.adapter.type=mm_adapter"])


def test_overrides_create_nested_entries_and_parse_yaml_scalars():
    cfg = load_config(
        data=BASE,
        overrides=[
            "model.encoders.audio.type=whisper",
            "model.encoders.audio.name_or_path=some/whisper",
            "model.encoders.image.layers=[4, 8, 12]",
            "model.llm.adapter.temperature=5",
        ],
    )
    assert cfg.model.encoders["image"].layers == (4, 8, 12)
    assert cfg.model.llm.adapter.temperature == 5.0
    assert cfg.model.encoders["audio"].placeholder == "<audio>"
    assert cfg.model.resolved_modality_keys() == ["text", "image", "audio", "audio+image"]


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(data=BASE, overrides=["model.llm.dtype"])
    with pytest.raises(ConfigError, match=r"model\.llm\.name_or_path: is a value"):
        load_config(data=BASE, overrides=["model.llm.name_or_path.x=1"])
    with pytest.raises(ConfigError, match=r"model\.llm\.dtype: expected a string"):
        load_config(data=BASE, overrides=["model.llm.dtype.x=1"])


def test_duplicate_placeholders_and_reserved_names():
    data = {"model": {"llm": {"name_or_path": "x"}, "encoders": {
        "a": {"type": "clip", "name_or_path": "c", "placeholder": "<img>"},
        "b": {"type": "siglip", "name_or_path": "s", "placeholder": "<img>"},
    }}}
    with pytest.raises(ConfigError, match=r"model\.encoders\.b\.placeholder"):
        load_config(data=data)
    with pytest.raises(ConfigError, match="reserved"):
        load_config(data={"model": {"llm": {"name_or_path": "x"}, "encoders": {"text": {"type": "clip", "name_or_path": "c"}}}})


def test_explicit_modality_keys_are_checked():
    with pytest.raises(ConfigError, match="names no configured encoder"):
        load_config(data=BASE, overrides=["model.routing.modality_keys=[text, video]"])
    cfg = load_config(data=BASE, overrides=["model.routing.modality_keys=[image, text]"])
    assert cfg.model.resolved_modality_keys() == ["image", "text"]


def test_yaml_round_trip_and_hash(tmp_path):
    cfg = load_config(data=BASE, overrides=["model.llm.trainable=adapter", "model.llm.adapter.type=mm_adapter"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    changed = load_config(path, overrides=["model.llm.adapter.dim=16"])
    assert config_hash(changed) != config_hash(cfg)
    assert "placeholder: <image>" in dump_yaml(cfg)


def test_missing_required_key_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.llm\.name_or_path: required key is missing"):
        load_config(data={"model": {"llm": {}}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
