"""Training: frozen weights stay, accumulation equals a big batch, groups and schedules, faults,
checkpoints hold only trainable keys, kill-and-resume and two processes reproduce the reference."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cotune import load
from cotune.config import ConfigError, load_config
from cotune.testing import corpus
from cotune.train import Trainer, TrainingError
from cotune.train.groups import GroupCoverageError, component_parameters, resolve_settings
from cotune.train.schedules import lr_multiplier


def config(tiny_root, tmp_path, overrides=(), **train):
    return load_config(data=corpus.run_config(tiny_root, tmp_path / "data", **train), overrides=overrides)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_moves_only_trainable_weights_and_saves_only_them(tiny_root, tmp_path):
    trainer = Trainer(config(tiny_root, tmp_path, max_steps=4, checkpoint_every=2), tmp_path / "run")
    trainer.setup()
    model = trainer.model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    final = trainer.run()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    moved = [n for n, p in model.named_parameters() if n in start and not torch.equal(p, start[n])]
    assert len(moved) == len(start)
    trainable = set(start)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000004"
    assert set(load_file(checkpoint / "trainable.safetensors")) == trainable
    assert set(load_file(final / "trainable.safetensors")) == trainable
    records = metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("loss", "tokens_per_s", "memory/peak_rss_gb", "lr/llm", "lr/connector.image", "grad_norm/encoder.image"):
        assert key in records[-1]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["kept"] == 16
    # The saved config is accepted as it is, and the run loads as a model.
    assert load_config(tmp_path / "run" / "config.yaml") == trainer.config
    reloaded = load(tmp_path / "run")
    for name, value in reloaded.trainable_state_dict().items():
        assert torch.equal(value, model.trainable_state_dict()[name])


@pytest.mark.parametrize("batch, accum", [(2, 2), (1, 4)])
def test_token_normalised_accumulation_equals_one_big_batch(tiny_root, tmp_path, batch, accum):
    # eps = 1 makes Adam's update nearly linear in the gradient, so rounding-level gradient
    # differences stay rounding-level in the weights (with eps 1e-8 a 1e-12 gradient becomes a full step).
    common = dict(max_steps=2, schedule="constant", warmup_steps=0, max_grad_norm=None, lr=5e-1, eps=1.0)
    big = Trainer(config(tiny_root, tmp_path, ["data.batch_size=4"], grad_accum=1, **common), tmp_path / "big")
    big.run()
    split = Trainer(config(tiny_root, tmp_path, [f"data.batch_size={batch}"], grad_accum=accum, **common), tmp_path / "split")
    split.run()
    a, b = big.model.trainable_state_dict(), split.model.trainable_state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-6, rtol=1e-5)
    for x, y in zip(metrics(tmp_path / "big"), metrics(tmp_path / "split")):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6)


def test_every_trainable_parameter_is_in_exactly_one_group(tiny_root, tmp_path):
    trainer = Trainer(config(tiny_root, tmp_path), tmp_path / "run")
    trainer.setup()
    model = trainer.model
    groups = component_parameters(model)
    assert set(groups) == {"llm", "encoder.image", "connector.image", "modality_embedding"}
    assert sum(len(v) for v in groups.values()) == sum(1 for p in model.parameters() if p.requires_grad)
    decay = {g["group"]: g["weight_decay"] for g in trainer.optimizer.param_groups if g["params"][0].ndim >= 2}
    no_decay = [g for g in trainer.optimizer.param_groups if g["params"][0].ndim < 2]
    assert all(g["weight_decay"] == 0.0 for g in no_decay) and set(decay) == set(groups)
    # A parameter shared by two components is caught.
    model.connectors["image"].shared = model.modality_embedding.weight
    with pytest.raises(GroupCoverageError, match="also in group"):
        component_parameters(model)
    with pytest.raises(ConfigError, match="train.groups.encoder.audio: no such component"):
        Trainer(config(tiny_root, tmp_path, ["train.groups.encoder.audio.lr=1"]), tmp_path / "other").setup()


def test_schedule_shapes():
    from cotune.train.groups import GroupSettings

    cosine = GroupSettings("g", 1.0, 0.0, warmup=4, schedule="cosine", min_lr_ratio=0.1, start_step=0)
    values = [lr_multiplier(cosine, s, 20) for s in range(20)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert all(a >= b for a, b in zip(values[4:], values[5:]))
    linear = GroupSettings("g", 1.0, 0.0, warmup=0, schedule="linear", min_lr_ratio=0.0, start_step=5)
    assert [lr_multiplier(linear, s, 15) for s in (0, 4, 5, 10, 15)] == [0.0, 0.0, 1.0, 0.5, 0.0]
    constant = GroupSettings("g", 1.0, 0.0, warmup=2, schedule="constant", min_lr_ratio=0.0, start_step=0)
    assert [lr_multiplier(constant, s, 10) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_each_group_follows_its_own_schedule(tiny_root, tmp_path):
    cfg = config(tiny_root, tmp_path, [
        "train.groups.connector.image.start_step=3", "train.groups.connector.image.lr=2e-2",
        "train.groups.llm.schedule=constant", "train.groups.encoder.image.warmup_steps=4",
    ], max_steps=6, warmup_steps=2, schedule="linear")
    Trainer(cfg, tmp_path / "run").run()
    records = metrics(tmp_path / "run")
    assert [r["lr/connector.image"] for r in records][:4] == [0.0, 0.0, 0.0, pytest.approx(1e-2)]
    assert [r["lr/llm"] for r in records] == pytest.approx([5e-3, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2])
    assert [r["lr/encoder.image"] for r in records][:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    warm = resolve_settings("modality_embedding", cfg.train, steps_per_epoch=8)
    assert warm.warmup == 2 and warm.schedule == "linear"
    assert resolve_settings("llm", load_config(data=corpus.run_config(tiny_root, tmp_path / "data", warmup_steps=None, warmup_epochs=1.5)).train, 8).warmup == 12


def poison(trainer, steps):
    """Makes the LLM's logits NaN during the given optimizer steps (0-based)."""

    def hook(_module, _inputs, output):
        return output * float("nan") if trainer.state.step in steps else output

    trainer.model.llm.lm_head.register_forward_hook(hook)


def test_non_finite_steps_are_skipped_counted_and_a_run_of_them_stops(tiny_root, tmp_path):
    trainer = Trainer(config(tiny_root, tmp_path, max_steps=5, max_bad_steps=2), tmp_path / "run")
    trainer.setup()
    poison(trainer, {2})
    before = {}

    def remember(_module, _inputs, _output):
        if trainer.state.step == 2 and not before:
            before.update({k: v.clone() for k, v in trainer.model.trainable_state_dict().items()})

    trainer.model.llm.lm_head.register_forward_hook(remember)
    trainer.run()
    records = metrics(tmp_path / "run")
    assert records[2]["skipped"] == 1 and "lr/llm" not in records[2] and records[-1]["bad_steps"] == 1
    assert trainer.state.bad_steps == 1 and trainer.state.step == 5

    stopping = Trainer(config(tiny_root, tmp_path, max_steps=8, max_bad_steps=2), tmp_path / "stop")
    stopping.setup()
    poison(stopping, set(range(1, 8)))
    with pytest.raises(TrainingError, match="2 consecutive steps"):
        stopping.run()
    assert (tmp_path / "stop" / "checkpoints" / "step-00000003").is_dir()


LAUNCHED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _reap_launched():
    """Kills whatever a failed or timed-out test left running (torchrun children included)."""
    yield
    while LAUNCHED:
        process = LAUNCHED.pop()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _launch(args, env=None):
    process = subprocess.Popen([sys.executable, "-m", "cotune", "--log-level", "warning", "train", *args],
                               env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    LAUNCHED.append(process)
    return process


def _wait_for_step(run_dir, step, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = run_dir / "metrics.jsonl"
        if path.is_file() and any(json.loads(line)["step"] >= step for line in path.read_text().splitlines() if line.strip()):
            return
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.02)
    raise TimeoutError(f"step {step} not reached")


def _write_config(tiny_root, tmp_path, **train):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(corpus.run_config(tiny_root, tmp_path / "data", **train)))
    return path


def test_sigkill_and_resume_reproduce_the_uninterrupted_run(tiny_root, tmp_path):
    cfg = _write_config(tiny_root, tmp_path, max_steps=24, checkpoint_every=1)
    reference = _launch([str(cfg), "--out", str(tmp_path / "ref")])
    assert reference.wait(timeout=300) == 0, reference.communicate()[1][-2000:]

    killed = _launch([str(cfg), "--out", str(tmp_path / "run")])
    _wait_for_step(tmp_path / "run", 6, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "run" / "model").exists()
    resumed = _launch(["--resume", str(tmp_path / "run")])
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1][-2000:]

    assert [r["loss"] for r in metrics(tmp_path / "run")] == [r["loss"] for r in metrics(tmp_path / "ref")]
    final, expected = load_file(tmp_path / "run" / "model" / "trainable.safetensors"), load_file(tmp_path / "ref" / "model" / "trainable.safetensors")
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_sigterm_saves_a_checkpoint_before_exiting(tiny_root, tmp_path):
    cfg = _write_config(tiny_root, tmp_path, max_steps=400, checkpoint_every=1000)
    process = _launch([str(cfg), "--out", str(tmp_path / "run")])
    _wait_for_step(tmp_path / "run", 3, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1
    step = json.loads((checkpoints[0] / "state.json").read_text())["step"]
    assert step >= 3 and step == metrics(tmp_path / "run")[-1]["step"]


def test_two_processes_match_one_process_with_the_doubled_batch(tiny_root, tmp_path):
    # eps = 1: see the accumulation test (keeps rounding-level gradient differences rounding-level).
    cfg = _write_config(tiny_root, tmp_path, max_steps=4, schedule="constant", warmup_steps=0, max_grad_norm=None, eps=1.0, lr=0.5)
    single = _launch([str(cfg), "--out", str(tmp_path / "one"), "--set", "data.batch_size=2"])
    assert single.wait(timeout=300) == 0, single.communicate()[1][-2000:]
    double = _launch([str(cfg), "--out", str(tmp_path / "two"), "--set", "data.batch_size=1", "--nproc", "2"])
    assert double.wait(timeout=300) == 0, double.communicate()[1][-3000:]
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    one, two = load_file(tmp_path / "one" / "model" / "trainable.safetensors"), load_file(tmp_path / "two" / "model" / "trainable.safetensors")
    for name in one:
        torch.testing.assert_close(one[name], two[name], atol=1e-4, rtol=1e-3)


def test_periodic_validation_logs_eval_loss(tiny_root, tmp_path):
    raw = corpus.run_config(tiny_root, tmp_path / "data", max_steps=4, eval_every=2)
    raw["data"]["eval"] = [{"kind": "alpaca", "path": raw["data"]["train"][1]["path"], "name": "alpaca:val"}]
    Trainer(load_config(data=raw), tmp_path / "run").run()
    records = metrics(tmp_path / "run")
    assert "eval/loss" not in records[0] and "eval/alpaca:val/loss" in records[1] and "eval/loss" in records[3]
    assert records[1]["eval/loss"] == records[1]["eval/alpaca:val/loss"] and math.isfinite(records[3]["eval/loss"])


def test_unavailable_reporting_backend_is_a_clear_error(tiny_root, tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        trainer = Trainer(config(tiny_root, tmp_path, ["train.report_to=[tensorboard]"], max_steps=1), tmp_path / "run")
        with pytest.raises(ImportError, match=r"pip install 'cotune\[tensorboard\]'"):
            trainer.setup()
    else:
        pytest.skip("tensorboard is installed")


def test_existing_run_directory_is_not_overwritten(tiny_root, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(config(tiny_root, tmp_path, max_steps=1), tmp_path / "run").setup()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(config(tiny_root, tmp_path, max_steps=1), tmp_path / "run", resume=True).setup()


def test_bf16_autocast_trains_on_cpu(tiny_root, tmp_path):
    trainer = Trainer(config(tiny_root, tmp_path, ["train.precision=bf16"], max_steps=3), tmp_path / "run")
    trainer.setup()
    # The float32 LM head runs in bfloat16 only under autocast.
    dtypes = []
    trainer.model.llm.lm_head.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype) if trainer.model.training else None)
    trainer.run()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    records = metrics(tmp_path / "run")
    assert all(math.isfinite(r["loss"]) and "skipped" not in r for r in records)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)


def test_callbacks_see_every_step_and_their_time_is_not_step_time(tiny_root, tmp_path):
    class Recorder:
        def __init__(self):
            self.events = []

        def on_train_begin(self, trainer):
            self.events.append(("begin", trainer.state.step))

        def on_step_end(self, trainer, record):
            called = time.perf_counter()
            time.sleep(0.5)  # a benchmark's evaluation between steps
            self.events.append(("step", record["step"], record["step_seconds"], called, time.perf_counter()))

    recorder, only_begin = Recorder(), type("OnlyBegin", (), {"on_train_begin": lambda self, trainer: None})()
    Trainer(config(tiny_root, tmp_path, max_steps=3), tmp_path / "run", callbacks=[recorder, only_begin]).run()
    assert [e[:2] for e in recorder.events] == [("begin", 0), ("step", 1), ("step", 2), ("step", 3)]
    seconds = [e[2] for e in recorder.events[1:]]
    assert all(s > 0 for s in seconds), seconds
    # The callback's sleep is never counted, whatever the machine's speed: a step's time fits in the
    # wall time from the end of the previous step's callback to the call of its own.
    steps = recorder.events[1:]
    for previous, current in zip(steps, steps[1:]):
        assert current[2] <= current[3] - previous[4], (previous, current)
    assert [r["step_seconds"] for r in metrics(tmp_path / "run") if "loss" in r] == seconds
