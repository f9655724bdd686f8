"""cotune: cheap, coordinated multimodal instruction tuning on Hugging Face backbones."""

from cotune.config import ConfigError, CotuneConfig, ModelConfig, load_config
from cotune.model import CotuneModel, build_model, load, load_model, save_model

__version__ = "0.1.0"

__all__ = ["ConfigError", "CotuneConfig", "CotuneModel", "ModelConfig", "__version__", "build_model", "load", "load_config", "load_model", "save_model"]
