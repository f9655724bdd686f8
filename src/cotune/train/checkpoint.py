"""Checkpoints: trainable weights, optimizer, trainer state and RNG, written atomically.

Layout: ``RUN/checkpoints/step-00000120/`` with ``trainable.safetensors``, ``optimizer.pt``,
``rng-rank<r>.pt`` (one per process) and ``state.json``. A checkpoint is assembled in a hidden
temporary folder, every file fsynced, then renamed into place and the parent folder fsynced, so a
kill at any moment leaves the previous checkpoint intact. Only the newest ``keep`` are kept.
Loading uses safetensors and ``torch.load(weights_only=True)``: no pickle is executed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})$")


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


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders are ignored)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name))


def save_rng(directory: Path, rank: int) -> None:
    """Each process stores its own RNG state (dropout masks differ per process)."""
    path = directory / f"rng-rank{rank}.pt"
    torch.save(rng_state(), path)
    _fsync(path)


def write_checkpoint(run_dir: Path, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict, state: dict, rng_files: Path | None = None, keep: int = 2) -> Path:
    """Writes checkpoint ``step`` atomically (main process) and prunes old ones.

    ``rng_files``: a folder where every process already saved ``rng-rank<r>.pt`` for this step;
    they are moved into the checkpoint.
    """
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, tmp / "trainable.safetensors")
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    if rng_files is not None:
        for source in sorted(Path(rng_files).glob("rng-rank*.pt")):
            shutil.move(str(source), tmp / source.name)
    for file in tmp.iterdir():
        _fsync(file)
    _fsync(tmp)
    if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(final.parent)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(directory: Path, rank: int = 0) -> tuple[dict[str, torch.Tensor], dict, dict, dict | None]:
    """(trainable weights, optimizer state, trainer state, this process's RNG state or None)."""
    directory = Path(directory)
    for name in ("trainable.safetensors", "optimizer.pt", "state.json"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a complete checkpoint: {name} is missing")
    trainable = load_file(directory / "trainable.safetensors")
    optimizer_state = torch.load(directory / "optimizer.pt", weights_only=True, map_location="cpu")
    state = json.loads((directory / "state.json").read_text())
    rng_path = directory / f"rng-rank{rank}.pt"
    rng = torch.load(rng_path, weights_only=True) if rng_path.is_file() else None
    return trainable, optimizer_state, state, rng
