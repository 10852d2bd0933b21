"""Network building blocks shared by the small models trained here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def conv_tower(widths: Sequence[int], out_features: int, key: str) -> Any:
    """Conv-BN-ReLU stages (3x3, one per width; 2x2 max-pool between them), global average pool, then a
    linear layer to ``out_features``. ``key`` names the params key of ``widths`` in errors."""
    import torch.nn as nn

    if not widths:
        raise ValueError(f"{key}: at least one conv stage is needed")
    layers: list[Any] = []
    channels = 3
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, out_features)]
    return nn.Sequential(*layers)
