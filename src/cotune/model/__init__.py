"""The assembled model: build, forward, trainable state, save and load."""

from cotune.model.build import apply_trainability, build_model
from cotune.model.fused import IGNORE_INDEX, CotuneModel, CotuneOutput
from cotune.model.loss import next_token_loss
from cotune.model.generate import generate, left_pad
from cotune.model.io import save_model
from cotune.model.splice import SpliceError

__all__ = [
    "IGNORE_INDEX", "CotuneModel", "CotuneOutput", "SpliceError", "apply_trainability", "build_model", "generate", "left_pad",
    "next_token_loss", "save_model",
]
