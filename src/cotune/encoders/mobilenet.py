"""MobileNetV2 in plain PyTorch with torchvision-compatible parameter names.

torchvision cannot be installed beside the pinned CPU torch, yet its ImageNet MobileNetV2 state
dict is a small, real vision backbone. This module reproduces ``torchvision.models.mobilenet_v2``
(features.0 stem, features.1-17 inverted residuals, features.18 1x1 conv to 1280 channels) so the
state dict loads by name. As an :class:`Encoder` its hidden states are the stem output and the
output of each of features.1..18, flattened to tokens [B, H*W, C]; adapters wrap each of those 18
blocks at their input and act on channels.

A checkpoint directory holds ``model.safetensors`` (torchvision keys) and optionally
``config.json`` ({"width_mult": 1.0, "image_size": 224, "num_classes": 1000}).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from cotune.backbones.loading import TORCH_DTYPES, LoadError, meta_device
from cotune.config.model import EncoderConfig
from cotune.encoders.base import Encoder

# (expansion t, output channels c, repeats n, first stride s), torchvision's table.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _make_divisible(value: float, divisor: int = 8) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def conv_bn_act(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation with ReLU6: [conv, bn, relu6]."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_act(cin, hidden, kernel=1))
        layers += [
            conv_bn_act(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.in_channels, self.out_channels = cin, cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision-compatible MobileNetV2 (``features`` + ``classifier``)."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [conv_bn_act(3, cin, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(conv_bn_act(cin, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> class logits [B, num_classes]."""
        pooled = nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(pooled)


def _block_in_channels(block: nn.Module) -> int:
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError(f"no convolution in {type(block).__name__}")


def _block_out_channels(block: nn.Module) -> int:
    return [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


class MobileNetEncoder(Encoder):
    """MobileNetV2 as an encoder: 19 hidden states (stem + 18 blocks), conv blocks adapted on channels."""

    modality = "image"
    input_name = "pixel_values"
    conv = True

    def __init__(self, backbone: MobileNetV2, image_size: int = 224, processor=None) -> None:
        super().__init__(
            backbone,
            hidden_size=backbone.last_channel,
            num_blocks=len(backbone.features) - 1,
            num_prefix_tokens=0,
            processor=processor,
        )
        self.image_size = image_size

    @classmethod
    def load(cls, config: EncoderConfig, meta: bool = False) -> "MobileNetEncoder":
        path = Path(config.name_or_path)
        options = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
        image_size = options.pop("image_size", 224)
        weights = path / "model.safetensors"
        if meta:
            with meta_device():
                return cls(MobileNetV2(**options), image_size, _imagenet_processor(image_size))
        if not weights.is_file():
            raise LoadError(f"{config.name_or_path}: no model.safetensors with torchvision MobileNetV2 weights")
        from safetensors.torch import load_file

        model = MobileNetV2(**options)
        missing, unexpected = model.load_state_dict(load_file(weights), strict=False)
        if missing or unexpected:
            raise LoadError(f"{weights}: state dict does not match MobileNetV2 (missing {missing[:4]}, unexpected {unexpected[:4]})")
        model.to(TORCH_DTYPES[config.dtype])
        return cls(model, image_size, _imagenet_processor(image_size))

    def block_sites(self) -> list[tuple[nn.Module, str]]:
        return [(self.backbone.features, str(i)) for i in range(1, len(self.backbone.features))]

    def block_widths(self) -> list[int]:
        return [_block_in_channels(self.backbone.features[i]) for i in range(1, len(self.backbone.features))]

    def layer_width(self, layer: int) -> int:
        return _block_out_channels(self.backbone.features[layer])

    def num_tokens(self, input_length: int | None = None) -> int:
        size = self.image_size
        for block in self.backbone.features:
            stride = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
            for conv in stride:
                size = (size + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        return size * size

    def dummy_input(self) -> torch.Tensor:
        device = next(self.backbone.parameters()).device
        return torch.zeros(1, 3, self.image_size, self.image_size, device=device)

    def hidden_states(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """pixel_values [B, 3, H, W] -> 19 x [B, H_k * W_k, C_k]."""
        x = inputs.to(next(self.backbone.parameters()).dtype)
        states = []
        for block in self.backbone.features:
            x = block(x)
            states.append(x.flatten(2).transpose(1, 2))
        return tuple(states)


def _imagenet_processor(image_size: int):
    """torchvision's eval transform: resize shorter side to 256/224 * size, centre crop, ImageNet norm."""
    from transformers.models.mobilenet_v2.image_processing_pil_mobilenet_v2 import MobileNetV2ImageProcessorPil

    return MobileNetV2ImageProcessorPil(
        size={"shortest_edge": round(image_size * 256 / 224)},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
