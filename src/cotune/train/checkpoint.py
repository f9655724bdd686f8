"""Checkpoints: trainable weights, optimizer, trainer state and RNG, written atomically.

Layout (where: :class:`cotune.rundir.RunDir`): ``RUN/checkpoints/step-00000120/`` with ``trainable.safetensors``, ``optimizer.pt``,
``rng-rank<r>.pt`` (one per process), ``state.json`` and ``manifest.json`` (every other file's
size and sha256, and how many processes wrote RNG states). A checkpoint is assembled in a hidden
temporary folder, every file fsynced, then renamed into place and the parent folder fsynced, so a
kill at any moment leaves the previous checkpoint intact. Only the newest ``keep`` are kept.
A write that fails (a full disk) removes its temporary folder and says why, naming the previous
checkpoint, which stays intact. :func:`verify_checkpoint` checks a checkpoint against its manifest
(a flipped bit, a truncated or deleted file). Loading uses safetensors and
``torch.load(weights_only=True)``: no pickle is executed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cotune.model.io import WEIGHTS
from cotune.rundir import RunDir, checkpoint_step

MANIFEST = "manifest.json"
REQUIRED = (WEIGHTS, "optimizer.pt", "state.json")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or no checkpoint of a run can be resumed from; says why."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_failure(err: BaseException, run_dir: Path, step: int) -> CheckpointError:
    """The error for a failed write of checkpoint ``step``: the cause in words (a full disk said as
    such), the space left, and the newest other checkpoint, which survives."""
    target = RunDir(run_dir).checkpoint_dir(step)
    earlier = [p for p in RunDir(run_dir).checkpoints() if p != target]
    previous = earlier[-1] if earlier else None
    number = getattr(err, "errno", None)
    text = " ".join(str(err).split())
    full = number == errno.ENOSPC or "no space left" in text.lower()
    cause = os.strerror(number) if isinstance(number, int) else f"{type(err).__name__}: {text[:300]}"
    try:
        free = shutil.disk_usage(target.parent if target.parent.exists() else target.parent.parent).free
        space = f"; {free / 2**20:,.1f} MiB free there"
        full = full or free < 2**20
    except OSError:
        space = ""
    kept = f"the previous checkpoint {previous} is intact" if previous is not None else "there is no earlier checkpoint"
    headline = "no space left on the device" if full else "the write failed"
    return CheckpointError(f"could not write checkpoint {target}: {headline} ({cause}){space}; {kept}. Free space "
                           f"(or fix the cause) and resume with: cotune train --resume {target.parent.parent}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _torch_save(obj, path: Path) -> None:
    """``torch.save`` through a Python file, fsynced: a failed write raises the OSError itself (a
    full disk is errno ENOSPC), where torch's own writer reports only "unexpected pos"."""
    with open(path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def save_rng(directory: Path, rank: int) -> None:
    """Each process stores its own RNG state (dropout masks differ per process)."""
    _torch_save(rng_state(), directory / f"rng-rank{rank}.pt")


def write_checkpoint(run_dir: Path, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict, state: dict, rng_files: Path | None = None, keep: int = 2) -> Path:
    """Writes checkpoint ``step`` atomically (main process) and prunes old ones.

    ``rng_files``: a folder where every process already saved ``rng-rank<r>.pt`` for this step;
    they are moved into the checkpoint. Checkpoints of later steps (left by a run that resumed from
    an earlier one because they were damaged) are removed once this one is in place.
    Raises CheckpointError (temporary folder removed, earlier checkpoints untouched) if a write fails.
    """
    run = RunDir(run_dir)
    final = run.checkpoint_dir(step)
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, tmp / WEIGHTS)
        _torch_save(optimizer_state, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        if rng_files is not None:
            for source in sorted(Path(rng_files).glob("rng-rank*.pt")):
                shutil.move(str(source), tmp / source.name)
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {
            "step": step,
            "processes": sum(1 for name in files if name.startswith("rng-rank")),
            "files": {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for file in tmp.iterdir():
            _fsync(file)
        _fsync(tmp)
    except Exception as err:  # noqa: BLE001 - torch and safetensors wrap OS errors in their own types
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(err, run_dir, step) from err
    if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(final.parent)
    for stale in run.checkpoints():
        if checkpoint_step(stale) > step:
            shutil.rmtree(stale, ignore_errors=True)
    for old in run.checkpoints()[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(directory: Path, rank: int = 0, rng: bool = True) -> list[str]:
    """What is wrong with checkpoint ``directory`` for process ``rank`` (empty: intact): files
    missing, or differing in size or sha256 from its manifest; the RNG state of a process that
    wrote one missing (``rng=False``: missing RNG files are not counted; one that is there must
    still match). A checkpoint written before manifests existed is checked for its files only."""
    directory = Path(directory)
    problems = [f"{name} is missing" for name in REQUIRED if not (directory / name).is_file()]
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return problems
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        processes = int(manifest["processes"])
    except (ValueError, KeyError, TypeError) as err:
        return [*problems, f"{MANIFEST} is unreadable ({type(err).__name__})"]
    for name, expected in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            if name not in REQUIRED and (rng or not name.startswith("rng-rank")):
                problems.append(f"{name} is missing")
        elif path.stat().st_size != expected.get("bytes"):
            problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {expected.get('bytes')}")
        elif _sha256(path) != expected.get("sha256"):
            problems.append(f"{name} does not match its sha256 in the manifest (damaged)")
    if rank < processes and f"rng-rank{rank}.pt" not in files:
        problems.append(f"the manifest lists no RNG state for process {rank}")
    return problems


def has_manifest(directory: Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def read_checkpoint(directory: Path, rank: int = 0) -> tuple[dict[str, torch.Tensor], dict, dict, dict | None]:
    """(trainable weights, optimizer state, trainer state, this process's RNG state or None)."""
    directory = Path(directory)
    for name in REQUIRED:
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a complete checkpoint: {name} is missing")
    trainable = load_file(directory / WEIGHTS)
    optimizer_state = torch.load(directory / "optimizer.pt", weights_only=True, map_location="cpu")
    state = json.loads((directory / "state.json").read_text())
    rng_path = directory / f"rng-rank{rank}.pt"
    rng = torch.load(rng_path, weights_only=True) if rng_path.is_file() else None
    return trainable, optimizer_state, state, rng
