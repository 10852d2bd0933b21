"""The one conversion between image arrays and torch tensors.

On disk and between stages an image batch is ``uint8 (n, H, W, 3)`` (see :mod:`biasloop.core.io`);
every model takes ``float (n, 3, H, W)`` in [-1, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np


def images_to_tensor(images: np.ndarray, size: int | tuple[int, int] | None = None) -> Any:
    """``uint8 (n, H, W, 3)`` -> float tensor ``(n, 3, h, w)`` in [-1, 1], on the CPU.

    Args:
        images: a uint8 batch.
        size: output side (or ``(h, w)``); the batch is resized (bilinear, antialiased) when it differs.

    Raises:
        ValueError: ``images`` is not a uint8 ``(n, H, W, 3)`` array.
    """
    import torch

    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (n, h, w, 3), got {images.dtype} {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if size is not None:
        target = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[-2:]) != target:
            x = torch.nn.functional.interpolate(x, size=target, mode="bilinear", antialias=True, align_corners=False)
            x = x.clamp(-1, 1)
    return x


def tensor_to_images(x: Any) -> np.ndarray:
    """Float tensor ``(n, 3, H, W)`` in [-1, 1] (any device) -> ``uint8 (n, H, W, 3)``."""
    array = x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to("cpu").numpy()
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1).astype(np.uint8))
