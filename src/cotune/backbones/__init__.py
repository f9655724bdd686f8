"""Loading Hugging Face backbones safely: offline-friendly, no silent random initialisation."""

from cotune.backbones.loading import TORCH_DTYPES, LoadError, load_pretrained, load_config_only

__all__ = ["TORCH_DTYPES", "LoadError", "load_config_only", "load_pretrained"]
