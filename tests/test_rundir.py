"""RunDir: the one place that knows where a run directory's files are and which model it holds."""

import json

import pytest

from cotune import RunDir
from cotune.config import load_config, save_config
from cotune.merge import MergeError

BASE = {"model": {"llm": {"name_or_path": "some/llm"}}}


def test_the_layout_of_a_run_directory(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.config_file == tmp_path / "run" / "config.yaml"
    assert run.metrics_file == tmp_path / "run" / "metrics.jsonl"
    assert run.data_report_file == tmp_path / "run" / "data_report.json"
    assert run.tensorboard_dir == tmp_path / "run" / "tensorboard"
    assert run.lock_file == tmp_path / "run" / ".lock"
    assert run.model_dir == tmp_path / "run" / "model"
    assert run.peft_dir == tmp_path / "run" / "model" / "peft"
    assert run.card_file == tmp_path / "run" / "README.md"
    assert run.checkpoint_dir(120) == tmp_path / "run" / "checkpoints" / "step-00000120"


def test_checkpoints_are_the_complete_ones_oldest_first(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoints() == [] and run.is_unstarted()
    for name in ("step-00000010", "step-00000002", ".step-00000012.tmp", ".rng-00000012"):
        (run.checkpoints_dir / name).mkdir(parents=True)
    (run.checkpoints_dir / "step-00000011").write_text("not a folder")
    assert [p.name for p in run.checkpoints()] == ["step-00000002", "step-00000010"]
    assert not run.is_unstarted()  # it saved a checkpoint


def test_a_start_without_a_checkpoint_leaves_an_unstarted_directory(tmp_path):
    run = RunDir(tmp_path)
    for path in (run.config_file, run.metrics_file, run.data_report_file, run.lock_file):
        path.write_text("")
    (run.checkpoints_dir / ".rng-00000001").mkdir(parents=True)
    assert run.is_unstarted() and not run.is_finished()
    (tmp_path / "notes.txt").write_text("mine")
    assert not run.is_unstarted()  # a file a run does not write: not cotune's to remove


def test_config_reads_the_final_model_then_the_run_then_says_what_is_missing(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        run.config()
    save_config(load_config(data={**BASE, "seed": 1}), run.config_file)
    with pytest.raises(FileNotFoundError, match="holds neither a saved model"):
        run.config()  # a config alone: no weights anywhere
    with pytest.raises(FileNotFoundError, match="holds neither a saved model"):
        run.load()
    (run.checkpoint_dir(3)).mkdir(parents=True)
    (run.checkpoint_dir(3) / "trainable.safetensors").write_bytes(b"")
    assert run.config().seed == 1
    save_config(load_config(data={**BASE, "seed": 2}), run.model_dir / "config.yaml")
    (run.model_dir / "manifest.json").write_text("{}")
    assert run.config().seed == 2 and run.is_finished()
    assert run.saved_model_dir() == run.model_dir
    with pytest.raises(FileNotFoundError, match="is not a saved cotune model: trainable.safetensors is missing"):
        run.load()


def test_a_merged_directory_is_recognised_and_refused_for_training(tmp_path):
    run = RunDir(tmp_path)
    assert run.merged_record() is None
    run.refuse_merged()  # not merged: nothing to refuse
    (tmp_path / "manifest.json").write_text(json.dumps({"merged": {"source_config_hash": "abc"}}))
    assert run.merged_record() == {"source_config_hash": "abc"} and run.saved_model_dir() == tmp_path
    with pytest.raises(MergeError, match="source config abc.*cannot be trained or resumed"):
        run.refuse_merged()


def test_evaluations_saved_inside_the_run_are_found(tmp_path):
    run = RunDir(tmp_path)
    for folder in ("eval-b", "eval-a/easyvqa"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "metrics.json").write_text("{}")
    (tmp_path / "eval-b" / "predictions.jsonl").write_text("")
    assert [p.relative_to(tmp_path).as_posix() for p in run.evaluations()] == ["eval-a/easyvqa/metrics.json", "eval-b/metrics.json"]
