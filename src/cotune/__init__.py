"""cotune: cheap, coordinated multimodal instruction tuning on Hugging Face backbones."""

from cotune.config import ConfigError, CotuneConfig, ModelConfig, load_config
from cotune.model import CotuneModel, build_model, save_model
from cotune.rundir import RunDir, load, merge_run

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "CotuneConfig", "CotuneModel", "ModelConfig", "RunDir", "__version__", "build_model", "load", "load_config", "merge_run",
    "save_model",
]
