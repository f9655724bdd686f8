"""Training: parameter groups and schedules, the loop, checkpoints, metrics."""

from cotune.train.loop import Interrupted, Trainer, TrainingError, train

__all__ = ["Interrupted", "Trainer", "TrainingError", "train"]
