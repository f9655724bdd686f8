"""First use without dead ends: optional packages that are not installed are named with the extra
that installs them (one ``cotune: error:`` line, no traceback), and a run's saved config works from
any directory (local paths stored absolute, hub ids kept as ids)."""

import json
import os
import shutil
import subprocess
import sys

import yaml

from cotune.cli.main import main
from cotune.config import load_config
from cotune.config.paths import absolute_paths
from cotune.testing import corpus
from cotune.testing import tiny

#: Runs ``cotune`` commands in a fresh interpreter where the named packages cannot be imported (a
#: ``None`` entry in ``sys.modules`` makes ``import`` raise ModuleNotFoundError, as for a package
#: that is not installed); prints [exit status, stderr] of each command as JSON.
WITHOUT = """
import io, json, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
from cotune.cli.main import main
results = []
for argv in json.loads(sys.argv[2]):
    sys.stderr = io.StringIO()
    status = main(["--log-level", "warning", *argv])
    results.append([status, sys.stderr.getvalue()])
    sys.stderr = sys.__stderr__
print(json.dumps(results))
"""
EXTRAS = ("soundfile", "soxr", "datasets", "matplotlib", "tensorboard", "wandb", "gguf")


def cotune_without(packages, commands):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")])), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", WITHOUT, ",".join(packages), json.dumps(commands)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_missing_optional_package_is_one_line_naming_its_extra(tiny_root, tmp_path):
    alpaca = corpus.write_alpaca(tmp_path / "alpaca.json")
    (tmp_path / "aqa").mkdir()
    audioqa = corpus.write_audioqa(tmp_path / "aqa")
    run = tmp_path / "past-run"  # what cotune report reads: metrics.jsonl
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n" for s in (1, 2, 3)))
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump(corpus.run_config(tiny_root, tmp_path / "data", max_steps=1)))
    whisper = {"audio": {"type": "whisper", "name_or_path": str(tiny.save_encoder(tiny_root, "whisper")), "reduce": "all",
                         "connector": {"type": "audio-pool", "stride": 4}}}
    audio_model = tmp_path / "audio.yaml"
    audio_model.write_text(yaml.safe_dump({**tiny.model_config(tiny.save_llm(tiny_root), whisper),
                                           "data": {"train": [{"kind": "audioqa", "path": str(audioqa)}]}}))
    gguf = tmp_path / "gguf.yaml"
    gguf.write_text(yaml.safe_dump({**tiny.model_config(tiny.save_llm(tiny_root), gguf_file="model.gguf"),
                                    "data": {"train": [{"kind": "alpaca", "path": str(alpaca)}]}}))
    cases = [  # (command, the extra its error must name; None: works without any extra)
        (["data", "check", str(alpaca), "--kind", "alpaca"], None),
        (["data", "check", str(audioqa), "--kind", "audioqa"], "audio"),
        (["data", "check", str(audio_model)], "audio"),
        (["data", "check", "someone/some-dataset", "--kind", "hf"], "hf-datasets"),
        (["report", str(run), "--out", str(tmp_path / "report")], "report"),
        (["train", str(train), "--set", "train.report_to=[tensorboard]", "--out", str(tmp_path / "tb")], "tensorboard"),
        (["train", str(train), "--set", "train.report_to=[wandb]", "--out", str(tmp_path / "wandb")], "wandb"),
        (["data", "check", str(gguf)], "zoo"),
    ]
    results = cotune_without(EXTRAS, [command for command, _ in cases])
    for (command, extra), (status, err) in zip(cases, results, strict=True):
        lines = err.strip().splitlines()
        if extra is None:
            assert status == 0, (command, lines)
            continue
        assert status == 2 and "Traceback" not in err, (command, lines)
        assert lines[-1].startswith("cotune: error:") and f"pip install 'cotune[{extra}]'" in lines[-1], (command, lines)


def test_local_paths_are_stored_absolute_and_hub_ids_as_written(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.json").write_text("[]")
    config = load_config(data={
        "model": {"llm": {"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}, "encoders": {"audio": {
            "type": "whisper", "name_or_path": "openai/whisper-tiny.en", "layers": [-1], "reduce": "mean"}}},
        "data": {"train": [{"kind": "alpaca", "path": "data/a.json"}, {"kind": "hf", "path": "someone/some-dataset"}],
                 "eval": [{"kind": "alpaca", "path": "data/typo.json", "name": "val"}], "feature_cache": "cache/features"},
    })
    resolved = absolute_paths(config, tmp_path)
    assert resolved.model == config.model  # hub ids
    assert resolved.data.train[0].path == str(tmp_path / "data" / "a.json")
    assert resolved.data.train[1].path == "someone/some-dataset"  # an hf dataset id
    assert resolved.data.eval[0].path == "data/typo.json"  # the reader's error will name it as written
    assert resolved.data.feature_cache == str(tmp_path / "cache" / "features")  # created by cotune
    assert absolute_paths(resolved, tmp_path / "elsewhere") == resolved


def test_a_run_started_with_relative_paths_resumes_and_checks_from_another_directory(tiny_root, tmp_path, monkeypatch, capsys):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    raw = corpus.run_config(tiny_root, work / "data", max_steps=1)
    shutil.copytree(tiny.save_llm(tiny_root), work / "models" / "llm")
    shutil.copytree(tiny.save_encoder(tiny_root, "clip"), work / "models" / "clip")
    raw["model"]["llm"]["name_or_path"] = "models/llm"
    raw["model"]["encoders"]["image"]["name_or_path"] = "models/clip"
    raw["data"]["train"][0]["path"], raw["data"]["train"][1]["path"] = "data/sqa", "data/alpaca.json"
    (work / "run.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(work)
    assert main(["--log-level", "warning", "train", "run.yaml", "--out", "run"]) == 0
    saved = load_config(work / "run" / "config.yaml")
    assert saved.model.llm.name_or_path == str(work / "models" / "llm")
    assert saved.model.encoders["image"].name_or_path == str(work / "models" / "clip")
    assert [d.path for d in saved.data.train] == [str(work / "data" / "sqa"), str(work / "data" / "alpaca.json")]
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["--log-level", "warning", "data", "check", str(work / "run" / "config.yaml")]) == 0, capsys.readouterr().err
    assert main(["--log-level", "warning", "train", "--resume", str(work / "run"), "--set", "train.max_steps=2"]) == 0, \
        capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
