"""Encoders, registered by exact name. Each entry is a loader ``(EncoderConfig, meta) -> Encoder``."""

from cotune.encoders.base import Encoder, FeatureSelector, reduce_tokens, resolve_layers
from cotune.encoders.hf import HF_ENCODER_SPECS, HFEncoder, make_loader
from cotune.encoders.mobilenet import MobileNetEncoder, MobileNetV2
from cotune.registry import Registry

ENCODERS: Registry = Registry("encoder")
for _name in HF_ENCODER_SPECS:
    ENCODERS.register(_name)(make_loader(_name))
ENCODERS.register("mobilenet-v2")(MobileNetEncoder.load)

__all__ = [
    "ENCODERS", "Encoder", "FeatureSelector", "HFEncoder", "MobileNetEncoder", "MobileNetV2",
    "reduce_tokens", "resolve_layers",
]
