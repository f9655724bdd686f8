"""Sharded training through the real launcher: a 2-process FSDP run on CPU (gloo) matches the
1-process run, shards the frozen backbone, checkpoints only whole trainable tensors, and resumes
exactly on 2 and on 1 process; the launch's mixed precision must agree with train.precision;
DeepSpeed configs and ``--device cuda`` without a GPU stop with one line."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cotune.cli.main import main
from cotune.config import load_config
from cotune.testing import corpus
from cotune.train.launch import LaunchError, LaunchSettings, check_launch, check_precision
from cotune.train.sharding import fsdp_plugin

ROOT = Path(__file__).resolve().parents[2]
FSDP_CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
# Each process one thread (the machine is shared); a free port per launch (tests may run side by side).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PROCESS_SHARE = re.compile(r"process (\d) holds ([\d,]+) of ([\d,]+) parameter values")


def _run(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs ``command`` in its own process group, killing the whole group if it overruns."""
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"{command} timed out: {err[-3000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def cotune(*args: str) -> list[str]:
    return [sys.executable, "-m", "cotune", "--log-level", "info", "train", *args]


def fsdp_launch(processes: int, *args: str, mixed_precision: str | None = "no", quiet: bool = False) -> list[str]:
    """``accelerate launch`` of ``cotune train`` with the shipped FSDP config; ``mixed_precision``
    overrides the config's (None: keep its bf16); ``quiet``: no launcher traceback."""
    precision = [] if mixed_precision is None else ["--mixed_precision", mixed_precision]
    return [*ACCELERATE, "--config_file", str(FSDP_CONFIG), "--num_processes", str(processes), "--main_process_port", "0",
            *precision, *(["--quiet"] if quiet else []), "-m", "cotune", "--log-level", "info", "train", *args]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def steps(run_dir: Path) -> list[dict]:
    """The optimizer steps' records (the final validation writes a record of its own)."""
    return [r for r in metrics(run_dir) if "loss" in r]


def losses(run_dir: Path) -> list[float]:
    """Every loss the run logged, training and validation, in order."""
    return [r.get("loss", r.get("eval/loss")) for r in metrics(run_dir)]


def assert_losses_close(a: Path, b: Path, rel: float = 1e-5) -> None:
    assert [r["step"] for r in metrics(a)] == [r["step"] for r in metrics(b)]
    assert losses(a) == pytest.approx(losses(b), rel=rel)


def cut_back_to(run_dir: Path, copy: Path, step: int) -> Path:
    """A copy of a finished run as it stood right after checkpoint ``step`` (later checkpoints and
    the final model removed; the resume drops the later metrics lines itself)."""
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "model")
    for checkpoint in (copy / "checkpoints").glob("step-*"):
        if int(checkpoint.name.split("-")[1]) > step:
            shutil.rmtree(checkpoint)
    return copy


@pytest.fixture(scope="module")
def runs(tiny_root, tmp_path_factory):
    """A 1-process reference (batch 2, --device cpu), and 2-process DDP and FSDP runs (batch 1 each)."""
    work = tmp_path_factory.mktemp("sharded")
    # Constant lr and eps = 1 keep rounding-level gradient differences rounding-level (see
    # test_train's accumulation test); the estimate of kappa is off in both runs (FSDP skips it).
    raw = corpus.run_config(tiny_root, work / "data", max_steps=6, checkpoint_every=3, schedule="constant",
                            warmup_steps=0, max_grad_norm=None, eps=1.0, lr=0.5)
    raw["data"]["eval"] = [{"kind": "alpaca", "path": raw["data"]["train"][1]["path"], "name": "alpaca:val"}]
    raw["balance"] = {"estimator": "none"}
    path = work / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    single = _run(cotune(str(path), "--out", str(work / "one"), "--set", "data.batch_size=2", "--device", "cpu"))
    assert single.returncode == 0, single.stderr[-3000:]
    replicated = _run(cotune(str(path), "--out", str(work / "ddp"), "--set", "data.batch_size=1", "--nproc", "2"))
    assert replicated.returncode == 0, replicated.stderr[-3000:]
    sharded = _run(fsdp_launch(2, str(path), "--out", str(work / "fsdp"), "--set", "data.batch_size=1"))
    assert sharded.returncode == 0, sharded.stderr[-5000:]
    return work, sharded.stderr


def test_device_cpu_trains_on_the_cpu(runs):
    work, _ = runs
    records = steps(work / "one")
    assert len(records) == 6 and all("memory/peak_rss_gb" in r and "memory/peak_gb" not in r for r in records)


def test_fsdp_shards_the_model_over_both_processes(runs):
    _, log = runs
    shares = {int(m[1]): (int(m[2].replace(",", "")), int(m[3].replace(",", ""))) for m in PROCESS_SHARE.finditer(log)}
    assert set(shares) == {0, 1}, log[-3000:]
    total = shares[0][1]
    assert all(0 < held < total for held, _ in shares.values())
    assert sum(held for held, _ in shares.values()) == total


def test_two_fsdp_processes_match_one_process_and_ddp(runs):
    work, _ = runs
    assert_losses_close(work / "one", work / "fsdp")  # training steps and the final validation
    assert "eval/loss" in metrics(work / "fsdp")[-1]
    # Against DDP on the same per-process batches only the reduction differs (reduce-scatter of
    # shards, then a sum of the shards' squared norms), so gradients and weights agree closely
    # (bit for bit on torch 2.13); against one process the batch split adds rounding of its own.
    ddp, fsdp = steps(work / "ddp"), steps(work / "fsdp")
    for group in ("llm", "encoder.image", "connector.image", "modality_embedding"):
        key = f"grad_norm/{group}"
        assert [r[key] for r in fsdp] == pytest.approx([r[key] for r in ddp], rel=1e-5, abs=1e-12)
        assert any(r[key] > 0 for r in fsdp)
    one, two = (load_file(work / run / "model" / "trainable.safetensors") for run in ("one", "fsdp"))
    replicated = load_file(work / "ddp" / "model" / "trainable.safetensors")
    assert set(one) == set(two) == set(replicated)
    for name in one:
        torch.testing.assert_close(two[name], replicated[name], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(two[name], one[name], atol=1e-3, rtol=1e-3)
    manifest = json.loads((work / "fsdp" / "model" / "manifest.json").read_text())
    assert manifest["components"] == json.loads((work / "one" / "model" / "manifest.json").read_text())["components"]


def test_fsdp_checkpoints_hold_whole_trainable_tensors_only(runs):
    work, _ = runs
    for step in (3, 6):
        sharded = work / "fsdp" / "checkpoints" / f"step-{step:08d}"
        reference = work / "one" / "checkpoints" / f"step-{step:08d}"
        a, b = load_file(reference / "trainable.safetensors"), load_file(sharded / "trainable.safetensors")
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
        assert sum(v.numel() for v in b.values()) == sum(c["trainable"] for c in json.loads((work / "one" / "model" / "manifest.json").read_text())["components"].values())
        x = torch.load(reference / "optimizer.pt", weights_only=True)
        y = torch.load(sharded / "optimizer.pt", weights_only=True)
        assert [g["params"] for g in x["param_groups"]] == [g["params"] for g in y["param_groups"]]
        assert {i: s["exp_avg"].shape for i, s in x["state"].items()} == {i: s["exp_avg"].shape for i, s in y["state"].items()}
        assert sorted(p.name for p in sharded.iterdir()) == ["manifest.json", "optimizer.pt", "rng-rank0.pt", "rng-rank1.pt", "state.json", "trainable.safetensors"]


def test_fsdp_resumes_exactly_on_two_processes(runs):
    work, _ = runs
    run = cut_back_to(work / "fsdp", work / "resumed-on-2", 3)
    resumed = _run(fsdp_launch(2, "--resume", str(run)))
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert losses(run) == losses(work / "fsdp")
    a, b = load_file(run / "model" / "trainable.safetensors"), load_file(work / "fsdp" / "model" / "trainable.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_fsdp_checkpoint_resumes_on_one_process(runs):
    work, _ = runs
    run = cut_back_to(work / "fsdp", work / "resumed-on-1", 3)
    # The same global batch: 1 process x 2 instead of 2 x 1.
    resumed = _run(cotune("--resume", str(run), "--set", "data.batch_size=2"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming on 1 processes, the checkpoint was written by 2" in resumed.stderr
    assert metrics(run)[:3] == metrics(work / "fsdp")[:3]  # the steps before the checkpoint, as logged
    assert_losses_close(run, work / "one")
    a, b = load_file(run / "model" / "trainable.safetensors"), load_file(work / "one" / "model" / "trainable.safetensors")
    for name in b:
        torch.testing.assert_close(a[name], b[name], atol=1e-3, rtol=1e-3)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("cotune: error:")]
    assert len(set(lines)) == 1, stderr[-3000:]
    assert "[rank0]: Traceback" not in stderr and "\nTraceback" not in stderr.split("cotune FAILED")[0], stderr[-3000:]
    return lines[0]


def test_accelerate_mixed_precision_must_agree_with_train_precision(tiny_root, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(corpus.run_config(tiny_root, tmp_path / "data", max_steps=1)))
    # The shipped config says bf16; this run's train.precision is fp32.
    refused = _run(fsdp_launch(1, str(path), "--out", str(tmp_path / "run"), mixed_precision=None, quiet=True))
    assert refused.returncode != 0
    line = one_error_line(refused.stderr)
    assert "mixed_precision is bf16 but train.precision is fp32" in line and "--set train.precision=bf16" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("accelerate, precision, agrees", [
    ("no", "fp32", True), ("no", "bf16", True), ("bf16", "bf16", True), ("fp16", "fp16", True),
    ("bf16", "fp32", False), ("fp16", "bf16", False), ("fp8", "bf16", False),
])
def test_precision_agreement_rule(accelerate, precision, agrees):
    launch = LaunchSettings(mixed_precision=accelerate)
    if agrees:
        check_precision(launch, precision)
    else:
        with pytest.raises(LaunchError, match=f"mixed_precision is {accelerate} but train.precision is {precision}"):
            check_precision(launch, precision)


def test_launch_settings_read_what_accelerate_exports():
    settings = LaunchSettings.from_environment({"ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_USE_FSDP": "true",
                                                "FSDP_SYNC_MODULE_STATES": "True"})
    assert settings == LaunchSettings(mixed_precision="bf16", fsdp=True, deepspeed=False, fsdp_sync_module_states=True)
    assert LaunchSettings.from_environment({}) == LaunchSettings()


def test_fsdp_refuses_what_it_cannot_shard(tiny_root, tmp_path):
    def cfg(*overrides):
        return load_config(data=corpus.run_config(tiny_root, tmp_path / "data"), overrides=list(overrides))

    fsdp = LaunchSettings(fsdp=True)
    check_launch(fsdp, cfg(), cuda=False)
    with pytest.raises(LaunchError, match="fsdp_sync_module_states: true is refused by accelerate on CPU"):
        check_launch(LaunchSettings(fsdp=True, fsdp_sync_module_states=True), cfg(), cuda=False)
    with pytest.raises(LaunchError, match="balance.method commit_clr is not supported under FSDP"):
        check_launch(fsdp, cfg("balance.method=commit_clr"), cuda=False)
    with pytest.raises(LaunchError, match="data.feature_cache is not supported under FSDP"):
        check_launch(fsdp, cfg(f"data.feature_cache={tmp_path / 'cache'}"), cuda=False)
    with pytest.raises(LaunchError, match="FSDP cannot shard 4- or 8-bit"):
        check_launch(fsdp, cfg("model.llm.quantization={bits: 4}"), cuda=False)


@pytest.mark.parametrize("variable, value, message", [
    ("FSDP_VERSION", "2", "fsdp_version: cotune shards with FSDP1"),
    ("FSDP_USE_ORIG_PARAMS", "false", "fsdp_use_orig_params: must be true"),
    ("FSDP_AUTO_WRAP_POLICY", "SIZE_BASED_WRAP", "fsdp_auto_wrap_policy: must be TRANSFORMER_BASED_WRAP"),
])
def test_fsdp_settings_cotune_would_not_honour_are_refused(monkeypatch, variable, value, message):
    shipped = {"FSDP_VERSION": "1", "FSDP_USE_ORIG_PARAMS": "true", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
               "FSDP_SYNC_MODULE_STATES": "false"}
    for key, shipped_value in {**shipped, variable: value}.items():
        monkeypatch.setenv(key, shipped_value)
    with pytest.raises(LaunchError, match=message):
        fsdp_plugin()


@pytest.mark.parametrize("name, stage", [("deepspeed-zero2.yaml", 2), ("deepspeed-zero3.yaml", 3)])
def test_deepspeed_configs_parse_and_the_trainer_refuses_them_in_one_line(tiny_root, tmp_path, monkeypatch, capsys, name, stage):
    from accelerate.commands.config.config_args import load_config_from_file

    launcher = load_config_from_file(str(ROOT / "configs" / "accelerate" / name))
    assert launcher.distributed_type == "DEEPSPEED" and launcher.deepspeed_config["zero_stage"] == stage
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(corpus.run_config(tiny_root, tmp_path / "data", max_steps=1, precision="bf16")))
    # What `accelerate launch` exports for a DeepSpeed config (its launcher needs deepspeed itself).
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher.mixed_precision)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", str(stage))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cotune: error: DeepSpeed configs are not supported by cotune's trainer") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra", [[], ["--nproc", "2"]])
def test_device_cuda_without_a_gpu_stops_in_one_line(tiny_root, tmp_path, capsys, extra):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: --device cuda trains there")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(corpus.run_config(tiny_root, tmp_path / "data", max_steps=1)))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--device", "cuda", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cotune: error: --device cuda: no CUDA device is available") and err.count("\n") == 1
    assert "--device cpu" in err and not (tmp_path / "run").exists()
