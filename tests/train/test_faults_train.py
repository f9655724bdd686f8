"""Planted faults in training: damaged checkpoints, a full disk, numbers that are not numbers, a run
directory in use, failed starts, finished runs, media that fail to decode while training.

Every fault is tallied with the data faults' (handled, crashed or passed silently; conftest.py).
One finished reference run (4 steps, a checkpoint after each, the last 3 kept, a final eval record)
is shared: each fault is planted in a copy of it. A resume that falls back to step 3 trains step 4
again, and must reproduce the reference's weights bit for bit.
"""

import hashlib
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cotune.cli.main import main
from cotune.config import load_config
from cotune.rundir import RunDir
from cotune.testing import corpus
from cotune.testing.faults import judge
from cotune.train import Trainer
from cotune.train.checkpoint import verify_checkpoint
from cotune.train.resume import read_latest

STEP = "step-{:08d}"


def write_config(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


def cotune(capsys, *args):
    """``cotune ARGS`` in this process: (exit status, stderr lines)."""
    capsys.readouterr()
    status = main(["--log-level", "info", *map(str, args)])
    return status, capsys.readouterr().err.strip().splitlines()


def error_line(err):
    """The one ``cotune: error:`` line of a failed command, or None when there is not exactly one."""
    errors = [line for line in err if line.startswith("cotune: error:")]
    return errors[0] if len(errors) == 1 else None


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(path):
    return load_file(path / "trainable.safetensors")


def same_weights(a, b):
    x, y = weights(a), weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(f"{record.levelname} {record.getMessage()}")


@contextmanager
def cotune_log():
    """The messages cotune logs inside the block (INFO and up)."""
    logger, handler = logging.getLogger("cotune"), _Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def reference(tiny_root, tmp_path_factory):
    """The finished reference run directory."""
    root = tmp_path_factory.mktemp("faults-train")
    raw = corpus.run_config(tiny_root, root / "data", max_steps=4, checkpoint_every=1, keep_checkpoints=3, warmup_steps=0)
    raw["data"]["eval"] = [{"kind": "alpaca", "path": raw["data"]["train"][1]["path"], "name": "alpaca:val"}]
    Trainer(load_config(data=raw), root / "run").run()
    assert [p.name for p in RunDir(root / "run").checkpoints()] == [STEP.format(s) for s in (2, 3, 4)]
    return root / "run"


@pytest.fixture
def copy(reference, tmp_path):
    """A copy of the reference run as it stood before it saved its model (the model is removed)."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "model")
    return run


def checkpoint(run, step):
    return run / "checkpoints" / STEP.format(step)


def flip_bit(path, at=0.6):
    """Flips one bit well inside the file's data (the file still parses)."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


# --- damaged checkpoints: the newest intact one, named with why ------------------------------

DAMAGE = {
    # name: (what is done to the newest checkpoint, the reason the log must give)
    "one bit flipped in trainable.safetensors": (lambda c: flip_bit(c / "trainable.safetensors"), "trainable.safetensors does not match its sha256"),
    "one bit flipped in optimizer.pt": (lambda c: flip_bit(c / "optimizer.pt"), "optimizer.pt does not match its sha256"),
    "trainable.safetensors cut short": (lambda c: (c / "trainable.safetensors").write_bytes((c / "trainable.safetensors").read_bytes()[:100]),
                                        "trainable.safetensors has 100 bytes"),
    "optimizer.pt deleted": (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    "state.json rewritten": (lambda c: (c / "state.json").write_text(json.dumps({"step": 40})), "state.json has"),
    "the RNG state deleted": (lambda c: (c / "rng-rank0.pt").unlink(), "rng-rank0.pt is missing"),
    "manifest.json garbled": (lambda c: (c / "manifest.json").write_text("{not json"), "manifest.json is unreadable"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_resume_passes_over_a_damaged_newest_checkpoint_and_says_which_and_why(damage, copy, fault_tally):
    plant, reason = DAMAGE[damage]
    plant(checkpoint(copy, 4))

    def check():
        with cotune_log() as lines:
            *_, state, _rng, path = read_latest(copy, 0)
        if path != checkpoint(copy, 3) or state["step"] != 3:
            return f"resumed from {path.name}, not the newest intact step-00000003"
        warned = [line for line in lines if line.startswith("WARNING") and STEP.format(4) in line and reason in line]
        chosen = [line for line in lines if f"resuming from {checkpoint(copy, 3)}" in line and f"passed over {STEP.format(4)}" in line]
        if not warned or not chosen:
            return f"the log does not name the damaged checkpoint with {reason!r} and the one chosen: {lines}"
        return None

    judge(fault_tally, f"resume: {damage} (newest checkpoint)", check)


class _Payload:
    """A pickle that, if ever unpickled, creates the file ``marker`` (what a malicious one would run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_pickle_planted_with_a_matching_manifest_is_never_run(copy, tmp_path, fault_tally):
    newest, marker = checkpoint(copy, 4), tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [], "payload": _Payload(marker)}, newest / "optimizer.pt")
    manifest = json.loads((newest / "manifest.json").read_text())  # an attacker who also rewrites the manifest
    data = (newest / "optimizer.pt").read_bytes()
    manifest["files"]["optimizer.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (newest / "manifest.json").write_text(json.dumps(manifest))

    def check():
        with cotune_log() as lines:
            *_, path = read_latest(copy, 0)
        if marker.exists():
            return "the planted pickle ran"
        if path != checkpoint(copy, 3) or not any("does not load" in line and STEP.format(4) in line for line in lines):
            return f"resumed from {path.name}; log: {lines}"
        return None

    judge(fault_tally, "resume: a malicious pickle in optimizer.pt, manifest rewritten to match", check)


def test_after_falling_back_the_resumed_run_equals_the_uninterrupted_one(reference, copy, capsys, fault_tally):
    flip_bit(checkpoint(copy, 4) / "trainable.safetensors")

    def check():
        status, err = cotune(capsys, "train", "--resume", copy)
        if status != 0:
            return f"exit {status}: {err[-3:]}"
        if not any("passed over" in line and STEP.format(4) in line for line in err):
            return "the fallback was not logged"
        if not same_weights(copy / "model", reference / "model"):
            return "the final weights differ from the uninterrupted run's"
        if [r.get("loss") for r in metrics(copy)] != [r.get("loss") for r in metrics(reference)]:
            return "metrics.jsonl differs from the uninterrupted run's"
        return None

    judge(fault_tally, "resume: bit flip in the newest checkpoint, then trained on (exact)", check)


def test_without_an_intact_checkpoint_a_missing_rng_state_resumes_inexactly_and_says_so(copy, capsys, fault_tally):
    for step in (2, 3):
        shutil.rmtree(checkpoint(copy, step))
    (checkpoint(copy, 4) / "rng-rank0.pt").unlink()
    # The run is finished at step 4: one more step makes the resume train.
    raw = yaml.safe_load((copy / "config.yaml").read_text())
    raw["train"]["max_steps"] = 5
    write_config(copy / "config.yaml", raw)

    def check():
        status, err = cotune(capsys, "train", "--resume", copy)
        if status != 0:
            return f"exit {status}: {err[-3:]}"
        said = [line for line in err if line.startswith("WARNING") and "NOT exactly" in line and STEP.format(4) in line]
        if not said:
            return f"resumed without saying the run is no longer exact: {err}"
        return None if [r["step"] for r in metrics(copy) if "loss" in r] == [1, 2, 3, 4, 5] else "step 5 was not trained"

    judge(fault_tally, "resume: the RNG state of the only checkpoint deleted", check)


def test_when_no_checkpoint_is_intact_the_resume_stops_naming_each_problem(copy, capsys, fault_tally):
    for step in (2, 3, 4):
        flip_bit(checkpoint(copy, step) / "optimizer.pt")

    def check():
        status, err = cotune(capsys, "train", "--resume", copy)
        line = error_line(err)
        if status != 2 or line is None or "no intact checkpoint" not in line:
            return f"exit {status}: {err[-3:]}"
        return None if all(STEP.format(s) in line for s in (2, 3, 4)) else f"not every checkpoint is named: {line}"

    judge(fault_tally, "resume: every checkpoint damaged", check)


# --- a full disk while writing a checkpoint -----------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux), whose writes fail with ENOSPC")
def test_a_full_disk_during_a_checkpoint_says_no_space_left_and_keeps_the_previous_one(reference, copy, capsys, fault_tally):
    for step in (3, 4):
        shutil.rmtree(checkpoint(copy, step))
    # Step 3's checkpoint starts with this process's RNG state, written into a staging folder: make
    # that file a link to /dev/full, so the kernel answers the write as a full disk does (ENOSPC).
    staging = copy / "checkpoints" / ".rng-00000003"
    staging.mkdir()
    (staging / "rng-rank0.pt").symlink_to("/dev/full")

    def check():
        status, err = cotune(capsys, "train", "--resume", copy)
        line = error_line(err)
        if status != 2 or line is None or "no space left" not in line:
            return f"exit {status}, the error does not say the disk is full: {err[-3:]}"
        if f"the previous checkpoint {checkpoint(copy, 2)} is intact" not in line or f"--resume {copy}" not in line:
            return f"the error does not name the intact checkpoint and the resume command: {line}"
        left = sorted(p.name for p in (copy / "checkpoints").iterdir())
        if left != [STEP.format(2)] or verify_checkpoint(checkpoint(copy, 2)):
            return f"after the failed write the checkpoints folder holds {left}"
        # Space freed (the link went with the staging folder): the resume goes on and is exact.
        status, err = cotune(capsys, "train", "--resume", copy)
        if status != 0 or not same_weights(copy / "model", reference / "model"):
            return f"the resume after the full disk did not reproduce the run (exit {status}): {err[-3:]}"
        return None

    judge(fault_tally, "checkpoint: disk full (ENOSPC) while writing", check)


# --- numbers that are not numbers ----------------------------------------------------------------

BAD_NUMBERS = ["train.lr=.nan", "train.lr=.inf", "train.weight_decay=.nan", "train.max_grad_norm=.nan", "train.eps=0",
               "train.groups.llm.lr=-.inf", "train.betas=[0.9, .nan]"]


@pytest.mark.parametrize("setting", BAD_NUMBERS)
def test_a_setting_that_is_not_a_finite_number_is_refused_naming_its_key(setting, reference, tmp_path, capsys, fault_tally):
    key = setting.split("=")[0]

    def check():
        status, err = cotune(capsys, "train", reference / "config.yaml", "--set", setting, "--out", tmp_path / "out")
        line = error_line(err)
        if status != 2 or line is None or key not in line:
            return f"exit {status}, no one-line error naming {key}: {err[-3:]}"
        return None if not (tmp_path / "out").exists() else "the refused run created its directory"

    judge(fault_tally, f"config: {setting}", check)


# --- one trainer per run directory, failed starts, finished runs ----------------------------------


def test_a_run_another_trainer_holds_is_not_resumed(copy, capsys, fault_tally):
    # flock locks belong to open files: a trainer in this process holds the run as another process would.
    holder = Trainer(load_config(copy / "config.yaml"), copy, resume=True)
    holder.setup()

    def check():
        try:
            status, err = cotune(capsys, "train", "--resume", copy)
        finally:
            holder.metrics.close()
            holder.close()
        line = error_line(err)
        if status != 2 or line is None or "is in use" not in line or f"pid {os.getpid()}" not in line:
            return f"exit {status}: {err[-3:]}"
        if metrics(copy)[-1]["step"] != 4:
            return "the refused resume touched the metrics"
        return None

    judge(fault_tally, "resume: the run is being trained by another process", check)


def test_a_failed_start_can_be_started_again_and_is_not_resumed(tiny_root, tmp_path, capsys, fault_tally):
    raw = corpus.run_config(tiny_root, tmp_path / "data", max_steps=1)
    good = write_config(tmp_path / "good.yaml", raw)
    raw["data"]["train"][1]["path"] = str(tmp_path / "data" / "alpaka.json")  # a typo: the start fails after writing its config
    bad = write_config(tmp_path / "bad.yaml", raw)
    run = tmp_path / "run"

    def check():
        status, err = cotune(capsys, "train", bad, "--out", run)
        if status != 2 or error_line(err) is None or not (run / "config.yaml").is_file():
            return f"the bad start: exit {status}, {err[-3:]}"
        status, err = cotune(capsys, "train", "--resume", run)
        line = error_line(err)
        if status != 2 or line is None or "saved no checkpoint" not in line or f"--out {run}" not in line:
            return f"--resume of the failed start: exit {status}, {err[-3:]}"
        status, err = cotune(capsys, "train", good, "--out", run)
        if status != 0:
            return f"starting again was refused: exit {status}, {err[-3:]}"
        return None if load_config(run / "config.yaml") == load_config(good) else "the run kept the failed start's config"

    judge(fault_tally, "start: a failed start, then --resume, then a fresh start", check)


def test_resuming_a_finished_run_says_so_and_changes_nothing(reference, tmp_path, capsys, fault_tally):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = (run / "metrics.jsonl").read_text(), weights(run / "model")

    def check():
        status, err = cotune(capsys, "train", "--resume", run)
        if status != 0 or not any("is finished" in line and "all 4 steps" in line for line in err):
            return f"exit {status}, not said to be finished: {err[-3:]}"
        if (run / "metrics.jsonl").read_text() != before[0]:
            return "metrics.jsonl changed (a second eval record?)"
        after = weights(run / "model")
        return None if all(torch.equal(after[k], before[1][k]) for k in after) else "the model changed"

    judge(fault_tally, "resume: a finished run", check)


# --- media that fail to decode while training -------------------------------------------------------


def decode_config(tiny_root, root, n_image, corrupt, max_skip_fraction, batch_size):
    """Image-only ScienceQA (``corrupt``: problem ids whose PNG does not decode), one epoch."""
    raw = corpus.run_config(tiny_root, root / "data", epochs=1, warmup_steps=0, checkpoint_every=100)
    (root / "sqa").mkdir(parents=True)
    raw["data"].update(train=[{"kind": "scienceqa", "path": str(corpus.write_scienceqa(root / "sqa", n_image, 0, corrupt))}],
                       batch_size=batch_size, max_skip_fraction=max_skip_fraction)
    return write_config(root / "run.yaml", raw)


def test_a_batch_whose_media_all_fail_to_decode_is_skipped_and_counted(tiny_root, tmp_path, capsys, fault_tally):
    config = decode_config(tiny_root, tmp_path, 3, ("101",), 0.5, batch_size=1)  # the corrupt item is a batch alone

    def check():
        status, err = cotune(capsys, "train", config, "--out", tmp_path / "run")
        if status != 0:
            return f"exit {status}: {err[-3:]}"
        records = metrics(tmp_path / "run")
        empty = [r["step"] for r in records if r.get("empty")]
        if len(records) != 3 or len(empty) != 1 or any("loss" in r for r in records if r.get("empty")):
            return f"expected 3 steps, one of them empty: {records}"
        report = json.loads((tmp_path / "run" / "data_report.json").read_text())
        if report["skipped"] != {"unreadable_media": 1} or report["kept"] != 2:
            return f"the data report does not count the undecodable image: {report}"
        return None if all(torch.isfinite(w).all() for w in weights(tmp_path / "run" / "model").values()) else "non-finite weights"

    judge(fault_tally, "train: a batch whose every image fails to decode", check)


def test_decode_failures_past_max_skip_fraction_stop_the_run(tiny_root, tmp_path, capsys, fault_tally):
    # 1 of 5 = 20 %, in one batch with 4 good items (the run would otherwise go on with them).
    config = decode_config(tiny_root, tmp_path, 5, ("102",), 0.1, batch_size=5)
    run = tmp_path / "run"

    def check():
        status, err = cotune(capsys, "train", config, "--out", run)
        line = error_line(err)
        if status != 2 or line is None or "max_skip_fraction" not in line or "failed to decode" not in line:
            return f"20 % undecodable images against max_skip_fraction 0.1: exit {status}, {err[-3:]}"
        if not RunDir(run).checkpoints() or (run / "model").exists():
            return "the stopped run saved no checkpoint, or saved a model"
        status, _ = cotune(capsys, "data", "check", config)
        if status != 1:
            return f"data check of the same data exits {status}, not 1"
        # The error's advice works: a higher threshold, and the run resumes to its end.
        status, err = cotune(capsys, "train", "--resume", run, "--set", "data.max_skip_fraction=0.25")
        return None if status == 0 and (run / "model").is_dir() else f"resume with a higher threshold: exit {status}, {err[-3:]}"

    judge(fault_tally, "train: 20 % of the images fail to decode (max_skip_fraction 0.1)", check)
